"""int8 layers (TensorFlow Lite's scheme): the spec fields, the integer
reference against float math on the dequantized values, the bit-exact check,
and the default schedules on both backends."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convgen
from conftest import spec_paths
from convgen import ir
from convgen.check import INT8_FILLS, compare_exact, random_inputs
from convgen.errors import SpecError
from convgen.reference import reference
from convgen.schedule.space import default_schedule
from convgen.spec import load_spec
from convgen.target import host
from strategies import quantized_specs

QUANT = {"input": {"scale": 0.05, "zero_point": -10}, "output": {"scale": 0.2, "zero_point": 3},
         "weight_scales": 0.01}
CONV = {"name": "q", "op": "conv2d", "in_channels": 2, "out_channels": 3, "input_size": [6, 6],
        "kernel_size": 3, "padding": 1, "dtype": "int8", "quantization": QUANT}


def _dequantized_float_layer(spec, inputs):
    """The same layer in float64 on the real values the int8 tensors stand for,
    quantized back with plain rounding: an independent formulation of TFLite's meaning."""
    q = spec.quantization
    real = {"x": q.input_scale * (inputs["x"].astype(np.float64) - q.input_zero_point)}
    if spec.is_conv:
        scales = np.array(q.weight_scales).reshape(-1, 1, 1, 1)
        real["w"] = scales * inputs["w"]
        if spec.bias:
            real["b"] = q.input_scale * scales.ravel() * inputs["b"]
    float_spec = replace(spec, dtype="float32", quantization=None)
    y = reference(float_spec, **real)
    quantized = np.round(y / q.output_scale) + q.output_zero_point
    return np.clip(quantized, *spec.activation_range())


@settings(max_examples=200)
@given(spec=quantized_specs(), seed=st.integers(0, 2**32 - 1))
def test_int8_reference_is_the_float_layer_on_dequantized_values_within_one_step(spec, seed):
    """The fixed-point multiplier (31 bits) and the rounding rules may move a
    result by at most one quantization step from the exactly-rounded float."""
    inputs = random_inputs(spec, np.random.default_rng(seed))
    got = reference(spec, **inputs).astype(np.int64)
    want = _dequantized_float_layer(spec, inputs)
    assert np.max(np.abs(got - want), initial=0) <= 1
    if spec.op == "maxpool2d":   # no rounding at all
        assert np.array_equal(got, want)


def test_activation_ranges_follow_tflite():
    # relu6 with scale 0.05, zero point -10: 6 / 0.05 = 120 steps above the zero point
    relu6 = load_spec(dict(CONV, activation="relu6", quantization=dict(
        QUANT, output={"scale": 0.05, "zero_point": -10})))
    assert relu6.activation_range() == (-10, 110)
    assert load_spec(dict(CONV, activation="relu")).activation_range() == (3, 127)
    assert load_spec(CONV).activation_range() == (-128, 127)


def test_per_channel_scales_give_per_channel_multipliers():
    spec = load_spec(dict(CONV, quantization=dict(QUANT, weight_scales=[0.01, 0.02, 0.04])))
    multipliers, shifts = spec.requantization()
    # real multipliers 0.05 * s / 0.2 = 0.0025, 0.005, 0.01: one mantissa, shifts one apart
    assert len(set(multipliers)) == 1 and list(np.diff(shifts)) == [1, 1]


@pytest.mark.parametrize("change, words", [
    ({"quantization": None}, "quantization: required for dtype int8"),
    ({"quantization": dict(QUANT, input={"scale": 0, "zero_point": 0})}, "quantization.input.scale: expected a positive number"),
    ({"quantization": dict(QUANT, output={"scale": 1, "zero_point": 200})}, "quantization.output.zero_point: expected an int in [-128, 127]"),
    ({"quantization": dict(QUANT, weight_scales=[0.1, 0.2])}, "expected 1 or 3 scales"),
    ({"quantization": {"input": QUANT["input"], "output": QUANT["output"]}}, "quantization.weight_scales: missing"),
    ({"weights": [[0, 1, 0], [1, -128, 1], [0, 1, 0]]}, "weights: expected whole numbers in [-127, 127]"),
    ({"bias": [1.5, 0, 0]}, "bias: expected whole numbers"),
    ({"pool": {"op": "maxpool2d", "kernel_size": 2}}, "pool: not supported with dtype int8 yet"),
    ({"dtype": "float32"}, "quantization: only for dtype int8"),
])
def test_bad_quantization_is_refused_naming_the_field(change, words):
    data = {k: v for k, v in dict(CONV, **change).items() if v is not None}
    with pytest.raises(SpecError) as caught:
        load_spec(data)
    assert words in str(caught.value)


def test_int8_pooling_keeps_the_input_quantization():
    pool = {"name": "p", "op": "avgpool2d", "in_channels": 2, "input_size": [4, 4], "kernel_size": 2,
            "dtype": "int8"}
    spec = load_spec(dict(pool, quantization={"input": QUANT["input"]}))
    assert (spec.quantization.output_scale, spec.quantization.output_zero_point) == (0.05, -10)
    with pytest.raises(SpecError, match="quantization.output: expected the input's scale"):
        load_spec(dict(pool, quantization={"input": QUANT["input"], "output": QUANT["output"]}))


def test_exact_comparison_catches_a_wrong_value_and_an_unwritten_one():
    spec = load_spec(CONV)
    kernel = convgen.build(spec, "c")
    inputs = random_inputs(spec, np.random.default_rng(0))
    expected = reference(spec, **inputs)
    runs = [kernel(**inputs, out=np.full(spec.output_shape, fill, dtype=np.int8)) for fill in INT8_FILLS]
    assert compare_exact(runs, expected).passed
    wrong = [r.copy() for r in runs]
    for r in wrong:
        r[0, 1, 2, 3] ^= 1
    assert not compare_exact(wrong, expected).passed
    unwritten = [r.copy() for r in runs]
    for r, fill in zip(unwritten, INT8_FILLS):
        r[0, 0, 0, 0] = fill   # as if the kernel had skipped it
    result = compare_exact(unwritten, expected)
    assert not result.passed and result.unwritten == 1


def test_int8_kernels_refuse_float_arrays():
    kernel = convgen.build(CONV, "llvm")
    inputs = random_inputs(kernel.spec, np.random.default_rng(0))
    with pytest.raises(convgen.errors.KernelCallError, match="x: expected dtype int8; got float32"):
        kernel(inputs["x"].astype(np.float32), inputs["w"], inputs["b"])


@pytest.mark.parametrize("path", [p for p in spec_paths() if load_spec(p).is_quantized], ids=lambda p: p.stem)
def test_default_schedules_of_int8_spec_files_match_bit_for_bit(backend, path):
    spec = load_spec(path)
    kernel = convgen.build(spec, backend, schedule=default_schedule(spec, host()))
    result = convgen.check(kernel, np.random.SeedSequence().entropy)
    assert result.passed, result


def test_int8_depthwise_default_schedule_is_vectorized():
    spec = load_spec(next(p for p in spec_paths() if p.stem == "ds_cnn_dw_int8"))
    kernel = convgen.build(spec, "llvm", schedule=default_schedule(spec, host()))
    assert "vectorized" in {loop.kind for loop in ir.find_all(kernel.func.body, ir.Loop)}
    assert "<" in kernel.source and "x i8>" in kernel.source   # int8 vector loads


def test_a_real_multiplier_above_one_takes_the_left_shift_path(backend):
    """input 0.05 * weight 0.0274 / output 0.001 = 1.37: shift +1, which random specs never reach."""
    data = {"name": "gain", "op": "conv2d", "in_channels": 1, "out_channels": 1, "input_size": [9, 9],
            "kernel_size": 1, "weights": [[1]], "bias": False, "dtype": "int8",
            "quantization": {"input": {"scale": 0.05, "zero_point": 0}, "output": {"scale": 0.001, "zero_point": 0},
                             "weight_scales": 0.0274}}
    spec = load_spec(data)
    assert spec.requantization()[1] == (1,)
    inputs = random_inputs(spec, np.random.default_rng(7))
    expected = reference(spec, **inputs)
    # x * 1.37 rounded, for the values that do not saturate and are no tie (x = +-50 gives 68.5)
    small = (np.abs(inputs["x"]) <= 90) & (np.abs(inputs["x"]) != 50)
    assert np.array_equal(expected[small], np.round(inputs["x"][small] * 1.37))
    result = convgen.check(convgen.build(spec, backend), 7)
    assert result.passed, result
