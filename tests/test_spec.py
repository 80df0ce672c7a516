"""Spec loading: derived facts, defaults, and one test per validation rule."""

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convgen.errors import SpecError
from convgen.spec import FIELDS, load_spec, same_padding

BASE = {"name": "layer", "op": "conv2d", "in_channels": 3, "out_channels": 64, "input_size": [32, 32],
        "kernel_size": 3}


@pytest.mark.parametrize("size, kernel, padding, stride, expected", [
    (5, 3, 0, 1, 3), (5, 3, 1, 1, 5), (6, 3, 0, 1, 4), (224, 7, 3, 2, 112), (32, 3, 1, 2, 16), (8, 3, 0, 2, 3),
])
def test_output_size_table(size, kernel, padding, stride, expected):
    spec = load_spec({**BASE, "input_size": [size, size], "kernel_size": kernel, "padding": padding,
                      "stride": stride})
    assert spec.output_size == (expected, expected)


@pytest.mark.parametrize("layer, expected", [
    ({"in_channels": 3, "out_channels": 64, "kernel_size": 3}, 1792),              # 3*64*9 + 64
    ({"in_channels": 64, "out_channels": 64, "kernel_size": 3, "groups": 64, "bias": False}, 576),
    ({"in_channels": 64, "out_channels": 64, "kernel_size": 3, "bias": False}, 36864),
    ({"in_channels": 64, "out_channels": 128, "kernel_size": 3, "groups": 4}, 18560),  # 128*16*9 + 128
])
def test_parameter_counts(layer, expected):
    assert load_spec({**BASE, **layer}).param_count == expected


def test_resnet_conv1_shape_and_macs():
    spec = load_spec({**BASE, "input_size": [224, 224], "kernel_size": 7, "stride": 2, "padding": 3})
    assert spec.output_shape == (1, 64, 112, 112)
    assert spec.macs == 64 * 112 * 112 * 3 * 7 * 7


@pytest.mark.parametrize("size, kernel, stride, dilation, expected", [
    (5, 3, 1, 1, (1, 1)), (6, 3, 2, 1, (0, 1)), (7, 3, 2, 1, (1, 1)), (5, 3, 1, 2, (2, 2)), (4, 2, 1, 1, (0, 1)),
])
def test_same_padding_puts_the_odd_pad_last(size, kernel, stride, dilation, expected):
    assert same_padding(size, kernel, stride, dilation) == expected
    spec = load_spec({**BASE, "input_size": [size, size], "kernel_size": kernel, "stride": stride,
                      "dilation": dilation, "padding": "same"})
    assert spec.output_size == (-(-size // stride),) * 2


def test_defaults():
    spec = load_spec(BASE)
    assert (spec.batch, spec.stride, spec.padding, spec.dilation, spec.groups) == (1, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    assert (spec.bias, spec.activation, spec.input_layout, spec.output_layout) == (True, "none", "NCHW", "NCHW")
    pool = load_spec({"name": "p", "op": "maxpool2d", "in_channels": 4, "input_size": [8, 8], "kernel_size": 2})
    assert pool.stride == (2, 2) and pool.out_channels == 4 and pool.param_count == 0


@pytest.mark.parametrize("size, kernel, stride, padding, expected", [
    (7, 3, 2, 1, 4), (7, 3, 2, 0, 3), (6, 2, 2, 1, 4), (5, 2, 2, 0, 3), (6, 2, 2, 0, 3), (8, 3, 3, 1, 3),
])
def test_ceil_mode_output_size_is_pytorchs(size, kernel, stride, padding, expected):
    """Expected: what torch.nn.MaxPool2d(kernel, stride, padding, ceil_mode=True) gave (torch 2.13.0):
    ceil((size + 2p - k) / s) + 1, less one where the last window would start past the input and its
    top/left padding (8, 3, 3, 1: ceil(7/3) + 1 = 4, but the fourth would start at 9 >= 8 + 1)."""
    spec = load_spec({"name": "p", "op": "maxpool2d", "in_channels": 1, "input_size": [size, size],
                      "kernel_size": kernel, "stride": stride, "padding": padding, "ceil_mode": True})
    assert spec.output_size == (expected, expected)


def test_fused_pool_shapes():
    spec = load_spec({**BASE, "padding": 1, "pool": {"op": "maxpool2d", "kernel_size": 2}})
    assert spec.conv_output_size == (32, 32) and spec.output_shape == (1, 64, 16, 16)
    assert spec.pool.stride == (2, 2) and spec.macs == 64 * 32 * 32 * 3 * 9  # the pool adds no MACs
    spec = load_spec({**BASE, "pool": {"op": "avgpool2d", "kernel_size": 3, "stride": 2, "padding": 1}})
    assert spec.output_size == (15, 15)  # conv 30x30 -> floor((30 + 2 - 3) / 2) + 1


def test_padding_forms():
    assert load_spec({**BASE, "padding": [1, 2]}).padding == (1, 1, 2, 2)
    assert load_spec({**BASE, "padding": [0, 1, 2, 3]}).padding == (0, 1, 2, 3)
    assert load_spec({**BASE, "padding": "valid"}).padding == (0, 0, 0, 0)


def test_named_and_inline_weights():
    spec = load_spec({**BASE, "in_channels": 2, "out_channels": 2, "weights": "sobel_y", "kernel_size": 3})
    w = spec.weight_array()
    assert w.shape == (2, 2, 3, 3) and w[1, 0].tolist() == [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]
    spec = load_spec({**{k: v for k, v in BASE.items() if k != "kernel_size"}, "in_channels": 1,
                      "out_channels": 1, "weights": [[1, 2], [3, 4]], "bias": [0.5]})
    assert spec.kernel_size == (2, 2) and spec.weight_array().ravel().tolist() == [1, 2, 3, 4]
    assert spec.bias_array().tolist() == [0.5]


# Each case: the spec text, the field the message must name, and words it must contain.
BAD_SPECS = {
    "missing_field": ("op: conv2d\nin_channels: 1\nout_channels: 1\ninput_size: [5, 5]\nkernel_size: 3\n",
                      "name", "missing"),
    "missing_out_channels": ("name: a\nop: conv2d\nin_channels: 1\ninput_size: [5, 5]\nkernel_size: 3\n",
                             "out_channels", "missing"),
    "unknown_field": (BASE, "paddng", "did you mean 'padding'", {"paddng": 1}),
    "zero_channels": (BASE, "in_channels", "expected a positive int; got 0", {"in_channels": 0}),
    "negative_kernel": (BASE, "kernel_size", "got -1", {"kernel_size": -1}),
    "zero_input": (BASE, "input_size", "got [0, 5]", {"input_size": [0, 5]}),
    "zero_stride": (BASE, "stride", "positive", {"stride": [1, 0]}),
    "zero_dilation": (BASE, "dilation", "positive", {"dilation": 0}),
    "zero_batch": (BASE, "batch", "positive", {"batch": 0}),
    "bool_as_int": (BASE, "in_channels", "got True", {"in_channels": True}),
    "negative_padding": (BASE, "padding", "non-negative", {"padding": -1}),
    "groups_not_dividing": (BASE, "groups", "divisor of in_channels (3) and out_channels (64); got 2",
                            {"groups": 2}),
    "output_below_one": (BASE, "input_size", "at least 1x1; [2, 2] with kernel [5, 5]", {"input_size": [2, 2], "kernel_size": 5}),
    "reflect_too_wide": (BASE, "padding", "reflect padding smaller than the input (3x3) on every side; got 3 on the top",
                         {"input_size": [3, 3], "padding": 3, "padding_mode": "reflect"}),
    "layout_unknown": (BASE, "layout.input", "did you mean 'NCHW'", {"layout": {"input": "NCWH"}}),
    "layout_lowercase": (BASE, "layout.output", "did you mean 'NHWC'", {"layout": {"output": "nhwc"}}),
    "layout_unknown_key": (BASE, "layout.inptu", "did you mean 'input'", {"layout": {"inptu": "NCHW"}}),
    "padding_typo": (BASE, "padding", "expected an int, [h, w], [top, bottom, left, right], 'same' or 'valid'; "
                                      "got 'sme'; did you mean 'same'?", {"padding": "sme"}),
    "padding_mode_typo": (BASE, "padding_mode", "did you mean 'reflect'", {"padding_mode": "reflection"}),
    "op_typo": (BASE, "op", "did you mean 'conv2d'", {"op": "conv2"}),
    "activation_typo": (BASE, "activation", "did you mean 'relu'", {"activation": "Relu"}),
    "dtype": (BASE, "dtype", "expected one of 'float32', 'int8'; got 'float16'", {"dtype": "float16"}),
    "name_not_identifier": (BASE, "name", "C identifier", {"name": "3x3-conv"}),
    "name_keyword": (BASE, "name", "not a keyword", {"name": "int"}),
    "filter_typo": (BASE, "weights", "did you mean 'sobel_x'", {"weights": "sobelx"}),
    "weights_shape": (BASE, "weights", "expected shape [64, 3, 3, 3] (OIHW); got [2, 3, 3, 3]", {"weights": [[[[1, 2, 3]] * 3] * 3] * 2}),
    "weights_kernel_mismatch": (BASE, "weights", "expected a 3x3 kernel", {"weights": [[1, 0], [0, 1]]}),
    "huge_input": (BASE, "input_size", "expected at most 2,147,483,647 elements per tensor; the input would have",
                   {"input_size": [100000, 100000]}),
    "bias_wrong": (BASE, "bias", "true, false or a list", {"bias": "yes"}),
    "pool_with_out_channels": ({"name": "p", "op": "maxpool2d", "in_channels": 4, "input_size": [8, 8],
                                "kernel_size": 2}, "out_channels", "not a field of maxpool2d",
                               {"out_channels": 8}),
    "avgpool_dilation": ({"name": "p", "op": "avgpool2d", "in_channels": 4, "input_size": [8, 8],
                          "kernel_size": 2}, "dilation", "expected 1 for avgpool2d", {"dilation": 2}),
    "pool_padding_too_wide": ({"name": "p", "op": "maxpool2d", "in_channels": 4, "input_size": [8, 8],
                               "kernel_size": 2}, "padding", "at most half", {"padding": 2}),
    "maxpool_window_in_padding": ({"name": "p", "op": "maxpool2d", "in_channels": 1, "input_size": [1, 1],
                                   "kernel_size": 2, "stride": 1}, "dilation", "sees only padding",
                                  {"padding": 1, "dilation": [1, 2]}),
    "pool_unknown_field": (BASE, "pool.paddin", "did you mean 'padding'", {"pool": {"op": "maxpool2d",
                                                                                  "kernel_size": 2, "paddin": 1}}),
    "pool_op_typo": (BASE, "pool.op", "did you mean 'maxpool2d'", {"pool": {"op": "maxpool", "kernel_size": 2}}),
    "pool_too_wide": (BASE, "pool", "pooled by [40, 40] gives [0, 0]", {"pool": {"op": "avgpool2d",
                                                                                   "kernel_size": 40}}),
    "pool_on_pooling": ({"name": "p", "op": "maxpool2d", "in_channels": 4, "input_size": [8, 8], "kernel_size": 2},
                        "pool", "not a field of maxpool2d", {"pool": {"op": "maxpool2d", "kernel_size": 2}}),
    "ceil_mode_not_bool": ({"name": "p", "op": "maxpool2d", "in_channels": 4, "input_size": [8, 8], "kernel_size": 2},
                           "ceil_mode", "expected true or false; got 'yes'", {"ceil_mode": "yes"}),
    "count_include_pad_on_maxpool": ({"name": "p", "op": "maxpool2d", "in_channels": 4, "input_size": [8, 8],
                                      "kernel_size": 2}, "count_include_pad", "not a field of maxpool2d",
                                     {"count_include_pad": False}),
    "count_include_pad_with_reflect": ({"name": "p", "op": "avgpool2d", "in_channels": 4, "input_size": [8, 8],
                                        "kernel_size": 3, "padding": 1}, "count_include_pad",
                                       "expected padding_mode zeros", {"padding_mode": "reflect",
                                                                       "count_include_pad": False}),
    "ceil_mode_on_conv": (BASE, "ceil_mode", "not a field of conv2d", {"ceil_mode": True}),
    "pool_ceil_mode_not_bool": (BASE, "pool.ceil_mode", "expected true or false",
                                {"pool": {"op": "avgpool2d", "kernel_size": 2, "ceil_mode": 1}}),
    "not_yaml": ("name: [unclosed\n", None, "not valid YAML"),
    "not_mapping": ("- name\n- op\n", None, "expected a mapping"),
    "empty_file": ("", None, "got an empty file"),
}


def _write_case(tmp_path, case):
    import yaml
    base, field, words, *override = BAD_SPECS[case]
    text = base if isinstance(base, str) else yaml.safe_dump({**base, **override[0]})
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    return path, field, words


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_refused_with_one_line(tmp_path, case):
    path, field, words = _write_case(tmp_path, case)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert len(caught.value.problems) == 1, message
    assert "\n" not in message
    assert message.startswith(f"{path}: " + (f"{field}: " if field else "")), message
    assert words in message


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_cli_refuses_bad_spec_without_traceback(tmp_path, case):
    path, field, words = _write_case(tmp_path, case)
    result = subprocess.run([sys.executable, "-m", "convgen.cli", "info", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert words in result.stderr and str(path) in result.stderr


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")


def test_every_problem_in_a_file_is_reported():
    with pytest.raises(SpecError) as caught:
        load_spec({**BASE, "stride": 0, "activation": "gelu", "paddng": 1})
    fields = sorted(line.split(": ")[1] for line in caught.value.problems)
    assert fields == ["activation", "paddng", "stride"]


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=True) |
    st.sampled_from(["conv2d", "maxpool2d", "same", "valid", "NHWC", "reflect", "relu", "sobel_x", "x"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["input", "output", "z"]), inner),
    max_leaves=8,
)


@settings(max_examples=300)
@given(data=st.dictionaries(st.sampled_from(FIELDS + ("extra",)), _values, min_size=1))
def test_loader_accepts_or_refuses_cleanly(data):
    """Arbitrary field values either load or raise SpecError naming a field; nothing else escapes."""
    try:
        load_spec(data)
    except SpecError as err:
        assert err.problems and all(line.startswith("<dict>: ") for line in err.problems)


def _taps_inside_by_brute_force(spec) -> int:
    """Every (output, tap) pair whose input row and column lie inside the input, counted one by one."""
    (h, w), (oh, ow) = spec.input_size, spec.conv_output_size
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    top, left = spec.padding[0], spec.padding[2]
    inside = sum(1 for r in range(oh) for c in range(ow) for i in range(kh) for j in range(kw)
                 if 0 <= r * sh + i * dh - top < h and 0 <= c * sw + j * dw - left < w)
    per_tap = spec.in_channels // spec.groups if spec.is_conv else 1
    return spec.batch * spec.out_channels * inside * per_tap


@pytest.mark.parametrize("layer", [
    dict(op="conv2d", in_channels=4, out_channels=6, input_size=[5, 7], kernel_size=3, padding=1),
    dict(op="conv2d", in_channels=4, out_channels=8, input_size=[9, 6], kernel_size=[5, 3], stride=2,
         padding=[2, 1, 0, 1], dilation=[1, 2], groups=2, batch=2),
    dict(op="maxpool2d", in_channels=3, input_size=[7, 7], kernel_size=3, stride=2, padding=1),
])
def test_executed_macs_skip_the_taps_in_zero_padding(layer):
    spec = load_spec({"name": "t", **layer})
    assert spec.executed_macs == _taps_inside_by_brute_force(spec) < spec.macs


@pytest.mark.parametrize("change", [{"padding": 0}, {"padding": 1, "padding_mode": "reflect"}])
def test_executed_macs_are_all_macs_where_no_tap_is_skipped(change):
    spec = load_spec({"name": "t", "op": "conv2d", "in_channels": 2, "out_channels": 3, "input_size": [6, 6],
                      "kernel_size": 3, **change})
    assert spec.executed_macs == spec.macs
