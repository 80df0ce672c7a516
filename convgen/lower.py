"""Lowering: a Spec becomes the naive loop nest that computes exactly the reference.

conv2d, per output element:
    acc = bias[oc] (or 0)
    for ic, kh, kw: acc += x[n, group_base + ic, ih, iw] * w[oc, ic, kh, kw]
    y[n, oc, oh, ow] = activation(acc)            (a residual layer: activation(acc + r[n, oc, oh, ow]))
with ih = oh*sh + kh*dh - pad_top (and alike for iw). Padding becomes a guard
(zeros: the tap is skipped, so it contributes 0; for max pooling that is the
-inf of PyTorch) or an index remap (reflect, replicate). No optimisation
choice is made here; the simplifier only drops guards that ranges settle.

An int8 layer (TFLite's scheme) accumulates in int32: acc += (x - zp_in) * w,
so a skipped padding tap is a real zero; the epilogue requantizes per output
channel (multiplier and shift as immediates, or constant tables when the
channels differ), adds zp_out, clamps to the activation range and narrows.

A fused pool is a second stage: the convolution (stage `conv`) writes the
workspace buffer `conv_out`, and the pool (stage `pool`, loops pn, pc, ph,
pw over outputs and pi, pj over the window) reads it. The schedule step
compute_at fuses them, computing the part of conv_out a pool loop reads
inside it, so that no whole intermediate is kept.
"""

from __future__ import annotations

from . import ir
from .ir import Buffer, Cast, FloatImm, IntImm, Loop, Seq, Store, Var
from .quant import ADD_LEFT_SHIFT, add_multipliers, round_half_away
from .spec import Spec


def lower(spec: Spec, prefix: str = "") -> ir.Func:
    """The naive loop nest for a spec, simplified. prefix: starts the name of
    every loop and buffer but the parameters (e.g. "conv1_"), so that two
    layers' loops and buffers never collide in one program; schedule steps
    may still name loops without it (apply_step resolves them)."""
    params = _params(spec)
    body = _conv_body(spec, params) if spec.is_conv else _pool_body(spec, params)
    workspace = (conv_output(spec),) if spec.is_conv and spec.pool is not None else ()
    func = ir.Func(spec.name, tuple(params.values()), body, doc=describe(spec), workspace=workspace)
    func = ir.simplify(func, drop_unit_loops=True)
    return ir.with_prefix(func, prefix)


def describe(spec: Spec) -> str:
    """In words, what the kernel computes and what it costs (backends put this in comments)."""
    kh, kw = spec.kernel_size
    parts = [f"{spec.op} {kh}x{kw}", f"stride {list(spec.stride)}",
             f"padding {list(spec.padding)} ({spec.padding_mode})", f"dilation {list(spec.dilation)}"]
    if spec.is_conv:
        parts.insert(1, f"{spec.in_channels}->{spec.out_channels} channels")
        parts.append(f"groups {spec.groups}")
        parts.append("bias" if spec.bias else "no bias")
        if spec.residual:
            parts.append("plus the residual r")
    else:
        parts.insert(1, f"{spec.in_channels} channels")
    parts.append(f"activation {spec.activation}")
    if spec.pool is not None:
        p = spec.pool
        parts.append(f"then {p.op} {p.kernel_size[0]}x{p.kernel_size[1]} stride {list(p.stride)} "
                     f"padding {list(p.padding)}")
    return f"{spec.name}: {', '.join(parts)}.\nMACs: {spec.macs:,} per call (batch {spec.batch})."


def _params(spec: Spec) -> dict[str, Buffer]:
    """The kernel's arguments, each laid out as the caller holds it (the layouts
    the spec names; weights OIHW); weights and bias are marked as such (bind fixes them)."""
    oh, ow = spec.output_size
    h, w = spec.input_size
    types = {name: str(dtype) for name, dtype in spec.array_dtypes.items()}
    activation_axes = ("N", "C", "H", "W")

    def argument(name: str, axes: tuple[str, ...], shape: tuple[int, ...], layout: str) -> Buffer:
        return Buffer(name, types[name], axes, shape, ir.parse_layout(layout, axes), weight=name in ("w", "b"))

    params = {"x": argument("x", activation_axes, (spec.batch, spec.in_channels, h, w), spec.input_layout)}
    if spec.is_conv:
        params["w"] = argument("w", ("O", "I", "H", "W"), spec.weight_shape, "OIHW")
        if spec.bias:
            params["b"] = argument("b", ("O",), (spec.out_channels,), "O")
        if spec.residual:
            params["r"] = argument("r", activation_axes, (spec.batch, spec.out_channels, *spec.conv_output_size),
                                   spec.output_layout)
    params["y"] = argument("y", activation_axes, (spec.batch, spec.out_channels, oh, ow), spec.output_layout)
    return params


def _nest(loops: list[tuple[str, int]], body: ir.Stmt, role: str = "spatial") -> ir.Stmt:
    """Wrap body in serial loops, the first outermost."""
    for name, extent in reversed(loops):
        body = Loop(Var(name), extent, body, role=role)
    return body


def _input_index(spec: Spec, out: Var, tap: Var, axis: int) -> ir.Expr:
    """The (unpadded) input row/column a tap reads: out*stride + tap*dilation - pad_before."""
    pad_before = spec.padding[2 * axis]
    return out * spec.stride[axis] + tap * spec.dilation[axis] - pad_before


def _padded_access(spec: Spec, ih: ir.Expr, iw: ir.Expr) -> tuple[ir.Expr, ir.Expr, ir.Expr]:
    """(row, column, guard) for reading the padded input at (ih, iw)."""
    h, w = spec.input_size
    if spec.padding_mode == "zeros":
        guard = ir.all_of(ir.Call("in_range", (ih, IntImm(h))), ir.Call("in_range", (iw, IntImm(w))))
        return ih, iw, guard
    if spec.padding_mode == "reflect":
        return _reflect(ih, h), _reflect(iw, w), ir.BoolImm(True)
    return _clamp(ih, h), _clamp(iw, w), ir.BoolImm(True)


def _reflect(i: ir.Expr, size: int) -> ir.Expr:
    """Mirror about the edge without repeating it: -1 -> 1, size -> size - 2."""
    return ir.Call("reflect", (i, IntImm(size)))


def _clamp(i: ir.Expr, size: int) -> ir.Expr:
    return ir.Call("clamp", (i, IntImm(size)))


def _activation(spec: Spec, value: ir.Expr) -> ir.Expr:
    if spec.activation in ("relu", "relu6"):
        value = ir.maximum(value, FloatImm(0.0))
    if spec.activation == "relu6":
        value = ir.minimum(value, FloatImm(6.0))
    return value


def _guarded(guard: ir.Expr, stmt: ir.Stmt, orelse: ir.Stmt | None = None) -> ir.Stmt:
    return stmt if guard == ir.BoolImm(True) else ir.If(guard, stmt, orelse)


def _accumulate(name: str, init: ir.Expr, taps: list[tuple[str, int]], update, write) -> ir.Stmt:
    """local name = init; for taps: update(acc); then write(final value). The accumulator has init's type."""
    acc = Buffer(name, init.dtype, ("i",), (1,), ir.plain_layout(("i",)), scope="local")
    zero = (IntImm(0),)
    value = ir.Load(acc, zero)
    body = Seq((
        Store(acc, zero, init),
        _nest(taps, update(lambda new: Store(acc, zero, new), value), role="reduction"),
        write(value),
    ))
    return ir.Allocate(acc, body)


def _int32(value: int) -> IntImm:
    return IntImm(value, ir.INT32)


def _widen(value: ir.Expr) -> ir.Expr:
    return Cast(value, ir.INT32)


def _saturate(spec: Spec, value: ir.Expr) -> ir.Expr:
    """An int32 result clamped to the layer's int8 activation range, narrowed to int8."""
    low, high = spec.activation_range()
    return Cast(ir.minimum(ir.maximum(value, _int32(low)), _int32(high)), ir.INT8)


def _per_channel(name: str, values: tuple[int, ...], oc: Var) -> ir.Expr:
    """A per-output-channel int32 constant: an immediate when all channels agree, else a table."""
    if len(set(values)) == 1:
        return _int32(values[0])
    table = Buffer(name, ir.INT32, ("O",), (len(values),), ir.plain_layout("O"), scope="constant", values=values)
    return ir.Load(table, (oc,))


def _requantized(spec: Spec, acc: ir.Expr, oc: Var) -> ir.Expr:
    multipliers, shifts = spec.requantization()
    scaled = ir.Call("requantize", (acc, _per_channel("multiplier", multipliers, oc), _per_channel("shift", shifts, oc)))
    return _saturate(spec, scaled + _int32(spec.quantization.output_zero_point))


def _conv_body(spec: Spec, params: dict[str, Buffer]) -> ir.Stmt:
    """The convolution's nest; with a fused pool, two stages: the convolution
    into a workspace buffer, then the pool over it (compute_at fuses them)."""
    n, oc, oh, ow, ic, kh, kw = (Var(v) for v in ("n", "oc", "oh", "ow", "ic", "kh", "kw"))
    in_per_group = spec.in_channels // spec.groups
    out_per_group = spec.out_channels // spec.groups
    channel = (oc // out_per_group) * in_per_group + ic
    row, col, guard = _padded_access(spec, _input_index(spec, oh, kh, 0), _input_index(spec, ow, kw, 1))
    x, w = params["x"], params["w"]
    y = params["y"] if spec.pool is None else conv_output(spec)
    zero = _int32(0) if spec.is_quantized else FloatImm(0.0)
    init = ir.Load(params["b"], (oc,)) if spec.bias else zero
    pixel, weight = ir.Load(x, (n, channel, row, col)), ir.Load(w, (oc, ic, kh, kw))
    if spec.is_quantized:
        pixel, weight = _widen(pixel) + _int32(-spec.quantization.input_zero_point), _widen(weight)
    finish = (lambda v: _requantized(spec, v, oc)) if spec.is_quantized else (lambda v: _activation(spec, v))
    if spec.residual:
        finish = (lambda v: _activation(spec, v + ir.Load(params["r"], (n, oc, oh, ow))))

    def update(store, acc):
        return _guarded(guard, store(acc + pixel * weight))

    taps = [("ic", in_per_group), ("kh", spec.kernel_size[0]), ("kw", spec.kernel_size[1])]
    body = _accumulate("acc", init, taps, update, lambda v: Store(y, (n, oc, oh, ow), finish(v)))
    rows, cols = spec.conv_output_size
    conv = _nest([("n", spec.batch), ("oc", spec.out_channels), ("oh", rows), ("ow", cols)], body)
    if spec.pool is None:
        return conv
    return Seq((ir.Stage("conv", conv), ir.Stage("pool", _pool_stage(spec, y, params["y"]))))


def conv_output(spec: Spec) -> Buffer:
    """The workspace buffer a convolution with a fused pool writes and the pool reads."""
    rows, cols = spec.conv_output_size
    axes = ("N", "C", "H", "W")
    return Buffer("conv_out", ir.FLOAT32, axes, (spec.batch, spec.out_channels, rows, cols),
                  ir.plain_layout(axes), scope="workspace")


def _pool_stage(spec: Spec, source: Buffer, y: Buffer) -> ir.Stmt:
    """The pool that follows a convolution, over its activated output. Window
    elements in the pool's padding are skipped (max: -inf; average: zeros
    that count, PyTorch's default)."""
    pool = spec.pool
    n, c, ph, pw, pi, pj = (Var(v) for v in ("pn", "pc", "ph", "pw", "pi", "pj"))
    oh = ph * pool.stride[0] + pi - pool.padding[0]
    ow = pw * pool.stride[1] + pj - pool.padding[2]
    rows, cols = spec.conv_output_size
    inside = ir.all_of(ir.le(0, oh), ir.lt(oh, rows), ir.le(0, ow), ir.lt(ow, cols))
    is_max = pool.op == "maxpool2d"
    count = _window_count((rows, cols), pool.kernel_size, pool.stride, pool.padding, pool.count_include_pad,
                          spec.output_size, (ph, pw), ir.FLOAT32)

    def update(store, acc):
        value = ir.Load(source, (n, c, oh, ow))
        return _guarded(inside, store(ir.maximum(acc, value) if is_max else acc + value))

    init = FloatImm(float("-inf") if is_max else 0.0)
    taps = [("pi", pool.kernel_size[0]), ("pj", pool.kernel_size[1])]
    body = _accumulate("pool", init, taps, update,
                       lambda v: Store(y, (n, c, ph, pw), v if is_max else v / count))
    return _nest([("pn", spec.batch), ("pc", spec.out_channels), ("ph", spec.output_size[0]),
                  ("pw", spec.output_size[1])], body)


def _window_count(size, kernel, stride, padding, include_pad: bool, out_size, outputs, dtype: str) -> ir.Expr:
    """What an average-pooling window at outputs (oh, ow) divides by, as a
    dtype value: its elements inside the padded input (include_pad) or inside
    the input alone, rows times columns. A literal where every window has the
    same count (no padding left out, no ceil_mode window past the padding);
    else, per axis that varies, a table of the counts by output index."""
    literal = FloatImm if dtype == ir.FLOAT32 else (lambda v: _int32(int(v)))
    factors = []
    for axis, name, before, after in ((0, "rows", padding[0], padding[1]), (1, "cols", padding[2], padding[3])):
        counts = []
        for o in range(out_size[axis]):
            start = o * stride[axis] - before
            low, high = (start, min(start + kernel[axis], size[axis] + after)) if include_pad else \
                (max(start, 0), min(start + kernel[axis], size[axis]))
            counts.append(high - low)
        if len(set(counts)) == 1:
            factors.append(counts[0])
            continue
        values = tuple(float(c) for c in counts) if dtype == ir.FLOAT32 else tuple(counts)
        table = Buffer(f"window_{name}", dtype, ("O",), (len(values),), ir.plain_layout("O"), scope="constant",
                       values=values)
        factors.append(ir.Load(table, (outputs[axis],)))
    rows, cols = factors
    if isinstance(rows, int) and isinstance(cols, int):
        return literal(float(rows * cols))
    return (literal(float(rows)) if isinstance(rows, int) else rows) * \
        (literal(float(cols)) if isinstance(cols, int) else cols)


def _pool_body(spec: Spec, params: dict[str, Buffer]) -> ir.Stmt:
    if spec.is_quantized:
        return _quantized_pool_body(spec, params)
    n, c, oh, ow, kh, kw = (Var(v) for v in ("n", "c", "oh", "ow", "kh", "kw"))
    row, col, guard = _padded_access(spec, _input_index(spec, oh, kh, 0), _input_index(spec, ow, kw, 1))
    is_max = spec.op == "maxpool2d"
    count = _window_count(spec.input_size, spec.kernel_size, spec.stride, spec.padding, spec.count_include_pad,
                          spec.output_size, (oh, ow), ir.FLOAT32)

    def update(store, acc):
        value = ir.Load(params["x"], (n, c, row, col))
        return _guarded(guard, store(ir.maximum(acc, value) if is_max else acc + value))

    init = FloatImm(float("-inf") if is_max else 0.0)
    # Average pooling divides by the window's elements in the padded input (PyTorch's default), or
    # in the input alone (count_include_pad false)
    finish = (lambda v: v) if is_max else (lambda v: v / count)
    taps = [("kh", spec.kernel_size[0]), ("kw", spec.kernel_size[1])]
    body = _accumulate("acc", init, taps, update,
                       lambda v: Store(params["y"], (n, c, oh, ow), _activation(spec, finish(v))))
    oh_n, ow_n = spec.output_size
    return _nest([("n", spec.batch), ("c", spec.in_channels), ("oh", oh_n), ("ow", ow_n)], body)


def _quantized_pool_body(spec: Spec, params: dict[str, Buffer]) -> ir.Stmt:
    """int8 pooling in int32: max of the window (padding skipped), or its sum with
    padding as the zero point, divided rounding half away from zero (TFLite)."""
    n, c, oh, ow, kh, kw = (Var(v) for v in ("n", "c", "oh", "ow", "kh", "kw"))
    row, col, guard = _padded_access(spec, _input_index(spec, oh, kh, 0), _input_index(spec, ow, kw, 1))
    value = _widen(ir.Load(params["x"], (n, c, row, col)))
    is_max = spec.op == "maxpool2d"
    pad = _int32(spec.quantization.input_zero_point)
    count = _window_count(spec.input_size, spec.kernel_size, spec.stride, spec.padding, spec.count_include_pad,
                          spec.output_size, (oh, ow), ir.INT32)
    # a tap in the padding adds the zero point where it counts, but not past the padding (ceil_mode)
    h, w = spec.input_size
    ih, iw = _input_index(spec, oh, kh, 0), _input_index(spec, ow, kw, 1)
    in_padding = ir.all_of(ir.lt(ih, h + spec.padding[1]), ir.lt(iw, w + spec.padding[3]))

    def update(store, acc):
        if is_max:
            return _guarded(guard, store(ir.maximum(acc, value)))
        if not spec.count_include_pad:
            return _guarded(guard, store(acc + value))
        return _guarded(guard, store(acc + value), _guarded(in_padding, store(acc + pad)))

    finish = (lambda v: v) if is_max else (lambda v: ir.Call("divide_round", (v, count)))
    taps = [("kh", spec.kernel_size[0]), ("kw", spec.kernel_size[1])]
    body = _accumulate("acc", _int32(-128 if is_max else 0), taps, update,
                       lambda v: Store(params["y"], (n, c, oh, ow), _saturate(spec, finish(v))))
    oh_n, ow_n = spec.output_size
    return _nest([("n", spec.batch), ("c", spec.in_channels), ("oh", oh_n), ("ow", ow_n)], body)


# ---------------------------------------------------------------------------
# Network ops with no layer spec: elementwise and concatenation
# ---------------------------------------------------------------------------

def lower_elementwise(name: str, op: str, inputs: tuple[Buffer, ...], y: Buffer, prefix: str = "",
                      quantization: tuple = ()) -> ir.Func:
    """A network's relu, relu6 (one input) or add (the sum of its inputs, in
    order) over N x C x H x W buffers of one shape: y = op(inputs), element by
    element. y may be one of the inputs (in place): each element is read
    before it is written, and by nothing else. int8 buffers (quantization:
    each input's (scale, zero point), then the output's): relu and relu6
    clamp at the input's scale; add is TFLite's (reference.py)."""
    axes = [Var(prefix + v) for v in ("n", "c", "h", "w")]
    loads = [ir.Load(b, tuple(axes)) for b in inputs]
    value = _int8_elementwise(op, loads, quantization) if y.dtype == ir.INT8 else _float_elementwise(op, loads)
    body = _nest([(v.name, extent) for v, extent in zip(axes, y.shape)], Store(y, tuple(axes), value))
    params = tuple(dict.fromkeys(inputs + (y,)))
    return ir.simplify(ir.Func(name, params, body, doc=f"{name}: {op} of {len(inputs)} tensor(s)", prefix=prefix),
                       drop_unit_loops=True)


def _float_elementwise(op: str, loads: list[ir.Expr]) -> ir.Expr:
    value = loads[0]
    for other in loads[1:]:
        value = value + other
    if op in ("relu", "relu6"):
        value = ir.maximum(value, FloatImm(0.0))
    if op == "relu6":
        value = ir.minimum(value, FloatImm(6.0))
    return value


def _int8_elementwise(op: str, loads: list[ir.Expr], quantization: tuple) -> ir.Expr:
    if op in ("relu", "relu6"):
        scale, zero_point = quantization[0]
        high = min(127, zero_point + round_half_away(6.0 / scale)) if op == "relu6" else 127
        return Cast(ir.minimum(ir.maximum(_widen(loads[0]), _int32(zero_point)), _int32(high)), ir.INT8)
    (s1, z1), (s2, z2), (scale, zero_point) = quantization
    m1, shift1, m2, shift2, m_out, shift_out = add_multipliers(s1, s2, scale)

    def scaled(load, zp, m, shift):
        shifted = (_widen(load) + _int32(-zp)) * _int32(1 << ADD_LEFT_SHIFT)
        return ir.Call("requantize", (shifted, _int32(m), _int32(shift)))
    total = scaled(loads[0], z1, m1, shift1) + scaled(loads[1], z2, m2, shift2)
    out = ir.Call("requantize", (total, _int32(m_out), _int32(shift_out))) + _int32(zero_point)
    return Cast(ir.minimum(ir.maximum(out, _int32(-128)), _int32(127)), ir.INT8)


def lower_concat(name: str, inputs: tuple[Buffer, ...], y: Buffer, prefix: str = "") -> ir.Func:
    """A network's concat along channels: a stage per input, copying it into
    its channels of y."""
    stages, first = [], 0
    for k, source in enumerate(inputs):
        n, c, h, w = (Var(f"{prefix}{v}{k}") for v in ("n", "c", "h", "w"))
        copy = Store(y, (n, c + first, h, w), ir.Load(source, (n, c, h, w)))
        stages.append(ir.Stage(f"{prefix}copy{k}", _nest([(v.name, e) for v, e in zip((n, c, h, w), source.shape)],
                                                          copy)))
        first += source.extent("C")
    func = ir.Func(name, tuple(inputs) + (y,), Seq(tuple(stages)), doc=f"{name}: concat of {len(inputs)} tensors",
                   prefix=prefix)
    return ir.simplify(func, drop_unit_loops=True)
