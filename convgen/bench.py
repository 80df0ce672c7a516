"""Measuring convgen against other libraries on one layer, in one process.

Each contender gets the same random inputs, on 64-byte boundaries as every
framework's allocator gives them, in its own preferred layout (converted
before timing) and its result is compared with the float64
reference before it is timed; a contender that does not match is reported,
not timed. Timing is interleaved (a round measures every contender once,
median of many calls after warm-up) and the median over rounds is kept, so
drift on a shared machine affects everyone alike.

Peers are optional: PyTorch (`pip install torch==2.13.0`), ONNX Runtime
(`pip install onnxruntime onnx`), and NumPy (im2col and a BLAS matrix
product; its BLAS picks its own thread count). A missing peer is reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .check import compare_runs, random_inputs, tolerance, weight_transform
from .errors import ScheduleError
from .reference import reference
from .driver import build
from .runtime import aligned_copy, empty, measure
from .schedule.space import winograd_schedule
from .spec import Spec
from .target import host

PEERS = ("torch", "onnxruntime", "numpy")


@dataclass
class Entry:
    name: str
    seconds: float | None = None   # median seconds per call; None when not timed
    note: str = ""                 # why not timed, or what was measured
    error: float | None = None     # max |result - reference| / max |reference| (float64 reference)

    def gflops(self, spec: Spec) -> float | None:
        """GFLOP/s over the layer's nominal MACs (every tap), the same for every contender."""
        return None if self.seconds is None else 2 * spec.macs / self.seconds / 1e9

    def share_of_peak(self, spec: Spec, peak_gflops: float) -> float | None:
        """The fraction of the FMA peak the multiply-adds executed (taps in zero
        padding skipped, spec.executed_macs) take."""
        return None if self.seconds is None else 2 * spec.executed_macs / self.seconds / 1e9 / peak_gflops

    def as_dict(self, spec: Spec) -> dict:
        return {**asdict(self), "gflops": self.gflops(spec)}


def bench(spec: Spec, threads: int = 1, peers=PEERS, schedule=None, seed: int = 0,
          rounds: int = 3, min_seconds: float = 0.2, winograd=()) -> list[Entry]:
    """convgen's kernel (the spec's schedule, else the default for the target),
    for each tile size in `winograd` (2, 4) its Winograd kernel, and the peers."""
    # every contender reads the same cache-line-aligned arrays, as its own allocator would give it
    inputs = {name: aligned_copy(array) for name, array in random_inputs(spec, np.random.default_rng(seed)).items()}
    expected = reference(spec, **inputs)
    contenders = {"convgen": _convgen(spec, inputs, schedule, threads)}
    entries = {}
    for tile in winograd:
        name = winograd_name(tile)
        try:
            contenders[name] = _convgen(spec, inputs, winograd_schedule(spec, host(), threads, tile).steps, threads)
        except ScheduleError as err:
            entries[name] = Entry(name, note=f"not applicable: {err.message}")
    for peer in peers:
        if spec.is_quantized:
            entries[peer] = Entry(peer, note="not timed: the peers here run float32 layers, not int8")
            continue
        try:
            contenders.update(_PEERS[peer](spec, inputs, threads))
        except ImportError as err:
            entries[peer] = Entry(peer, note=f"not installed ({err.name})")
        except NotImplementedError as err:
            entries[peer] = Entry(peer, note=f"cannot express this layer: {err}")
        except Exception as err:  # a peer that fails is reported, never fatal to the benchmark
            entries[peer] = Entry(peer, note=f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
    calls, errors = {}, {}
    for name, (call, to_user, *transform) in contenders.items():
        allowed = None if spec.is_quantized else tolerance(spec, inputs, *transform)
        result = compare_runs(spec, [to_user(call())], expected, inputs, allowed)
        if result.passed:
            calls[name] = call
            errors[name] = result.max_abs_error / max(float(np.abs(expected).max()), 1e-30)
        else:
            entries[name] = Entry(name, note=f"does not match the reference (max error {result.max_abs_error:.3g})")
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(measure(call, min_seconds=min_seconds))
    for name in calls:
        entries[name] = Entry(name, float(np.median(times[name])), error=errors[name])
    mine = [n for n in entries if n.startswith("convgen")]
    order = sorted(mine, key=lambda n: n != "convgen") + [n for n in entries if n not in mine]
    return [entries[n] for n in order]


def winograd_name(tile: int) -> str:
    return f"convgen winograd F({tile}x{tile})"


def _convgen(spec: Spec, inputs, schedule, threads: int):
    """(call, to user's layout, weight transform): the transform decides the error bound.
    schedule None: the spec's own, else the default, as convgen.build chooses it."""
    kernel = build(spec, "llvm", schedule=schedule, threads=threads)
    call = kernel.bind(inputs["w"], inputs.get("b")) if spec.is_conv else kernel
    out = empty(spec.output_shape, spec.array_dtypes["y"])
    return lambda: call(inputs["x"], out=out), lambda y: y, weight_transform(kernel.func)


def _nchw(x: np.ndarray, layout: str) -> np.ndarray:
    return x if layout == "NCHW" else aligned_copy(x.transpose(0, 3, 1, 2))


def _from_nchw(y: np.ndarray, layout: str) -> np.ndarray:
    return y if layout == "NCHW" else y.transpose(0, 2, 3, 1)


# ---------------------------------------------------------------------------
# PyTorch: F.conv2d and the pooling functions, NCHW and channels_last
# ---------------------------------------------------------------------------

def _torch(spec: Spec, inputs, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    top, bottom, left, right = spec.padding
    mode = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}[spec.padding_mode]
    symmetric = top == bottom and left == right and mode == "constant"
    w = torch.from_numpy(inputs["w"]) if spec.is_conv else None
    b = torch.from_numpy(inputs["b"]) if spec.is_conv and spec.bias else None

    def layer(x):
        if not symmetric:
            fill = float("-inf") if spec.op == "maxpool2d" else 0.0
            x = F.pad(x, (left, right, top, bottom), mode=mode, **({"value": fill} if mode == "constant" else {}))
        padding = (top, left) if symmetric else 0
        if spec.op == "conv2d":
            y = F.conv2d(x, w, b, spec.stride, padding, spec.dilation, spec.groups)
        elif spec.op == "maxpool2d":
            y = F.max_pool2d(x, spec.kernel_size, spec.stride, padding, spec.dilation)
        else:
            y = F.avg_pool2d(x, spec.kernel_size, spec.stride, padding, count_include_pad=True)
        if spec.activation == "relu":
            y = F.relu(y)
        elif spec.activation == "relu6":
            y = F.relu6(y)
        if spec.pool is not None:
            y = _torch_pool(F, spec.pool, y)
        return y

    found = {}
    for name, memory in (("torch (NCHW)", torch.contiguous_format), ("torch (channels_last)", torch.channels_last)):
        x = torch.from_numpy(_nchw(inputs["x"], spec.input_layout)).contiguous(memory_format=memory)
        if w is not None:
            w = w.contiguous(memory_format=memory)

        def call(x=x):
            with torch.no_grad():
                return layer(x)
        found[name] = (call, lambda y: _from_nchw(y.contiguous().numpy(), spec.output_layout))
    return found


def _torch_pool(F, pool, y):
    top, bottom, left, right = pool.padding
    if top != bottom or left != right:
        fill = float("-inf") if pool.op == "maxpool2d" else 0.0
        y = F.pad(y, (left, right, top, bottom), value=fill)
        top = left = 0
    if pool.op == "maxpool2d":
        return F.max_pool2d(y, pool.kernel_size, pool.stride, (top, left))
    return F.avg_pool2d(y, pool.kernel_size, pool.stride, (top, left), count_include_pad=True)


# ---------------------------------------------------------------------------
# ONNX Runtime: a one-layer ONNX graph (Pad, Conv / MaxPool / AveragePool, Relu / Clip, pool)
# ---------------------------------------------------------------------------

def _onnxruntime(spec: Spec, inputs, threads: int) -> dict:
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    top, bottom, left, right = spec.padding
    nodes, initializers, current = [], [], "x"
    pads = [top, left, bottom, right]
    if spec.padding_mode != "zeros":
        mode = {"reflect": "reflect", "replicate": "edge"}[spec.padding_mode]
        initializers.append(numpy_helper.from_array(np.array([0, 0, top, left, 0, 0, bottom, right], np.int64), "pads"))
        nodes.append(helper.make_node("Pad", [current, "pads"], ["padded"], mode=mode))
        current, pads = "padded", [0, 0, 0, 0]
    attributes = dict(kernel_shape=list(spec.kernel_size), strides=list(spec.stride), pads=pads)
    if spec.op == "conv2d":
        initializers.append(numpy_helper.from_array(inputs["w"], "w"))
        names = [current, "w"] + (["b"] if spec.bias else [])
        if spec.bias:
            initializers.append(numpy_helper.from_array(inputs["b"], "b"))
        nodes.append(helper.make_node("Conv", names, ["conv"], dilations=list(spec.dilation), group=spec.groups,
                                      **attributes))
    elif spec.op == "maxpool2d":
        nodes.append(helper.make_node("MaxPool", [current], ["conv"], dilations=list(spec.dilation), **attributes))
    else:
        nodes.append(helper.make_node("AveragePool", [current], ["conv"], count_include_pad=1, **attributes))
    current = "conv"
    if spec.activation != "none":
        if spec.activation == "relu":
            nodes.append(helper.make_node("Relu", [current], ["act"]))
        else:
            initializers += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
                             numpy_helper.from_array(np.array(6, np.float32), "hi")]
            nodes.append(helper.make_node("Clip", [current, "lo", "hi"], ["act"]))
        current = "act"
    if spec.pool is not None:
        p = spec.pool
        op = "MaxPool" if p.op == "maxpool2d" else "AveragePool"
        extra = {"count_include_pad": 1} if op == "AveragePool" else {}
        pool_pads = [p.padding[0], p.padding[2], p.padding[1], p.padding[3]]
        nodes.append(helper.make_node(op, [current], ["pooled"], kernel_shape=list(p.kernel_size),
                                      strides=list(p.stride), pads=pool_pads, **extra))
        current = "pooled"
    nodes[-1].output[0] = "y"
    shape_in = [spec.batch, spec.in_channels, *spec.input_size]
    shape_out = [spec.batch, spec.out_channels, *spec.output_size]
    graph = helper.make_graph(nodes, spec.name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape_out)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = _nchw(inputs["x"], spec.input_layout)
    _ = onnx  # imported to report a missing package by name
    return {"onnxruntime": (lambda: session.run(None, {"x": x})[0],
                            lambda y: _from_nchw(y, spec.output_layout))}


# ---------------------------------------------------------------------------
# NumPy: im2col and one matrix product per group (BLAS)
# ---------------------------------------------------------------------------

def _numpy(spec: Spec, inputs, threads: int) -> dict:
    if not spec.is_conv or spec.pool is not None or spec.padding_mode != "zeros":
        raise NotImplementedError("the NumPy peer covers plain zero-padded conv2d only")
    x = _nchw(inputs["x"], spec.input_layout)
    w, b = inputs["w"], inputs.get("b")
    top, bottom, left, right = spec.padding
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    oh, ow = spec.conv_output_size
    groups, cg, og = spec.groups, spec.in_channels // spec.groups, spec.out_channels // spec.groups
    weights = w.reshape(groups, og, cg * kh * kw)

    def call():
        xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        windows = np.lib.stride_tricks.sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
        columns = windows[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :oh, :ow]        # N, C, OH, OW, KH, KW
        columns = columns.reshape(spec.batch, groups, cg, oh, ow, kh, kw).transpose(0, 1, 3, 4, 2, 5, 6)
        columns = columns.reshape(spec.batch, groups, oh * ow, cg * kh * kw)
        y = np.matmul(columns, weights.transpose(0, 2, 1)[None])                 # N, G, OH*OW, OG
        y = y.transpose(0, 1, 3, 2).reshape(spec.batch, spec.out_channels, oh, ow)
        if b is not None:
            y = y + b.reshape(1, -1, 1, 1)
        if spec.activation != "none":
            y = np.maximum(y, 0)
            if spec.activation == "relu6":
                y = np.minimum(y, 6)
        return y

    return {"numpy": (call, lambda y: _from_nchw(y, spec.output_layout))}


_PEERS = {"torch": _torch, "onnxruntime": _onnxruntime, "numpy": _numpy}
