"""Hypothesis strategies: random layer specs covering every option of the format."""

from hypothesis import assume
from hypothesis import strategies as st

from convgen.errors import SpecError
from convgen.spec import load_spec

_counter = iter(range(10**9))


def _padding(draw, limit):
    form = draw(st.sampled_from(["int", "pair", "quad", "same", "valid", "absent"]))
    pad = st.integers(0, limit)
    if form == "int":
        return draw(pad)
    if form == "pair":
        return [draw(pad), draw(pad)]
    if form == "quad":
        return [draw(pad) for _ in range(4)]
    return None if form == "absent" else form


@st.composite
def spec_dicts(draw, ops=("conv2d", "conv2d", "maxpool2d", "avgpool2d")):
    """A dict for load_spec. Conv layers are drawn twice as often as each pooling op."""
    op = draw(st.sampled_from(ops))
    kernel = [draw(st.integers(1, 4)), draw(st.integers(1, 4))]
    dilation = [1, 1] if op == "avgpool2d" else [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    effective = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate"]))
    # Pooling with implicit (zeros) padding allows at most half the window.
    limit = min(effective) // 2 if op != "conv2d" and mode == "zeros" else 3
    spec = {
        "name": f"rand{next(_counter)}",
        "op": op,
        "batch": draw(st.integers(1, 2)),
        "input_size": [draw(st.integers(max(1, e - 2), e + 6)) for e in effective],
        "kernel_size": kernel if draw(st.booleans()) or kernel[0] != kernel[1] else kernel[0],
        "stride": [draw(st.integers(1, 3)), draw(st.integers(1, 3))],
        "dilation": dilation,
        "padding_mode": mode,
        "activation": draw(st.sampled_from(["none", "relu", "relu6"])),
        "layout": {"input": draw(st.sampled_from(["NCHW", "NHWC"])),
                   "output": draw(st.sampled_from(["NCHW", "NHWC"]))},
    }
    padding = _padding(draw, limit)
    if padding is not None:
        spec["padding"] = padding
    if op != "conv2d" and mode == "zeros":   # PyTorch's pooling options (zero padding only)
        spec["ceil_mode"] = draw(st.booleans())
        if op == "avgpool2d":
            spec["count_include_pad"] = draw(st.booleans())
    if op == "conv2d":
        groups = draw(st.integers(1, 3))
        spec["groups"] = groups
        spec["in_channels"] = groups * draw(st.integers(1, 3))
        depthwise = draw(st.booleans())
        spec["out_channels"] = spec["in_channels"] if depthwise else groups * draw(st.integers(1, 3))
        spec["bias"] = draw(st.booleans())
        if draw(st.integers(0, 3)) == 0:  # a residual added in the epilogue now and then
            spec["residual"] = True
        if draw(st.integers(0, 4)) == 0:  # a fused pool now and then
            window = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
            spec["pool"] = {"op": draw(st.sampled_from(["maxpool2d", "avgpool2d"])), "kernel_size": window,
                            "stride": [draw(st.integers(1, 3)), draw(st.integers(1, 3))],
                            "padding": [draw(st.integers(0, k // 2)) for k in (window[0], window[0],
                                                                                 window[1], window[1])],
                            "ceil_mode": draw(st.booleans())}
            if spec["pool"]["op"] == "avgpool2d":
                spec["pool"]["count_include_pad"] = draw(st.booleans())
    else:
        spec["in_channels"] = draw(st.integers(1, 4))
    return spec


@st.composite
def specs(draw, **kwargs):
    """A valid Spec; drawn dicts that the loader refuses (output below 1, reflect
    padding too wide for the input) are discarded."""
    data = draw(spec_dicts(**kwargs))
    try:
        return load_spec(data)
    except SpecError:
        assume(False)


def _scale_and_zero_point(draw, scale):
    return {"scale": scale, "zero_point": draw(st.integers(-128, 127))}


@st.composite
def quantized_specs(draw, **kwargs):
    """A valid int8 Spec (no fused pool). The output scale is drawn around the
    accumulator's typical spread, so outputs span the int8 range, some saturating."""
    data = draw(spec_dicts(**kwargs))
    data.pop("pool", None)
    data.pop("residual", None)
    data["dtype"] = "int8"
    input_scale = draw(st.floats(0.001, 0.1))
    if data["op"] != "conv2d":
        data["quantization"] = {"input": _scale_and_zero_point(draw, input_scale)}
    else:
        kernel = data["kernel_size"] if isinstance(data["kernel_size"], list) else [data["kernel_size"]] * 2
        taps = kernel[0] * kernel[1] * data["in_channels"] // data.get("groups", 1)
        per_channel = draw(st.booleans())
        weight_scales = [draw(st.floats(0.001, 0.05)) for _ in range(data["out_channels"] if per_channel else 1)]
        spread = input_scale * max(weight_scales) * 75 * 75 * taps ** 0.5   # real spread of the accumulator
        data["quantization"] = {"input": _scale_and_zero_point(draw, input_scale),
                                "output": _scale_and_zero_point(draw, spread / draw(st.floats(10, 200))),
                                "weight_scales": weight_scales if per_channel else weight_scales[0]}
    try:
        return load_spec(data)
    except SpecError:
        assume(False)


# ---------------------------------------------------------------------------
# Random schedules: each step is drawn from the loops the kernel has at that point.
# ---------------------------------------------------------------------------

from convgen import ir  # noqa: E402
from convgen.errors import ScheduleError  # noqa: E402
from convgen.lower import lower  # noqa: E402
from convgen.schedule import Step, apply_step  # noqa: E402
from convgen.schedule.nest import perfect_chain, stores_not_indexed_by  # noqa: E402

_LAYOUTS = {
    "x": ["NCHW", "NHWC", "NCHW2c", "NCHW4c", "NHWC3c", "CHWN"],
    "y": ["NCHW", "NHWC", "NCHW2c", "NCHW4c", "NHWC3c"],
    "w": ["OIHW", "HWIO", "OIHW2o", "OIHW4i4o", "OHWI", "IHWO3o"],
}


def _serial_loops(func, kind=None):
    loops = [l for l in ir.find_all(func.body, ir.Loop) if l.kind == "serial"]
    return loops if kind is None else [l for l in loops if kind(l)]


def _draw_step(draw, func) -> Step | None:
    unfused = {stage.name for stage in func.stages} >= {"conv", "pool"}   # a fused pool, not computed at yet
    primitive = "compute_at" if unfused and draw(st.booleans()) else draw(st.sampled_from([
        "split", "split", "tile", "reorder", "reorder", "fuse", "unroll", "vectorize", "vectorize", "parallel",
        "cache_write", "cache_write", "cache_read", "pad_input", "layout", "peel"]))
    loops = _serial_loops(func)
    if primitive == "compute_at":   # a fused pool's convolution, at one of the pool's loops
        if not unfused:
            return None
        pool = next(stage for stage in func.stages if stage.name == "pool")
        loops = ir.find_all(pool.body, ir.Loop)   # none where every loop had one iteration
        return Step("compute_at", ("conv", draw(st.sampled_from(loops)).var.name)) if loops else None
    if primitive == "pad_input":
        return Step("pad_input")
    if primitive == "layout":
        buffer = draw(st.sampled_from([p.name for p in func.params if p.name in _LAYOUTS]))
        return Step("layout", (buffer, draw(st.sampled_from(_LAYOUTS[buffer]))))
    if not loops:
        return None
    if primitive == "split":
        loop = draw(st.sampled_from(loops))
        return Step("split", (loop.var.name, draw(st.integers(1, 5))),
                    (("tail", draw(st.sampled_from(["guard", "peel", "perfect"]))),))
    if primitive == "tile":
        pairs = [l for l in loops if isinstance(l.body, ir.Loop)]
        if not pairs:
            return None
        loop = draw(st.sampled_from(pairs))
        return Step("tile", (loop.var.name, loop.body.var.name, draw(st.integers(1, 4)), draw(st.integers(1, 4))))
    if primitive == "reorder":
        chains = [perfect_chain(l) for l in loops if isinstance(l.body, ir.Loop)]
        if not chains:
            return None
        chain = [l.var.name for l in draw(st.sampled_from(chains))]
        return Step("reorder", tuple(draw(st.permutations(chain))))
    if primitive == "fuse":
        pairs = [l for l in loops if isinstance(l.body, ir.Loop)]
        if not pairs:
            return None
        loop = draw(st.sampled_from(pairs))
        return Step("fuse", (loop.var.name, loop.body.var.name))
    if primitive == "unroll":
        small = [l for l in loops if l.extent <= 6]
        if not small or sum(l.kind == "unrolled" for l in ir.find_all(func.body, ir.Loop)) >= 2:
            return None
        return Step("unroll", (draw(st.sampled_from(small)).var.name,))
    if primitive == "vectorize":
        innermost = [l for l in loops if not ir.find_all(l.body, ir.Loop) and 2 <= l.extent
                     and not stores_not_indexed_by(l.body, l.var.name)]
        return Step("vectorize", (draw(st.sampled_from(innermost)).var.name,)) if innermost else None
    if primitive == "peel":
        loop = draw(st.sampled_from(loops))
        front, back = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        return Step("peel", (loop.var.name, front, back))
    if primitive == "parallel":
        return Step("parallel", (draw(st.sampled_from(loops)).var.name,))
    if primitive == "cache_read":
        buffer = draw(st.sampled_from([p.name for p in func.params if p.name not in func.written_buffers()]))
        return Step("cache_read", (buffer, draw(st.sampled_from(loops)).var.name))
    holders = [l for l in loops if isinstance(perfect_chain(l)[-1].body, ir.Allocate)]
    return Step("cache_write", (draw(st.sampled_from(holders)).var.name,)) if holders else None


@st.composite
def scheduled(draw, max_steps=8, spec_strategy=None):
    """(spec, steps, refused): a random spec (of spec_strategy, by default specs())
    and the random steps that applied to it, plus the count of drawn steps that
    were (correctly) refused."""
    spec = draw(spec_strategy if spec_strategy is not None else specs())
    func = lower(spec)
    steps, refused = [], 0
    for _ in range(draw(st.integers(0, max_steps))):
        step = _draw_step(draw, func)
        if step is None:
            continue
        try:
            func = apply_step(func, step)
        except ScheduleError:
            refused += 1
            continue
        steps.append(step)
    return spec, tuple(steps), refused
