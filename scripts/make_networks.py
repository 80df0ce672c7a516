"""Write the weights of the example networks (specs/networks/*.yaml) as .npz
files beside them: each network built as a PyTorch module
(convgen.peers.torch_network), initialised by PyTorch from a fixed seed,
with batch norms given random statistics (so that folding them is tested),
and its state_dict saved under the keys the network spec takes.

    python scripts/make_networks.py [specs/networks]

Needs torch==2.13.0 (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import sys
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


def write_weights(spec: Path) -> Path:
    network = load_network(spec)
    torch.manual_seed(0)
    module = torch_network(network)
    randomise_batchnorms(module, torch.Generator().manual_seed(1))
    arrays = {key: value.detach().numpy().astype(np.float32) for key, value in module.state_dict().items()
              if not key.endswith("num_batches_tracked")}
    target = spec.with_suffix(".npz")
    np.savez(target, **arrays)
    return target


def main(folder: str = "specs/networks") -> int:
    for spec in sorted(Path(folder).glob("*.yaml")):
        print(f"wrote {write_weights(spec)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
