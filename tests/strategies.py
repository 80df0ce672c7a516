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
    if op == "conv2d":
        groups = draw(st.integers(1, 3))
        spec["groups"] = groups
        spec["in_channels"] = groups * draw(st.integers(1, 3))
        depthwise = draw(st.booleans())
        spec["out_channels"] = spec["in_channels"] if depthwise else groups * draw(st.integers(1, 3))
        spec["bias"] = draw(st.booleans())
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
