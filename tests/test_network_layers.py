"""The real-network benchmark's layer tables (benchmarks/network_layers.py)
against figures published independently of them: each network's multiply-
adds (torchvision's model table, in GMACs to two decimals, which counts the
classifier too: a few MMACs at most) and layer counts from the papers."""

import sys

import pytest

import convgen
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import network_layers  # noqa: E402

PUBLISHED_GMACS = {"resnet18": 1.81, "mobilenetv3_large": 0.22, "shufflenetv2": 0.14, "squeezenet1_1": 0.35,
                   "densenet121": 2.83, "regnetx_400mf": 0.41}


@pytest.mark.parametrize("network", PUBLISHED_GMACS)
def test_every_conv_of_the_network_adds_up_to_its_published_macs(network):
    convs = list(network_layers.NETWORKS[network]())
    macs = sum(convgen.load_spec(layer.spec("NCHW")).macs for layer in convs)
    assert abs(macs / 1e9 - PUBLISHED_GMACS[network]) <= 0.01


def test_layer_counts_match_the_papers():
    count = {name: sum(1 for _ in make()) for name, make in network_layers.NETWORKS.items()}
    assert count["resnet18"] == 17 + 3           # 16 in the blocks and conv1, three 1x1 projections
    assert count["densenet121"] == 120           # 121 layers: 120 convolutions and the classifier
    assert count["unet"] == 10                   # two per level, five levels of the contracting path


@pytest.mark.parametrize("network", network_layers.NETWORKS)
def test_each_distinct_layer_loads_in_both_layouts_once(network):
    layers = network_layers.layers(network)
    assert len({layer.key for layer in layers}) == len(layers)
    for layer in layers:
        for layout in ("NCHW", "NHWC"):
            spec = convgen.load_spec(layer.spec(layout))
            assert spec.input_layout == spec.output_layout == layout
