"""Checking a kernel against the reference on fresh random inputs.

The output buffer is poisoned with NaN before the call, so an element the
kernel fails to write shows up as a failure. The tolerance is a bound, not a
guess: a float32 sum of L products differs from the exact sum by at most
about L * 2**-24 times the sum of their magnitudes, which the reference gives
by running on |x| and |w|.

int8 kernels must match bit for bit. Every int8 value is a possible result,
so the kernel runs twice, the output filled with -128 and then with 127
before each run: an element the kernel leaves unwritten differs between them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .reference import reference
from .runtime import Kernel
from .schedule.winograd import MATRICES, TILE_OF
from .spec import Spec

_UNIT_ROUNDOFF = 2.0 ** -24
INT8_FILLS = (-128, 127)  # what an int8 output holds before each of the two runs


def output_fills(dtype) -> tuple:
    """What an output of this dtype is filled with before each run of a check: NaN
    once for float32; -128 and then 127 for int8, where every value is a possible result."""
    return INT8_FILLS if np.dtype(dtype) == np.int8 else (np.nan,)


@dataclass(frozen=True)
class CheckResult:
    max_abs_error: float
    max_allowed: float        # the tolerance at the element with the worst error/tolerance ratio
    unwritten: int            # outputs still NaN after the call
    passed: bool


def random_inputs(spec: Spec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """x (in the spec's layout), and for conv2d w and b (and r, a residual): the spec's own values or
    uniform in [-1, 1); int8 layers: x over all of int8, w in [-127, 127], b in
    [-2**16, 2**16) (a few times a typical accumulator's spread)."""
    draw = _int8_draws if spec.is_quantized else _float_draws
    inputs = {"x": draw["x"](rng, spec.input_shape)}
    if spec.is_conv:
        own = spec.weight_array()
        inputs["w"] = own if own is not None else draw["w"](rng, spec.weight_shape)
        if spec.bias:
            own = spec.bias_array()
            inputs["b"] = own if own is not None else draw["b"](rng, (spec.out_channels,))
        if spec.residual:
            inputs["r"] = draw["x"](rng, spec.residual_shape)
    return inputs


def _uniform(rng, shape):
    return rng.uniform(-1, 1, shape).astype(np.float32)


_float_draws = {"x": _uniform, "w": _uniform, "b": _uniform}
_int8_draws = {
    "x": lambda rng, shape: rng.integers(-128, 128, shape, dtype=np.int8),
    "w": lambda rng, shape: rng.integers(-127, 128, shape, dtype=np.int8),
    "b": lambda rng, shape: rng.integers(-(2**16), 2**16, shape, dtype=np.int32),
}


def tolerance(spec: Spec, inputs: dict[str, np.ndarray], transform: str = "") -> np.ndarray:
    """Per-output bound on float32 rounding error of any summation order; with
    a Winograd weight transform (weight_transform of the kernel), of that algorithm."""
    magnitudes = {name: np.abs(value) for name, value in inputs.items()}
    if transform:
        tile = TILE_OF[transform]
        # the sums over channels, the input and output transforms, and the weight transform's
        # float32 sum of up to nine products (each coefficient rounded once)
        terms = spec.in_channels + 4 * (tile + 2) + 16
        magnitude = _winograd_magnitude(spec, magnitudes, tile) + (magnitudes["r"] if spec.residual else 0.0)
        return (terms + spec.residual) * _UNIT_ROUNDOFF * magnitude + 1e-30
    magnitude = reference(replace(spec, activation="none"), **magnitudes)
    terms = spec.kernel_size[0] * spec.kernel_size[1] * (spec.in_channels // spec.groups) + 2 + spec.residual
    return terms * _UNIT_ROUNDOFF * magnitude + 1e-30


def _winograd_magnitude(spec: Spec, magnitudes: dict[str, np.ndarray], tile: int) -> np.ndarray:
    """Winograd's F(tile, 3x3) run on |x|, |w| with the transforms' absolute values:
    each output's bound on the magnitudes of everything summed on its way (each
    rounding step adds at most a unit roundoff of that, as in the direct bound)."""
    bt, g, at = (np.abs(np.array(MATRICES[tile][k], dtype=np.float64)) for k in ("BT", "G", "AT"))
    points = tile + 2
    x = magnitudes["x"].astype(np.float64)
    if spec.input_layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    rows, cols = spec.output_size
    tile_rows, tile_cols = -(-rows // tile), -(-cols // tile)
    top, _, left, _ = spec.padding
    padded = np.zeros(x.shape[:2] + (tile_rows * tile + 2, tile_cols * tile + 2))
    h, w = min(x.shape[2], padded.shape[2] - top), min(x.shape[3], padded.shape[3] - left)
    padded[:, :, top:top + h, left:left + w] = x[:, :, :h, :w]
    tiles = np.lib.stride_tricks.sliding_window_view(padded, (points, points), axis=(2, 3))[:, :, ::tile, ::tile]
    v = np.einsum("ip,nchwpq,jq->nchwij", bt, tiles, bt)
    u = np.einsum("ak,oikl,bl->oiab", g, magnitudes["w"].astype(np.float64), g)
    m = np.einsum("oiab,nihwab->nohwab", u, v)
    y = np.einsum("ri,nohwij,sj->nohrws", at, m, at).reshape(m.shape[:2] + (tile_rows * tile, tile_cols * tile))
    y = y[:, :, :rows, :cols]
    if spec.bias:
        y = y + magnitudes["b"].astype(np.float64)[None, :, None, None]
    return y.transpose(0, 2, 3, 1) if spec.output_layout == "NHWC" else y


def weight_transform(func) -> str:
    """The transform of a kernel's weights ("" for none), which decides its error bound:
    the label of the workspace buffer its transform stage fills."""
    return next((b.transform for b in func.workspace if b.transform), "")


def check(kernel: Kernel, rng: np.random.Generator | int | None = None, progress=None) -> CheckResult:
    """Run the kernel once on random inputs and compare with the float64 reference.
    progress: called with the name of each stage as it starts (for long checks)."""
    say = progress or (lambda stage: None)
    rng = np.random.default_rng(rng)
    spec = kernel.spec
    say("drawing random inputs")
    inputs = random_inputs(spec, rng)
    dtype = spec.array_dtypes["y"]
    say("running the kernel")
    outputs = [kernel(**inputs, out=np.full(spec.output_shape, fill, dtype=dtype)) for fill in output_fills(dtype)]
    say("computing the float64 reference")
    expected = reference(spec, **inputs)
    say("comparing")
    allowed = None if spec.is_quantized else tolerance(spec, inputs, weight_transform(kernel.func))
    return compare_runs(spec, outputs, expected, inputs, allowed)


def compare_runs(spec: Spec, outputs: list[np.ndarray], expected: np.ndarray, inputs: dict[str, np.ndarray],
                 allowed: np.ndarray | None = None) -> CheckResult:
    """outputs: one run's result per fill of output_fills. int8 must match
    exactly; float32 within `allowed` (by default the tolerance for these inputs)."""
    if spec.is_quantized:
        return compare_exact(outputs, expected)
    return compare(outputs[0], expected, tolerance(spec, inputs) if allowed is None else allowed)


def compare_exact(outputs: list[np.ndarray], expected: np.ndarray) -> CheckResult:
    """outputs: one run's result per fill of INT8_FILLS (an element that differs
    between them was never written); each must equal expected exactly."""
    differs = [o != outputs[0] for o in outputs[1:]]
    unwritten = int(np.logical_or.reduce(differs).sum()) if differs else 0
    error = np.max([np.abs(o.astype(np.int64) - expected) for o in outputs], axis=0)
    return CheckResult(max_abs_error=float(error.max(initial=0)), max_allowed=0.0, unwritten=unwritten,
                       passed=bool(unwritten == 0 and not error.any()))


def compare(actual: np.ndarray, expected: np.ndarray, allowed: np.ndarray) -> CheckResult:
    actual = actual.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf where both are -inf (max pooling) is a match
        error = np.where(actual == expected, 0.0, np.abs(actual - expected))
    unwritten = int(np.isnan(actual).sum())
    ok = bool(np.all(error <= allowed))  # False wherever error is NaN
    if unwritten == error.size:
        return CheckResult(float("nan"), float(allowed.max(initial=0)), unwritten, False)
    worst = int(np.nanargmax(error / allowed))
    max_error = float(np.nanmax(error))
    return CheckResult(max_abs_error=max_error, max_allowed=float(allowed.flat[worst]),
                       unwritten=unwritten, passed=ok and unwritten == 0)


# ---------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------

def network_tolerance(network, x: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    """A bound on each output's float32 rounding error, however the network
    is folded, fused and summed (first-order forward error analysis). Each
    layer adds its own rounding: (terms summed + 2) unit roundoffs of the
    sum of the magnitudes of those terms, taken on the exact (float64)
    values of its inputs; and it carries its inputs' errors as its linear
    part does on magnitudes (|weights|; ReLU, clipping and max pooling are
    1-Lipschitz). The result is doubled to cover second-order terms and the
    rounding of folded weights."""
    from .reference import network_reference
    exact = network_reference(network, x, weights)
    error = {network.input: np.zeros_like(exact[network.input])}
    for layer in network.layers:
        magnitudes = [np.abs(exact[t]) for t in layer.inputs]
        m, e, terms = _propagate(layer, magnitudes, [error[t] for t in layer.inputs],
                                 {k: np.abs(np.asarray(v, dtype=np.float64)) for k, v in weights.items()
                                  if k.startswith(layer.name + ".")})
        error[layer.output] = e + (terms + 2) * _UNIT_ROUNDOFF * m
    return 2 * error[network.output] + 1e-30


def _propagate(layer, m_in, e_in, weights):
    """(the magnitude of what the layer sums, on these input magnitudes; the
    input errors carried to its output; how many terms its rounding sums)
    for one network layer; weights are |weights| by key."""
    def array(key):
        return weights[f"{layer.name}.{key}"]
    spec = layer.spec
    if layer.op == "linear":
        w = array("weight")
        m = m_in[0].reshape(len(m_in[0]), -1) @ w.T + (array("bias") if layer.bias else 0.0)
        return m, e_in[0].reshape(len(e_in[0]), -1) @ w.T, w.shape[1]
    if spec is not None:
        linear = replace(spec, activation="none", bias=False, residual=False)
        w = array("weight") if spec.is_conv else None
        m = reference(replace(spec, activation="none"), m_in[0], w, array("bias") if spec.is_conv and spec.bias
                      else None, m_in[1] if spec.residual else None)
        e = reference(linear, e_in[0], w) + (e_in[1] if spec.residual else 0.0)
        window = spec.pool.kernel_size if spec.pool is not None else (1, 1)
        taps = spec.kernel_size[0] * spec.kernel_size[1] * (spec.in_channels // spec.groups if spec.is_conv else 1)
        return m, e, taps + window[0] * window[1] + spec.residual
    if layer.op == "batchnorm":
        scale = array("weight") / np.sqrt(np.asarray(weights[f"{layer.name}.running_var"]) + layer.eps)
        shift = array("bias") + array("running_mean") * scale
        per_channel = (lambda v: v.reshape(1, -1, 1, 1))
        return m_in[0] * per_channel(scale) + per_channel(shift), e_in[0] * per_channel(scale), 3
    if layer.op in ("relu", "relu6"):
        return m_in[0], e_in[0], 0
    if layer.op == "add":
        return sum(m_in), sum(e_in), len(m_in)
    if layer.op == "concat":
        return np.concatenate(m_in, axis=1), np.concatenate(e_in, axis=1), 0
    raise ValueError(f"network_tolerance: no rule for op {layer.op}")


def random_network_input(network, rng: np.random.Generator) -> np.ndarray:
    """A network's input: over all of int8, or float32 in [-1, 1)."""
    shape = network.shape[network.input]
    if network.is_quantized:
        return rng.integers(-128, 128, shape, dtype=np.int8)
    return rng.uniform(-1, 1, shape).astype(np.float32)


def check_network(kernel, rng: np.random.Generator | int | None = None) -> CheckResult:
    """Run a network kernel (runtime.NetworkKernel) on a random input and
    compare with the network reference: a float network once, its input in
    [-1, 1) and its output poisoned with NaN, within network_tolerance; an
    int8 network bit for bit, its input over all of int8, run twice with the
    output filled with -128 and then 127 (an unwritten element differs)."""
    from .reference import network_reference
    rng = np.random.default_rng(rng)
    network = kernel.plan.network
    weights = kernel.plan.source_weights
    x = random_network_input(network, rng)
    if network.is_quantized:
        outputs = [kernel(x, out=np.full(kernel.output_shape, fill, dtype=np.int8)) for fill in INT8_FILLS]
        return compare_exact(outputs, network_reference(network, x, weights)[network.output])
    actual = kernel(x, out=np.full(kernel.output_shape, np.nan, dtype=np.float32))
    expected = network_reference(network, x, weights)[network.output]
    return compare(actual, expected, network_tolerance(network, x, weights))
