"""ONNX import (convgen/import_onnx.py): models become network specs that
build and match both the float64 reference and ONNX Runtime on the same
model; hand-made graphs cover each op's attributes (ONNX's pad order,
auto_pad, count_include_pad, ceil_mode, Clip, MatMul + Add); unsupported
ops are refused, listed with their nodes."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package reads models (the test extra installs it)")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime gives the results to match (the test extra has it)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import convgen  # noqa: E402
from convgen.check import network_tolerance  # noqa: E402
from convgen.import_onnx import UnsupportedModel, import_onnx, write_network  # noqa: E402
from convgen.network import load_network  # noqa: E402
from convgen.reference import network_reference  # noqa: E402

ROOT = Path(__file__).parent.parent
MODELS = sorted(p for p in (ROOT / "specs" / "networks").glob("*.onnx") if not p.stem.endswith("_qdq"))


def _ort(model_path, x):
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _imported(model_path, folder):
    spec, weights = import_onnx(model_path)
    spec_path, _ = write_network(spec, weights, folder)
    return load_network(spec_path), spec_path


def _assert_matches_both(model_path, folder, backends=("llvm", "c"), seed=0):
    network, spec_path = _imported(model_path, folder)
    weights = network.load_weights()
    x = np.random.default_rng(seed).uniform(-1, 1, network.shape[network.input]).astype(np.float32)
    expected = network_reference(network, x, weights)[network.output]
    bound = network_tolerance(network, x, weights)
    theirs = _ort(model_path, x).reshape(expected.shape)
    for backend in backends:
        kernel = convgen.build(spec_path, backend)
        ours = kernel(x, out=np.full(kernel.output_shape, np.nan, np.float32))
        assert np.all(np.abs(ours - expected) <= bound), backend
        # both are float32 computations of the same network: each within the bound of the exact result
        assert np.all(np.abs(ours - theirs) <= 2 * bound), backend
        assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(expected).max() + 1e-7
    return network


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.stem)
def test_example_models_import_and_match_onnx_runtime(model, tmp_path):
    """LLVM alone: the imports are the example networks, which test_compose builds with both backends."""
    network = _assert_matches_both(model, tmp_path, backends=("llvm",))
    written = load_network(ROOT / "specs" / "networks" / f"{model.stem}.yaml")
    assert network.shape[network.output] == written.shape[written.output]


def _model(nodes, x_shape, y_name="y", initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v, dtype=np.float32), name)
                               for name, v in initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _save(model, folder, name="m"):
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _rand(rng, *shape):
    return rng.uniform(-1, 1, shape).astype(np.float32)


@pytest.mark.parametrize("conv_attrs", [
    {"pads": [1, 0, 2, 1]},                                     # top 1, left 0, bottom 2, right 1
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
    {"auto_pad": "VALID", "dilations": [2, 1]},
    {"pads": [1, 1, 1, 1], "group": 2},
], ids=["pads", "same_upper", "same_lower", "valid_dilated", "grouped"])
def test_conv_padding_and_options(conv_attrs, tmp_path):
    rng = np.random.default_rng(1)
    groups = conv_attrs.get("group", 1)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], **conv_attrs),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = _model(nodes, [1, 4, 9, 8], initializers=[("w", _rand(rng, 6, 4 // groups, 3, 3)), ("b", _rand(rng, 6))])
    network = _assert_matches_both(_save(model, tmp_path), tmp_path)
    assert network.layers[0].spec.groups == groups


def test_pools_batchnorm_clip_concat_and_a_linear_layer(tmp_path):
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "bb", "m", "v"], ["bn"], name="bn", epsilon=1e-3),
        helper.make_node("Clip", ["bn", "lo", "hi"], ["r6"], name="clip"),
        helper.make_node("AveragePool", ["r6"], ["a0"], name="avg_ex", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], ceil_mode=1),                                # count_include_pad 0
        helper.make_node("AveragePool", ["r6"], ["a1"], name="avg_in", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1),
        helper.make_node("MaxPool", ["r6"], ["mp"], name="max", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        helper.make_node("Concat", ["a0", "a1", "mp"], ["cat"], name="cat", axis=1),
        helper.make_node("Reshape", ["cat", "shape"], ["flat"], name="flat"),
        helper.make_node("MatMul", ["flat", "wt"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "bias"], ["y"], name="fc_bias"),
    ]
    features = 9 * 4 * 4
    initializers = [("s", rng.uniform(0.5, 1.5, 3)), ("bb", _rand(rng, 3)), ("m", _rand(rng, 3)),
                    ("v", rng.uniform(0.5, 2, 3)), ("lo", 0.0), ("hi", 6.0), ("shape", [1, -1]),
                    ("wt", _rand(rng, features, 5)), ("bias", _rand(rng, 5))]
    model = _model(nodes, [1, 3, 7, 7], initializers=initializers)
    model.graph.initializer[6].CopyFrom(numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape"))
    network = _assert_matches_both(_save(model, tmp_path), tmp_path)
    ops = [layer.op for layer in network.layers]
    assert ops == ["batchnorm", "relu6", "avgpool2d", "avgpool2d", "maxpool2d", "concat", "linear"]
    assert [layer.spec.count_include_pad for layer in network.layers[2:4]] == [False, True]


def test_global_pooling_as_reduce_mean_and_gemm_with_alpha_beta(tmp_path):
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
             helper.make_node("ReduceMean", ["c", "axes"], ["g"], name="gap", keepdims=1),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="gemm", transB=1, alpha=0.5, beta=2.0)]
    model = _model(nodes, [2, 3, 5, 5], initializers=[("w", _rand(rng, 4, 3, 1, 1)), ("wg", _rand(rng, 6, 4)),
                                                      ("bg", _rand(rng, 6))], opset=18)
    model.graph.initializer.append(numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"))
    _assert_matches_both(_save(model, tmp_path), tmp_path)


def test_unsupported_ops_are_listed_with_their_nodes(tmp_path):
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="gate"),
             helper.make_node("Relu", ["s"], ["r"], name="relu"),
             helper.make_node("Softmax", ["r"], ["y"], name="head", axis=1)]
    path = _save(_model(nodes, [1, 3, 4, 4]), tmp_path)
    with pytest.raises(UnsupportedModel) as caught:
        import_onnx(path)
    assert caught.value.problems == [
        "Sigmoid (node gate, output s): op Sigmoid is not supported",
        "Softmax (node head, output y): op Softmax is not supported"]
    result = subprocess.run([sys.executable, "-m", "convgen.cli", "import", str(path), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot import 2 nodes" in result.stderr and "op Softmax is not supported" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_clip_other_than_relu6_is_refused(tmp_path):
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")]
    path = _save(_model(nodes, [1, 2, 3, 3], initializers=[("lo", -1.0), ("hi", 1.0)]), tmp_path)
    with pytest.raises(UnsupportedModel, match=r"only Clip to \[0, 6\]"):
        import_onnx(path)


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    result = subprocess.run([sys.executable, "-m", "convgen.cli", "import", str(tmp_path / "bad.onnx")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "not an ONNX model" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("backend", ["llvm"])   # int8 networks in C: test_import_tflite and the firmware test
def test_an_int8_qdq_model_matches_onnx_runtime_within_one_step(backend, tmp_path):
    """specs/networks/ds_cnn_qdq.onnx (ONNX Runtime's static quantization of
    the DS-CNN): imported as an int8 network, exact against convgen's int8
    reference, and within one quantization step of ONNX Runtime, which
    requantizes in floating point where TFLite's scheme uses fixed point."""
    model = ROOT / "specs" / "networks" / "ds_cnn_qdq.onnx"
    network, spec_path = _imported(model, tmp_path)
    assert network.is_quantized
    kernel = convgen.build(spec_path, backend)
    assert convgen.check_network(kernel, 0).passed
    (scale, zero_point), (out_scale, out_zero_point) = (network.quantization[t] for t in (network.input, network.output))
    rng = np.random.default_rng(1)
    differ = total = 0
    for _ in range(20):
        x = np.clip(np.round(rng.normal(0, 1, network.shape[network.input]) / scale) + zero_point, -128, 127)
        x = x.astype(np.int8)
        theirs = _ort(model, (scale * (x.astype(np.float32) - zero_point)).astype(np.float32))
        theirs = np.clip(np.round(theirs / out_scale) + out_zero_point, -128, 127).reshape(kernel.output_shape)
        steps = np.abs(kernel(x).astype(np.int64) - theirs.astype(np.int64))
        assert steps.max() <= 1
        differ, total = differ + int((steps > 0).sum()), total + steps.size
    assert differ < total / 4, f"{differ} of {total} outputs differ by one step"


def test_an_int8_model_whose_pool_requantizes_is_refused(tmp_path):
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("MaxPool", ["xd"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("QuantizeLinear", ["p", "ps", "xz"], ["pq"]),
             helper.make_node("DequantizeLinear", ["pq", "ps", "xz"], ["y"])]
    model = _model(nodes, [1, 2, 4, 4], initializers=[("xs", 0.1), ("ps", 0.2)])
    model.graph.initializer.append(numpy_helper.from_array(np.array(3, dtype=np.int8), "xz"))
    with pytest.raises(UnsupportedModel, match="an int8 MaxPool whose output is quantized otherwise"):
        import_onnx(_save(model, tmp_path))
