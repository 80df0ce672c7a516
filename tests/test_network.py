"""Network specs (convgen/network.py): tensors chained layer by layer, every problem
named by file, layer and field, the weights checked, and the float64 reference."""

import numpy as np
import pytest
import yaml

from convgen.errors import SpecError
from convgen.network import load_network
from convgen.reference import network_reference, reference

BLOCK = {
    "name": "block",
    "input": {"name": "x", "shape": [2, 8, 10, 10]},
    "layers": [
        {"name": "conv1", "op": "conv2d", "input": "x", "output": "c1", "out_channels": 8, "kernel_size": 3,
         "padding": 1, "bias": False},
        {"name": "bn1", "op": "batchnorm", "input": "c1", "output": "b1"},
        {"name": "relu1", "op": "relu", "input": "b1", "output": "r1"},
        {"name": "add1", "op": "add", "inputs": ["r1", "x"], "output": "s1"},
        {"name": "down", "op": "conv2d", "input": "s1", "output": "d1", "out_channels": 4, "kernel_size": 1,
         "stride": 2},
        {"name": "pool", "op": "maxpool2d", "input": "s1", "output": "p1", "kernel_size": 3, "stride": 2,
         "padding": 1},
        {"name": "cat", "op": "concat", "inputs": ["d1", "p1"], "output": "k1"},
        {"name": "act", "op": "relu6", "input": "k1", "output": "a1"},
        {"name": "gap", "op": "global_avgpool", "input": "a1", "output": "g"},
        {"name": "fc", "op": "linear", "input": "g", "output": "y", "out_features": 5},
    ],
    "output": "y",
}


def _weights(rng):
    return {"conv1.weight": rng.standard_normal((8, 8, 3, 3)), "bn1.weight": rng.uniform(0.5, 1.5, 8),
            "bn1.bias": rng.standard_normal(8), "bn1.running_mean": rng.standard_normal(8),
            "bn1.running_var": rng.uniform(0.5, 2, 8), "down.weight": rng.standard_normal((4, 8, 1, 1)),
            "down.bias": rng.standard_normal(4), "fc.weight": rng.standard_normal((5, 12)),
            "fc.bias": rng.standard_normal(5)}


def test_shapes_chain_through_the_layers():
    net = load_network(BLOCK)
    shapes = net.shape
    assert shapes["s1"] == (2, 8, 10, 10) and shapes["d1"] == (2, 4, 5, 5) and shapes["p1"] == (2, 8, 5, 5)
    assert shapes["k1"] == (2, 12, 5, 5) and shapes["g"] == (2, 12, 1, 1) and shapes["y"] == (2, 5)
    conv = net.layers[0].spec
    assert (conv.batch, conv.in_channels, conv.input_size, conv.name) == (2, 8, (10, 10), "block_conv1")


def test_the_reference_is_each_layer_in_turn(tmp_path):
    """Against the same network written out with NumPy here, batch norm in its other form."""
    rng = np.random.default_rng(3)
    w = _weights(rng)
    np.savez(tmp_path / "block.npz", **w)
    (tmp_path / "block.yaml").write_text(yaml.safe_dump(BLOCK))
    net = load_network(tmp_path / "block.yaml")
    x = rng.standard_normal((2, 8, 10, 10))
    got = network_reference(net, x, net.load_weights())
    c1 = reference(net.layers[0].spec, x, w["conv1.weight"])
    scale = w["bn1.weight"] / np.sqrt(w["bn1.running_var"] + 1e-5)
    b1 = (c1 - w["bn1.running_mean"][:, None, None]) * scale[:, None, None] + w["bn1.bias"][:, None, None]
    s1 = np.maximum(b1, 0) + x
    d1 = np.einsum("nchw,oc->nohw", s1[:, :, ::2, ::2], w["down.weight"][:, :, 0, 0]) + w["down.bias"][:, None, None]
    padded = np.pad(s1, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    p1 = np.max([padded[:, :, i:i + 9:2, j:j + 9:2] for i in range(3) for j in range(3)], axis=0)
    g = np.clip(np.concatenate([d1, p1], axis=1), 0, 6).mean(axis=(2, 3))
    np.testing.assert_allclose(got["y"], g @ w["fc.weight"].T + w["fc.bias"], rtol=1e-12, atol=1e-12)
    assert set(got) == {"x", "c1", "b1", "r1", "s1", "d1", "p1", "k1", "a1", "g", "y"}


def _with(index, **change):
    layers = [dict(layer) for layer in BLOCK["layers"]]
    layers[index] = {k: v for k, v in {**layers[index], **change}.items() if v is not None}
    return {**BLOCK, "layers": layers}


@pytest.mark.parametrize("data, message", [
    (_with(1, input="c9"), "<dict>: layers[1] (bn1): input: no tensor 'c9' is written before this layer"),
    (_with(2, output="c1"), "layers[2] (relu1): output: expected the name of a new tensor; got 'c1' (written "
                            "already"),
    (_with(3, inputs=["r1", "d1"]), "layers[3] (add1): inputs: no tensor 'd1' is written before this layer"),
    (_with(6, inputs=["d1", "x"]), "layers[6] (cat): inputs: expected tensors that differ only in channels"),
    (_with(0, padding="sme"), "<dict>: layers[0] (conv1): padding: expected an int"),
    (_with(0, in_channels=8), "layers[0] (conv1): in_channels: the input tensor decides it"),
    (_with(1, op="layernorm"), "layers[1]: expected a mapping with a name and an op among conv2d"),
    (_with(1, eps=0), "layers[1] (bn1): eps: expected a positive number; got 0"),
    (_with(9, out_features=0), "layers[9] (fc): out_features: expected a positive int"),
    ({**BLOCK, "output": "z"}, "<dict>: output: no layer writes a tensor named 'z'"),
    ({**BLOCK, "input": {"name": "x", "shape": [8, 10, 10]}}, "<dict>: input: expected {name: TENSOR, shape: "
                                                              "[N, C, H, W]}"),
])
def test_problems_name_the_layer_and_field(data, message):
    with pytest.raises(SpecError) as caught:
        load_network(data)
    assert message in str(caught.value), str(caught.value)


def test_a_refused_layer_is_reported_once_not_by_every_reader():
    with pytest.raises(SpecError) as caught:
        load_network(_with(0, kernel_size=40))
    assert len(caught.value.problems) == 1, caught.value.problems
    assert "layers[0] (conv1): input_size: expected an output of at least 1x1" in caught.value.problems[0]


def test_weights_are_checked_by_key_and_shape(tmp_path):
    w = _weights(np.random.default_rng(0))
    w.pop("bn1.running_var")
    w["fc.weight"] = w["fc.weight"][:, :4]
    np.savez(tmp_path / "block.npz", **w)
    (tmp_path / "block.yaml").write_text(yaml.safe_dump(BLOCK))
    with pytest.raises(SpecError) as caught:
        load_network(tmp_path / "block.yaml").load_weights()
    problems = caught.value.problems
    assert any("block.npz: bn1.running_var: missing (layer bn1 takes it)" in p for p in problems), problems
    assert any("block.npz: fc.weight: expected shape [5, 12]; got [5, 4]" in p for p in problems), problems


def test_batchnorm_folds_into_the_convolution_before_it():
    """The folded network computes what the original does; a batchnorm whose input
    something else also reads stays."""
    from convgen.fold import fold_batchnorm
    rng = np.random.default_rng(5)
    net, w = load_network(BLOCK), _weights(rng)
    folded, fw = fold_batchnorm(net, w)
    assert [layer.op for layer in folded.layers].count("batchnorm") == 0 and "c1" not in folded.shape
    conv = next(layer for layer in folded.layers if layer.name == "conv1")
    assert conv.output == "b1" and conv.spec.bias and "bn1.weight" not in fw and fw["conv1.bias"].shape == (8,)
    x = rng.standard_normal((2, 8, 10, 10))
    np.testing.assert_allclose(network_reference(folded, x, fw)["y"], network_reference(net, x, w)["y"],
                               rtol=1e-10, atol=1e-12)
    shared = {**BLOCK, "layers": BLOCK["layers"][:2] + [{"name": "add0", "op": "add", "inputs": ["b1", "c1"],
                                                         "output": "y"}]}
    kept, _ = fold_batchnorm(load_network(shared), w)
    assert [layer.op for layer in kept.layers] == ["conv2d", "batchnorm", "add"]
