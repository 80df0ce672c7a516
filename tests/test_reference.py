"""The reference, cross-checked against a second formulation: the seed documents'
per-element loop (pad, then sum over channels and taps), written out here."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from convgen.reference import reference
from strategies import specs


def direct_loops(spec, x, w, b, residual=None):
    """Element by element, straight from the definition, in NCHW (residual: a
    residual layer's r, of the convolution's output, in the output layout)."""
    if spec.input_layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    if residual is not None and spec.output_layout == "NHWC":
        residual = residual.transpose(0, 3, 1, 2)
    top, bottom, left, right = spec.padding
    mode = {"zeros": "constant", "reflect": "reflect", "replicate": "edge"}[spec.padding_mode]
    fill = -np.inf if spec.op == "maxpool2d" else 0.0
    pad = ((0, 0), (0, 0), (top, bottom), (left, right))
    xp = np.pad(x.astype(np.float64), pad, mode=mode, **({"constant_values": fill} if mode == "constant" else {}))
    oh, ow = spec.conv_output_size
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    assert spec.padding_mode == "zeros" or not (spec.ceil_mode or not spec.count_include_pad)
    y = np.empty((spec.batch, spec.out_channels, oh, ow))
    cg, og = spec.in_channels // spec.groups, spec.out_channels // spec.groups
    for n in range(spec.batch):
        for o in range(spec.out_channels):
            for i in range(oh):
                for j in range(ow):
                    values = []
                    for p in range(kh):
                        for q in range(kw):
                            r, c = i * sh + p * dh, j * sw + q * dw
                            if r >= xp.shape[2] or c >= xp.shape[3]:
                                continue   # past the padding: a ceil_mode window's overhang counts for nothing
                            inside = top <= r < xp.shape[2] - bottom and left <= c < xp.shape[3] - right
                            if spec.is_conv:
                                for ci in range(cg):
                                    values.append(xp[n, (o // og) * cg + ci, r, c] * w[o, ci, p, q])
                            elif inside or spec.count_include_pad:
                                values.append(xp[n, o, r, c])
                    if spec.op == "maxpool2d":
                        v = max(values)
                    elif spec.op == "avgpool2d":
                        v = sum(values) / len(values)
                    else:
                        v = sum(values) + (b[o] if spec.bias else 0.0) + (residual[n, o, i, j] if spec.residual else 0.0)
                    if spec.activation != "none":
                        v = max(v, 0.0)
                    if spec.activation == "relu6":
                        v = min(v, 6.0)
                    y[n, o, i, j] = v
    if spec.pool is not None:
        y = pool_loops(spec.pool, y, spec.output_size)
    return y.transpose(0, 2, 3, 1) if spec.output_layout == "NHWC" else y


def pool_loops(pool, y, out_size):
    """A following pool, element by element: windows over the activated output. A
    tap past the padding (ceil_mode) counts for nothing; one in the padding is
    -inf or 0, counted unless count_include_pad is false."""
    (kh, kw), (sh, sw) = pool.kernel_size, pool.stride
    top, bottom, left, right = pool.padding
    is_max = pool.op == "maxpool2d"
    n, c, h, w = y.shape
    oh, ow = out_size
    out = np.empty((n, c, oh, ow))
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    values = [y[b, ch, r, q] if 0 <= r < h and 0 <= q < w else (-np.inf if is_max else 0.0)
                              for r in range(i * sh - top, i * sh - top + kh) if r < h + bottom
                              for q in range(j * sw - left, j * sw - left + kw) if q < w + right
                              if pool.count_include_pad or (0 <= r < h and 0 <= q < w)]
                    out[b, ch, i, j] = max(values) if is_max else sum(values) / len(values)
    return out


@settings(max_examples=150)
@given(spec=specs(), seed=st.integers(0, 2**32 - 1))
def test_reference_matches_direct_loops(spec, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, spec.input_shape)
    w = rng.uniform(-1, 1, spec.weight_shape) if spec.is_conv else None
    b = rng.uniform(-1, 1, spec.out_channels) if spec.is_conv else None
    r = rng.uniform(-1, 1, spec.residual_shape) if spec.residual else None
    np.testing.assert_allclose(reference(spec, x, w, b, r), direct_loops(spec, x, w, b, r), rtol=1e-12, atol=1e-12)


def test_reflect_and_replicate_padding_values():
    # seed 000's 3x3 example 1..9, padded by 1, summed by a 3x3 box (weights 1)
    from convgen.spec import load_spec
    base = {"name": "p", "op": "conv2d", "in_channels": 1, "out_channels": 1, "input_size": [3, 3],
            "kernel_size": 3, "padding": 1, "bias": False}
    x = np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)
    w = np.ones((1, 1, 3, 3))
    # reflect: corner window is [[5,4,5],[2,1,2],[5,4,5]] -> 33
    y = reference(load_spec({**base, "padding_mode": "reflect"}), x, w)
    assert y[0, 0, 0, 0] == 33
    # replicate: corner window is [[1,1,2],[1,1,2],[4,4,5]] -> 21
    y = reference(load_spec({**base, "padding_mode": "replicate"}), x, w)
    assert y[0, 0, 0, 0] == 21
    # zeros: corner window is [[0,0,0],[0,1,2],[0,4,5]] -> 12
    y = reference(load_spec({**base, "padding_mode": "zeros"}), x, w)
    assert y[0, 0, 0, 0] == 12


def test_pooling_padding_semantics():
    from convgen.spec import load_spec
    x = -np.ones((1, 1, 2, 2))
    base = {"name": "p", "in_channels": 1, "input_size": [2, 2], "kernel_size": 2, "stride": 1, "padding": 1}
    # max pooling ignores padding (-inf): every window holds at least one -1
    assert np.all(reference(load_spec({**base, "op": "maxpool2d"}), x) == -1)
    # average pooling counts padded zeros: the corner window averages one -1 with three zeros
    y = reference(load_spec({**base, "op": "avgpool2d"}), x)
    assert y[0, 0, 0, 0] == -0.25 and y[0, 0, 1, 1] == -1


def test_pooling_options_as_pytorch_has_them():
    """count_include_pad false divides by the window's elements inside the input; ceil_mode
    adds a last window that hangs past the padding, counting only what it covers
    (values worked out by hand for a 5x5 ramp, 3x3 windows, stride 2, padding 1)."""
    from convgen.spec import load_spec
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    base = {"name": "p", "op": "avgpool2d", "in_channels": 1, "input_size": [5, 5], "kernel_size": 3,
            "stride": 2, "padding": 1}
    counted = reference(load_spec(base), x)
    left_out = reference(load_spec({**base, "count_include_pad": False}), x)
    # the corner window covers x[0:2, 0:2] = 0 + 1 + 5 + 6 = 12: over 9 with the padding, over 4 without
    assert counted[0, 0, 0, 0] == 12 / 9 and left_out[0, 0, 0, 0] == 12 / 4
    assert counted.shape == (1, 1, 3, 3)
    # 6x6 input, 2x2 windows, stride 2, ceil_mode: 3 outputs a side without padding; with padding 1,
    # (6 + 2 - 2 + 1) // 2 + 1 = 4, and the last window starts at 5, inside the input: kept
    ceil = load_spec({**base, "op": "maxpool2d", "input_size": [6, 6], "kernel_size": 2, "ceil_mode": True})
    assert ceil.output_size == (4, 4)
    x6 = np.arange(36, dtype=np.float64).reshape(1, 1, 6, 6)
    assert reference(ceil, x6)[0, 0, 3, 3] == 35   # its window holds x[5, 5] and padding
    # 5x5, 2x2 windows, stride 2, no padding: 3 outputs with ceil_mode; the last averages one column of 2
    tail = load_spec({**base, "kernel_size": 2, "padding": 0, "ceil_mode": True})
    assert tail.output_size == (3, 3) and reference(tail, x)[0, 0, 0, 2] == (4 + 9) / 2
