"""Network rewrites before lowering: what a network's layers can give up to
their neighbours at build time, keeping its meaning (the network reference
of the rewritten network equals the original's, up to rounding).

- fold_batchnorm: a batchnorm that follows a convolution and is the only
  reader of its output becomes the convolution's scaled weights and bias.

Fusing activations, residual adds and pools into a convolution's epilogue
follows (the networks issue).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .network import Network


def fold_batchnorm(network: Network, weights: dict[str, np.ndarray]) -> tuple[Network, dict[str, np.ndarray]]:
    """(the network with each foldable batchnorm folded into the convolution
    before it, the weights to go with it). With scale = gamma / sqrt(var + eps):
    w'[o] = w[o] * scale[o], b'[o] = (b[o] or 0) * scale[o] + beta[o] - mean[o] * scale[o];
    the convolution then writes the batchnorm's output tensor."""
    writer = {layer.output: layer for layer in network.layers}
    readers: dict[str, int] = {}
    for layer in network.layers:
        for name in layer.inputs:
            readers[name] = readers.get(name, 0) + 1
    readers[network.output] = readers.get(network.output, 0) + 1
    weights, folded, layers = dict(weights), {}, []
    for layer in network.layers:
        conv = writer.get(layer.inputs[0])
        if layer.op != "batchnorm" or conv is None or conv.op != "conv2d" or readers[conv.output] != 1:
            layers.append(layer)
            continue
        scale = weights[f"{layer.name}.weight"] / np.sqrt(weights[f"{layer.name}.running_var"] + layer.eps)
        shift = weights[f"{layer.name}.bias"] - weights[f"{layer.name}.running_mean"] * scale
        bias = weights.get(f"{conv.name}.bias", np.zeros_like(scale))
        weights[f"{conv.name}.weight"] = weights[f"{conv.name}.weight"] * scale.reshape(-1, 1, 1, 1)
        weights[f"{conv.name}.bias"] = bias * scale + shift
        for key in ("weight", "bias", "running_mean", "running_var"):
            del weights[f"{layer.name}.{key}"]
        folded[conv.name] = replace(conv, output=layer.output, spec=replace(conv.spec, bias=True))
        layers.remove(conv)
        layers.append(folded[conv.name])
    gone = {conv.output for conv in network.layers if conv.name in folded}
    shapes = tuple((name, shape) for name, shape in network.shapes if name not in gone)
    return replace(network, layers=tuple(layers), shapes=shapes), weights

