"""Networks built as one program (convgen/compose.py, fold.py, memplan.py):
folding and fusion keep the network's meaning, the memory plan never lets
two buffers live at once share bytes, and the built network matches the
float64 network reference on fresh random inputs, its output poisoned and
its arena starting as NaN."""

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import convgen
from convgen.check import check_network, network_tolerance
from convgen.driver import build_network, plan_network
from convgen.errors import ConvgenError
from convgen.fold import fuse
from convgen.memplan import Live, peak_bytes, plan_memory, round_up
from convgen.network import load_network
from convgen.reference import network_reference
from c_harness import SANITIZE_FLAGS, build_program, run_program
from test_backends import needs_gcc
from test_network import BLOCK, _weights

NETWORKS = sorted((Path(__file__).parent.parent / "specs" / "networks").glob("*.yaml"))


def _random_weights(network, rng):
    weights = {}
    for layer in network.layers:
        for key, shape in layer.weight_shapes(network.shape).items():
            low = 0.5 if key.endswith(("running_var", ".weight")) and layer.op == "batchnorm" else -1.0
            weights[key] = rng.uniform(low, 1.5 if low > 0 else 1.0, shape).astype(np.float32)
    return weights


def _assert_matches(kernel, network, weights, seed):
    """The kernel on a fresh input, its output NaN first, against the reference:
    within the rounding bound, and within 1e-5 of the output's scale (the bound
    grows with depth; a wrong layer would not stay this close)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, network.shape[network.input]).astype(np.float32)
    out = np.full(network.shape[network.output], np.nan, np.float32)
    actual = kernel(x, out=out)
    expected = network_reference(network, x, weights)[network.output]
    assert actual is out and not np.isnan(actual).any()
    error = np.abs(actual - expected)
    assert np.all(error <= network_tolerance(network, x, weights))
    assert error.max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("backend", ["llvm", "c"])
@pytest.mark.parametrize("path", NETWORKS, ids=lambda p: p.stem)
def test_example_networks_match_the_reference(path, backend):
    network = load_network(path)
    kernel = convgen.build(path, backend)
    if not network.is_quantized:
        weights = network.load_weights()
        for seed in (0, 1):   # a second call on the same arena
            _assert_matches(kernel, network, weights, seed)
    for seed in (2, 3):       # int8: bit for bit
        result = check_network(kernel, seed)
        assert result.passed, result


@pytest.mark.parametrize("backend", ["llvm", "c"])
def test_a_network_of_every_op_matches_the_reference(backend):
    """Unfused adds, concat, relu6, pools, global pooling and linear, batch 2."""
    network = load_network(BLOCK)
    weights = {k: v.astype(np.float32) for k, v in _weights(np.random.default_rng(0)).items()}
    kernel = build_network(network, backend, weights=weights)
    ops = [step.layer.op for step in kernel.plan.layers]
    assert "concat" in ops and "relu6" in ops and "add" in ops
    _assert_matches(kernel, network, weights, 3)


def _chain(layers, shape=(1, 8, 6, 6), output="y"):
    return load_network({"name": "net", "input": {"name": "x", "shape": list(shape)}, "layers": layers,
                         "output": output})


def test_linear_reads_a_feature_map_flattened():
    network = _chain([
        {"name": "conv", "op": "conv2d", "input": "x", "output": "c", "out_channels": 4, "kernel_size": 3},
        {"name": "fc", "op": "linear", "input": "c", "output": "y", "out_features": 7}])
    weights = _random_weights(network, np.random.default_rng(1))
    kernel = build_network(network, "llvm", weights=weights)
    assert any("_as_fc_x" in p.name for p in kernel.plan.memory.placements)
    assert kernel.output_shape == (1, 7)
    _assert_matches(kernel, network, weights, 4)


def test_linear_on_the_network_input_is_refused():
    network = _chain([{"name": "fc", "op": "linear", "input": "x", "output": "y", "out_features": 3}])
    with pytest.raises(ConvgenError, match="fc: input: linear reads x flattened"):
        build_network(network, "llvm", weights=_random_weights(network, np.random.default_rng(0)))


def test_folding_and_fusion_keep_the_network_meaning():
    network = load_network(BLOCK)
    weights = _weights(np.random.default_rng(2))
    fused, fused_weights, said = fuse(network, weights)
    assert len(fused.layers) < len(network.layers) and said
    x = np.random.default_rng(3).uniform(-1, 1, network.shape["x"])
    expected = network_reference(network, x, weights)["y"]
    # the linear layer is a 1x1 convolution now: N x F x 1 x 1
    np.testing.assert_allclose(network_reference(fused, x, fused_weights)["y"].reshape(expected.shape), expected,
                               rtol=1e-9, atol=1e-9)


def test_a_conv_and_what_follows_it_become_one_layer():
    """ResNet's tail: conv, batch norm, the skip added, ReLU, a max pool: one
    convolution with a residual, an activation and a fused pool."""
    network = _chain([
        {"name": "conv", "op": "conv2d", "input": "x", "output": "c", "out_channels": 8, "kernel_size": 3,
         "padding": 1, "bias": False},
        {"name": "bn", "op": "batchnorm", "input": "c", "output": "b"},
        {"name": "add", "op": "add", "inputs": ["x", "b"], "output": "s"},
        {"name": "relu", "op": "relu", "input": "s", "output": "r"},
        {"name": "pool", "op": "maxpool2d", "input": "r", "output": "y", "kernel_size": 2}])
    weights = _random_weights(network, np.random.default_rng(5))
    kernel = build_network(network, "c", weights=weights)
    (step,) = kernel.plan.layers
    spec = step.plan.spec
    assert spec.residual and spec.activation == "relu" and spec.pool.op == "maxpool2d" and spec.bias
    assert step.layer.inputs == ("x", "x")
    _assert_matches(kernel, network, weights, 6)


def test_a_conv_whose_output_is_read_twice_keeps_its_relu_apart_and_in_place():
    network = _chain([
        {"name": "conv", "op": "conv2d", "input": "x", "output": "c", "out_channels": 8, "kernel_size": 1},
        {"name": "relu", "op": "relu", "input": "c", "output": "r"},
        {"name": "add", "op": "add", "inputs": ["r", "c"], "output": "s"},
        {"name": "out", "op": "conv2d", "input": "s", "output": "y", "out_channels": 2, "kernel_size": 1}])
    weights = _random_weights(network, np.random.default_rng(6))
    kernel = build_network(network, "llvm", weights=weights)
    assert [s.layer.op for s in kernel.plan.layers] == ["conv2d", "relu", "add", "conv2d"]
    offsets = kernel.plan.memory.offset
    assert "t_s" not in offsets and offsets["t_r"] != offsets["t_c"]   # the add writes in place of r
    _assert_matches(kernel, network, weights, 7)


def _assert_no_overlap(memory):
    for a in memory.placements:
        for b in memory.placements:
            if a.name < b.name and a.first <= b.last and b.first <= a.last and a.offset != b.offset:
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset, (a, b)


@pytest.mark.parametrize("path", NETWORKS, ids=lambda p: p.stem)
def test_example_arenas_are_within_the_lower_bound(path):
    memory = plan_network(load_network(path)).memory
    _assert_no_overlap(memory)
    assert memory.arena_bytes <= memory.lower_bound + 64 and memory.arena_bytes <= memory.naive_bytes


def test_mobilenetv2_block_goes_below_the_lower_bound_in_place():
    """Its depthwise layer copies its input to a blocked layout before writing
    its output, so the output takes the input's place."""
    plan = plan_network(load_network(Path(__file__).parent.parent / "specs/networks/mobilenetv2_block.yaml"))
    offsets = plan.memory.offset
    assert "t_dr" not in offsets and "t_er" in offsets
    assert plan.memory.arena_bytes < plan.memory.lower_bound


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 9), st.integers(0, 4)), min_size=1, max_size=14))
def test_memory_plans_never_overlap_live_buffers(items):
    lives = [Live(f"b{k}", size, first, first + length) for k, (size, first, length) in enumerate(items)]
    memory = plan_memory(lives)
    _assert_no_overlap(memory)
    assert peak_bytes(lives) <= memory.arena_bytes <= sum(round_up(b.size) for b in lives)
    assert all(p.offset % 64 == 0 for p in memory.placements)


def test_memory_plan_groups_share_an_offset():
    memory = plan_memory([Live("a", 100, 0, 1), Live("a_view", 100, 0, 1), Live("b", 50, 1, 2)], [["a", "a_view"]])
    assert memory.offset["a"] == memory.offset["a_view"] != memory.offset["b"]


@needs_gcc
def test_a_network_as_one_c_function_with_baked_weights_under_sanitizers(tmp_path):
    """The firmware form: net(x, y, workspace), weights const in the .c, the
    workspace all-ones bytes at the start, built with ASan and UBSan."""
    from convgen.codegen.c import Baking
    from convgen.driver import emit
    path = next(p for p in NETWORKS if p.stem == "small_classifier")
    network = load_network(path)
    chosen = plan_network(network)
    files = emit(chosen, "c", Baking(chosen.weights))
    assert files.arguments == ("x", "y")
    assert f"#define SMALL_CLASSIFIER_ARENA_BYTES {chosen.memory.arena_bytes}" in files.header
    assert files.workspace_bytes == chosen.memory.arena_bytes
    sizes = [("x", 4 * int(np.prod(network.shape["x"]))), ("y", 4 * 10), ("workspace", files.workspace_bytes)]
    program = build_program(files, sizes, tmp_path, SANITIZE_FLAGS, output="y")
    rng = np.random.default_rng(8)
    x = rng.uniform(-1, 1, network.shape["x"]).astype(np.float32)
    out = np.full((1, 10), np.nan, np.float32)
    actual = run_program(program, {"x": x, "y": out, "workspace": np.full(files.workspace_bytes, 0xFF, np.uint8)},
                         out)
    weights = network.load_weights()
    expected = network_reference(network, x, weights)["y"]
    assert np.all(np.abs(actual - expected) <= network_tolerance(network, x, weights))


INT8_NET = {
    "name": "q", "input": {"name": "x", "shape": [2, 8, 10, 10], "dtype": "int8",
                           "quantization": {"scale": 0.05, "zero_point": 3}},
    "layers": [
        {"name": "c1", "op": "conv2d", "input": "x", "output": "a", "out_channels": 8, "kernel_size": 3, "padding": 1,
         "quantization": {"output": {"scale": 0.1, "zero_point": -5}, "weight_scales": 0.01}},
        {"name": "r1", "op": "relu", "input": "a", "output": "ar"},
        {"name": "dw", "op": "conv2d", "input": "ar", "output": "d", "out_channels": 8, "groups": 8, "kernel_size": 3,
         "padding": 1, "quantization": {"output": {"scale": 0.08, "zero_point": 2},
                                        "weight_scales": [0.02, 0.03, 0.01, 0.02, 0.04, 0.02, 0.01, 0.02]}},
        {"name": "add", "op": "add", "inputs": ["d", "ar"], "output": "s",
         "quantization": {"output": {"scale": 0.15, "zero_point": -1}}},
        {"name": "r6", "op": "relu6", "input": "s", "output": "s6"},
        {"name": "pool", "op": "avgpool2d", "input": "s6", "output": "p", "kernel_size": 2},
        {"name": "mp", "op": "maxpool2d", "input": "s6", "output": "m", "kernel_size": 2},
        {"name": "cat", "op": "concat", "inputs": ["p", "m"], "output": "k"},
        {"name": "gap", "op": "global_avgpool", "input": "k", "output": "g"},
        {"name": "fc", "op": "linear", "input": "g", "output": "y", "out_features": 5,
         "quantization": {"output": {"scale": 0.2, "zero_point": 0}, "weight_scales": 0.01}},
    ], "output": "y"}


def _int8_weights(network, rng):
    weights = {}
    for layer in network.layers:
        for key, shape in layer.weight_shapes(network.shape).items():
            weights[key] = rng.integers(-3000, 3000, shape).astype(np.int32) if key.endswith(".bias") else \
                rng.integers(-127, 128, shape).astype(np.int8)
    return weights


@pytest.mark.parametrize("backend", ["llvm", "c"])
def test_an_int8_network_of_every_op_matches_bit_for_bit(backend):
    """TFLite's scheme: convolutions with fused clamps, ADD's requantization,
    relu6 at its input's scale, both pools, concat, global pooling, linear."""
    network = load_network(INT8_NET)
    kernel = build_network(network, backend, weights=_int8_weights(network, np.random.default_rng(0)))
    assert [s.layer.op for s in kernel.plan.layers][:3] == ["conv2d", "conv2d", "add"]   # relu fused into c1
    for seed in (1, 2):
        result = check_network(kernel, seed)
        assert result.passed and result.unwritten == 0, result


@pytest.mark.parametrize("change, message", [
    (lambda n: n["layers"][3].pop("quantization"), "layers[3] (add): quantization.output: expected {scale"),
    (lambda n: n["layers"][0]["quantization"].update(input={"scale": 1.0, "zero_point": 0}),
     "layers[0] (c1): quantization.input: the input tensor decides it"),
    (lambda n: n["input"].pop("quantization"), "input.quantization: required for dtype int8"),
    (lambda n: n["layers"].insert(1, {"name": "bn", "op": "batchnorm", "input": "a", "output": "b"}),
     "batchnorm in an int8 network"),
])
def test_int8_network_specs_are_validated(change, message):
    import copy
    data = copy.deepcopy(INT8_NET)
    change(data)
    with pytest.raises(convgen.SpecError, match=re.escape(message)):
        load_network(data)
