"""The TFLite peer's one-op models compute the layer the spec describes.

The model is written by convgen (convgen/peers.py), so it is checked here
against the float64 reference on fresh random inputs: padding that TFLite's
SAME gives and padding that needs an explicit PAD op, depthwise, grouped,
dilated, asymmetric kernels, fused activations and pools.
"""

import numpy as np
import pytest

import convgen
from convgen.check import random_inputs
from convgen.peers import PEERS

pytest.importorskip("ai_edge_litert", reason="the TFLite peer is an optional extra: pip install -e '.[bench]'")

LAYERS = {
    "stride 2, odd map (SAME pads as the spec)": dict(in_channels=16, out_channels=32, input_size=[17, 17],
                                                     kernel_size=3, stride=2, padding=1),
    "stride 2, even map (explicit PAD)": dict(in_channels=16, out_channels=32, input_size=[16, 16], kernel_size=3,
                                              stride=2, padding=1, activation="relu6"),
    "depthwise 5x5 stride 2": dict(in_channels=32, out_channels=32, groups=32, input_size=[16, 16], kernel_size=5,
                                   stride=2, padding=2, activation="relu"),
    "grouped, no bias": dict(in_channels=32, out_channels=64, groups=4, input_size=[14, 14], kernel_size=3,
                             padding=1, bias=False),
    "dilation 12": dict(in_channels=8, out_channels=8, input_size=[33, 33], kernel_size=3, padding=12, dilation=12),
    "7x1": dict(in_channels=8, out_channels=8, input_size=[20, 20], kernel_size=[7, 1], padding=[3, 0]),
    "1x1 with a fused average pool": dict(in_channels=64, out_channels=32, input_size=[8, 8], kernel_size=1,
                                          pool={"op": "avgpool2d", "kernel_size": 2}),
    "max pool": dict(op="maxpool2d", in_channels=8, input_size=[9, 9], kernel_size=3, stride=2, padding=1),
    "stem without padding": dict(in_channels=3, out_channels=16, input_size=[15, 15], kernel_size=3, stride=2),
}


@pytest.mark.parametrize("label", LAYERS)
def test_tflite_model_matches_the_reference(label):
    spec = convgen.load_spec({"name": "peer", "op": "conv2d", "layout": "NHWC", **LAYERS[label]})
    inputs = random_inputs(spec, np.random.default_rng())
    (call, to_user), = PEERS["tflite"](spec, inputs, 1).values()
    call()
    result = to_user(None)
    expected = convgen.reference(spec, **inputs)
    assert result.shape == expected.shape
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


def test_tflite_refuses_an_nchw_layer():
    spec = convgen.load_spec({"name": "peer", "op": "conv2d", "in_channels": 4, "out_channels": 4,
                              "input_size": [6, 6], "kernel_size": 3})
    with pytest.raises(NotImplementedError, match="NHWC"):
        PEERS["tflite"](spec, random_inputs(spec, np.random.default_rng()), 1)
