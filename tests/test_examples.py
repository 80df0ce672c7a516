"""The seed documents' worked examples, asserted exactly on both backends.

Inputs and expected outputs are copied from the seeds (../shared/seeds), not
computed by convgen.
"""

import numpy as np
import pytest

import convgen
from conftest import SPECS

RAMP = np.array([[10, 20, 30, 40, 50],
                 [60, 70, 80, 90, 100],
                 [110, 120, 130, 140, 150],
                 [160, 170, 180, 190, 200],
                 [210, 220, 230, 240, 250]])
STEP = np.array([[100, 100, 100, 50, 50]] * 5)
GRID4 = np.arange(1, 17).reshape(4, 4)
GRID3 = np.arange(1, 10).reshape(3, 3)

EXAMPLES = [
    ("ramp_vertical_edge", RAMP, np.full((3, 3), -60)),
    ("step_sobel_x", STEP, np.array([[0, -200, -200]] * 3)),
    ("grid4_vertical_edge", GRID4, np.full((2, 2), -6)),
    ("grid3_diagonal", GRID3, np.full((2, 2), -4)),
]


@pytest.mark.parametrize("name, image, expected", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_seed_example_exact(backend, name, image, expected):
    kernel = convgen.build(SPECS / "examples" / f"{name}.yaml", backend)
    x = image.astype(np.float32).reshape(1, 1, *image.shape)
    out = np.full(kernel.spec.output_shape, np.nan, dtype=np.float32)
    y = kernel(x, out=out)
    np.testing.assert_array_equal(y[0, 0], expected)


def test_seed_example_reference_exact():
    spec = convgen.load_spec(SPECS / "examples" / "ramp_vertical_edge.yaml")
    y = convgen.reference(spec, RAMP.reshape(1, 1, 5, 5), spec.weight_array())
    np.testing.assert_array_equal(y[0, 0], np.full((3, 3), -60.0))


def test_identity_filter_returns_the_input(backend):
    spec = convgen.load_spec({"name": "ident", "op": "conv2d", "in_channels": 1, "out_channels": 1,
                              "input_size": [5, 5], "weights": "identity", "bias": False, "padding": 1})
    x = np.random.default_rng(0).uniform(-5, 5, (1, 1, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(convgen.build(spec, backend)(x), x)


def test_multichannel_seed_parameter_count():
    # seed 000: 2 filters over 3 channels, 3x3: 54 weights + 2 biases
    spec = convgen.load_spec({"name": "m", "op": "conv2d", "in_channels": 3, "out_channels": 2,
                              "input_size": [8, 8], "kernel_size": 3})
    assert spec.param_count == 56
    assert spec.output_shape == (1, 2, 6, 6)
