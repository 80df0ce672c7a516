"""Write the weights of the example networks (specs/networks/*.yaml) as .npz
files beside them, and each network as an ONNX model (.onnx) beside them too:
each network built as a PyTorch module (convgen.peers.torch_network),
initialised by PyTorch from a fixed seed, with batch norms given random
statistics (so that folding them is tested), its state_dict saved under the
keys the network spec takes, and the module exported by torch.onnx.export
(the TorchScript exporter, opset 17, without constant folding, so that the
batch norms stay BatchNormalization nodes for `convgen import` to fold).

    python scripts/make_networks.py [specs/networks]

Needs torch==2.13.0 and onnx (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from convgen.network import load_network
from convgen.peers import torch_network


def randomise_batchnorms(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Statistics and affine parameters away from the identity a fresh batch norm has."""
    for child in module.modules():
        if isinstance(child, torch.nn.BatchNorm2d):
            size = child.num_features
            with torch.no_grad():
                child.weight.copy_(0.5 + torch.rand(size, generator=generator))
                child.bias.copy_(0.2 * torch.randn(size, generator=generator))
                child.running_mean.copy_(0.2 * torch.randn(size, generator=generator))
                child.running_var.copy_(0.5 + torch.rand(size, generator=generator))


def write_weights_and_model(spec: Path) -> tuple[Path, Path]:
    network = load_network(spec)
    torch.manual_seed(0)
    module = torch_network(network)
    randomise_batchnorms(module, torch.Generator().manual_seed(1))
    arrays = {key: value.detach().numpy().astype(np.float32) for key, value in module.state_dict().items()
              if not key.endswith("num_batches_tracked")}
    weights, model = spec.with_suffix(".npz"), spec.with_suffix(".onnx")
    np.savez(weights, **arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # the TorchScript exporter's notice
        torch.onnx.export(module, (torch.zeros(network.shape[network.input]),), str(model), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"], do_constant_folding=False)
    return weights, model


def main(folder: str = "specs/networks") -> int:
    for spec in sorted(Path(folder).glob("*.yaml")):
        for path in write_weights_and_model(spec):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
