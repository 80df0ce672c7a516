"""TFLite import (convgen/import_tflite.py): the int8 models built from the
imported network spec match LiteRT's interpreter running TFLite's reference
kernels (BUILTIN_REF) bit for bit; the float model within the float bound.
The fixtures are made by scripts/make_tflite_ds_cnn.py with tensorflow-cpu's
converter (not needed here)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

litert = pytest.importorskip("ai_edge_litert.interpreter",
                             reason="LiteRT runs the models and reads their schema (the test extra installs it)")

import convgen  # noqa: E402
from convgen.check import network_tolerance  # noqa: E402
from convgen.import_onnx import UnsupportedModel, write_network  # noqa: E402
from convgen.import_tflite import import_tflite  # noqa: E402
from convgen.network import load_network  # noqa: E402
from convgen.reference import network_reference  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


def _interpreter(path):
    interpreter = litert.Interpreter(model_path=str(path),
                                     experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    return interpreter


def _run_litert(interpreter, x_nchw):
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _import(name, folder):
    spec, weights = import_tflite(FIXTURES / f"{name}.tflite")
    path, _ = write_network(spec, weights, folder)
    return path


@pytest.mark.parametrize("name, backend", [("ds_cnn_int8", "llvm"), ("ds_cnn_int8", "c")])
def test_int8_models_match_litert_reference_kernels_bit_for_bit(name, backend, tmp_path):
    path = _import(name, tmp_path)
    network = load_network(path)
    assert network.is_quantized
    net = convgen.build(path, backend)
    interpreter = _interpreter(FIXTURES / f"{name}.tflite")
    rng = np.random.default_rng(0)
    scale, zero_point = network.quantization[network.input]
    for k in range(6):
        if k % 2:   # features as the calibration saw them, quantized
            x = np.clip(np.round(rng.normal(0, 1, net.input_shape) / scale) + zero_point, -128, 127).astype(np.int8)
        else:       # anything int8 holds
            x = rng.integers(-128, 128, net.input_shape, dtype=np.int8)
        out = np.full(net.output_shape, -128 if k < 3 else 127, np.int8)
        ours = net(x, out=out)
        theirs = _run_litert(interpreter, x).reshape(ours.shape)
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(ours, network_reference(network, x, network.load_weights())[network.output])


def test_the_int8_residual_block_is_within_one_step_of_litert(tmp_path):
    """The residual block (ADD, fused ReLU, MaxPool, a per-channel FULLY_CONNECTED
    on the flattened map): exact against convgen's int8 reference, and within one
    step of LiteRT, with rare outputs a step apart. LiteRT disagrees with itself
    here: over 300 inputs its optimized kernels differ from convgen in 8 of 3,000
    outputs where its reference kernels differ in none, and on another input its
    reference FULLY_CONNECTED gave 70 where per-channel scales (convgen, and the
    optimized kernel) give 71. Not yet explained; the DS-CNN matches both kernels
    in all 6,000 outputs of 500 inputs."""
    path = _import("residual_int8", tmp_path)
    network = load_network(path)
    net = convgen.build(path, "c")
    interpreter = _interpreter(FIXTURES / "residual_int8.tflite")
    rng = np.random.default_rng(3)
    differ = total = 0
    for _ in range(50):
        x = rng.integers(-128, 128, net.input_shape, dtype=np.int8)
        ours = net(x, out=np.full(net.output_shape, -128, np.int8))
        np.testing.assert_array_equal(ours, network_reference(network, x, network.load_weights())[network.output])
        steps = np.abs(ours.astype(np.int64) - _run_litert(interpreter, x).reshape(ours.shape).astype(np.int64))
        assert steps.max() <= 1
        differ, total = differ + int((steps > 0).sum()), total + steps.size
    assert differ <= total // 100, f"{differ} of {total} outputs a step apart"


def test_the_float_model_matches_litert_within_the_bound(tmp_path):
    path = _import("ds_cnn_float", tmp_path)
    network = load_network(path)
    weights = network.load_weights()
    net = convgen.build(path, "c")
    x = np.random.default_rng(1).uniform(-1, 1, net.input_shape).astype(np.float32)
    ours = net(x, out=np.full(net.output_shape, np.nan, np.float32))
    bound = network_tolerance(network, x, weights)
    assert np.all(np.abs(ours - network_reference(network, x, weights)[network.output]) <= bound)
    assert np.all(np.abs(ours - _run_litert(_interpreter(FIXTURES / "ds_cnn_float.tflite"), x)) <= 2 * bound)


def test_the_int8_ds_cnn_imports_as_the_ds_cnn(tmp_path):
    """The same architecture as specs/networks/ds_cnn.yaml: convolutions with
    their ReLU fused by the converter, TFLite's SAME padding (the extra row at
    the bottom), the average pool, the classifier."""
    network = load_network(_import("ds_cnn_int8", tmp_path))
    ops = [layer.op for layer in network.layers]
    assert ops == ["conv2d"] * 9 + ["avgpool2d", "linear"]
    first = network.layers[0].spec
    assert first.padding == (4, 5, 1, 1) and first.activation == "relu" and first.stride == (2, 2)
    assert [layer.spec.groups for layer in network.layers[1:9:2]] == [64] * 4
    assert network.shape[network.output] == (1, 12)


def test_a_model_that_is_not_tflite_is_refused(tmp_path):
    (tmp_path / "m.tflite").write_bytes(b"\x00" * 32)
    result = subprocess.run([sys.executable, "-m", "convgen.cli", "import", str(tmp_path / "m.tflite")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "not a TFLite model" in result.stderr and "Traceback" not in result.stderr


def test_unsupported_operators_are_listed(tmp_path):
    """The DS-CNN with its first convolution made an op the import lacks: the
    refusal names it, and what reads its output is not listed again."""
    from ai_edge_litert import schema_py_generated as schema
    import flatbuffers
    model = schema.ModelT.InitFromPackedBuf((FIXTURES / "ds_cnn_int8.tflite").read_bytes(), 0)
    first = model.subgraphs[0].operators[0]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.LOGISTIC
    model.operatorCodes.append(code)
    first.opcodeIndex = len(model.operatorCodes) - 1
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "bad.tflite"
    path.write_bytes(bytes(builder.Output()))
    with pytest.raises(UnsupportedModel) as caught:
        import_tflite(path)
    assert caught.value.problems == ["operator 0 (LOGISTIC): op LOGISTIC is not supported"]
    result = subprocess.run([sys.executable, "-m", "convgen.cli", "import", str(path), "-o", str(tmp_path / "o")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "op LOGISTIC is not supported" in result.stderr
    assert "Traceback" not in result.stderr
