"""Winograd convolution: the transform matrices, the rewrite on both backends
against the float64 reference (random layers, output poisoned with NaN), its
error bound, weights transformed once when bound, and its refusals."""

import numpy as np
import pytest

import convgen
from convgen.check import check, compare, random_inputs, tolerance, weight_transform
from convgen.errors import ScheduleError
from convgen.reference import reference
from convgen.schedule import Schedule
from convgen.schedule.space import winograd_schedule
from convgen.driver import plan, run_prepare
from convgen.schedule.winograd import MATRICES
from convgen.target import host

LAYER = {"name": "wg", "op": "conv2d", "in_channels": 5, "out_channels": 6, "input_size": [9, 11],
         "kernel_size": 3, "padding": 1}


@pytest.mark.parametrize("tile", sorted(MATRICES))
def test_matrices_compute_a_correlation(tile):
    """1-D: A^T [(G g) * (B^T d)] is the correlation of d with g, for random d and g in float64."""
    m = {k: np.array(v, dtype=np.float64) for k, v in MATRICES[tile].items()}
    rng = np.random.default_rng(tile)
    for _ in range(20):
        d, g = rng.normal(size=tile + 2), rng.normal(size=3)
        expected = np.correlate(d, g, mode="valid")
        np.testing.assert_allclose(m["AT"] @ ((m["G"] @ g) * (m["BT"] @ d)), expected, rtol=1e-12, atol=1e-12)


def test_weight_transform_stage_is_g_g_gt():
    """The transform_w stage, in the prepare step, fills w_winograd[t, o, i] = (G g G^T)[t]."""
    spec = convgen.load_spec({**LAYER, "in_channels": 3, "out_channels": 2})
    program = plan(spec, schedule=Schedule.for_spec(spec).winograd(2).steps).program
    assert [f.name.rsplit("_", 2)[-2:] for f in program.prepare] == [["transform", "w"]]
    w = np.random.default_rng(0).normal(size=(2, 3, 3, 3)).astype(np.float32)
    u = run_prepare(program, {"w": w})["w_winograd"].reshape(16, 2, 3)
    g = np.array(MATRICES[2]["G"], dtype=np.float64)
    for o, i in [(0, 0), (1, 2)]:
        np.testing.assert_allclose(u[:, o, i].reshape(4, 4), g @ w[o, i].astype(np.float64) @ g.T, rtol=1e-6)


def _random_layer(rng):
    layer = {"name": "wg", "op": "conv2d", "in_channels": int(rng.integers(1, 20)),
             "out_channels": int(rng.integers(1, 12)), "input_size": [int(rng.integers(3, 16)), int(rng.integers(3, 16))],
             "kernel_size": 3, "padding": [int(p) for p in rng.integers(0, 3, 4)],
             "bias": bool(rng.integers(2)), "activation": str(rng.choice(["none", "relu", "relu6"])),
             "batch": int(rng.integers(1, 3)),
             "layout": {"input": str(rng.choice(["NCHW", "NHWC"])), "output": str(rng.choice(["NCHW", "NHWC"]))}}
    return convgen.load_spec(layer)


def _blocks(extent: int, rng) -> int:
    return int(rng.choice([d for d in range(1, extent + 1) if extent % d == 0]))


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("backend", ["llvm", "c"])
def test_random_layers_match_the_reference(seed, backend):
    rng = np.random.default_rng(seed)
    spec = _random_layer(rng)
    tile = int(rng.choice([2, 4]))
    tile_rows = -(-spec.output_size[0] // tile)
    schedule = Schedule.for_spec(spec).winograd(tile, rows=_blocks(tile_rows, rng),
                                                channels=_blocks(spec.out_channels, rng))
    result = check(convgen.build(spec, backend, schedule=schedule.steps), seed)
    assert result.unwritten == 0 and result.passed, (spec, tile, result)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("threads", [1, 2])
def test_default_winograd_schedule_matches_the_reference(tile, threads):
    spec = convgen.load_spec({**LAYER, "in_channels": 32, "out_channels": 64, "input_size": [14, 13],
                              "activation": "relu"})
    schedule = winograd_schedule(spec, host(), threads, tile)
    assert "vectorized" in {loop.kind for loop in convgen.ir.find_all(schedule.func.body, convgen.ir.Loop)}
    result = check(convgen.build(spec, "llvm", schedule=schedule.steps, threads=threads), tile)
    assert result.passed, result


@pytest.mark.parametrize("backend", ["llvm", "c"])
def test_bound_weights_are_transformed_once(backend):
    spec = convgen.load_spec(LAYER)
    kernel = convgen.build(spec, backend, schedule=Schedule.for_spec(spec).winograd(4).steps)
    runs = []
    stage = kernel._prepare[0]
    kernel._prepare = (type("Counted", (), {"launch": lambda self, *a: (runs.append(1), stage.launch(*a))})(),)
    inputs = random_inputs(spec, np.random.default_rng(1))
    bound = kernel.bind(inputs["w"], inputs["b"])
    expected = reference(spec, **inputs)
    allowed = tolerance(spec, inputs, weight_transform(kernel.func))
    for _ in range(3):
        out = np.full(spec.output_shape, np.nan, dtype=np.float32)
        result = compare(bound(inputs["x"], out=out), expected, allowed)
        assert result.passed, result
    assert len(runs) == 1   # the transform ran when bound, not per call


def test_the_winograd_bound_rejects_a_wrong_result():
    """The bound is tight enough to fail: one output off by a thousandth of the output's scale."""
    spec = convgen.load_spec({**LAYER, "in_channels": 16})
    kernel = convgen.build(spec, "llvm", schedule=Schedule.for_spec(spec).winograd(4).steps)
    inputs = random_inputs(spec, np.random.default_rng(2))
    expected = reference(spec, **inputs)
    allowed = tolerance(spec, inputs, weight_transform(kernel.func))
    y = kernel(**inputs)
    assert compare(y, expected, allowed).passed
    y[0, 3, 4, 5] += 1e-3 * np.abs(expected).max()
    assert not compare(y, expected, allowed).passed


@pytest.mark.parametrize("change, words", [
    ({"stride": 2}, "stride 1"),
    ({"dilation": 2}, "dilation 1"),
    ({"groups": 5, "out_channels": 5}, "one group"),
    ({"kernel_size": 5}, "needs 3x3"),
    ({"padding_mode": "reflect"}, "zero padding"),
    ({"pool": {"op": "maxpool2d", "kernel_size": 2}}, "fused pool"),
])
def test_refuses_what_it_cannot_compute(change, words):
    spec = convgen.load_spec({**LAYER, **change})
    with pytest.raises(ScheduleError, match=words):
        Schedule.for_spec(spec).winograd(4)


@pytest.mark.parametrize("arguments, words", [
    ({"tile": 3}, "tile: expected one of 2, 4"),
    ({"tile": 4, "rows": 2}, "rows: expected a number of tile rows dividing 3"),
    ({"tile": 2, "channels": 4}, "channels: expected a number of output channels dividing 6"),
])
def test_refuses_bad_arguments(arguments, words):
    spec = convgen.load_spec(LAYER)
    with pytest.raises(ScheduleError, match=words):
        Schedule.for_spec(spec).winograd(**arguments)


def test_is_the_first_step_only():
    spec = convgen.load_spec(LAYER)
    with pytest.raises(ScheduleError, match="first step"):
        Schedule.for_spec(spec).split("ow", 4).winograd(4)
    with pytest.raises(ScheduleError, match="scheduled already"):
        Schedule.for_spec(spec).winograd(4).winograd(2)


def test_int8_layers_are_refused():
    spec = convgen.load_spec({**LAYER, "dtype": "int8", "quantization": {
        "input": {"scale": 0.1, "zero_point": 0}, "output": {"scale": 0.1, "zero_point": 0}, "weight_scales": 0.01}})
    with pytest.raises(ScheduleError, match="float32"):
        Schedule.for_spec(spec).winograd(4)
