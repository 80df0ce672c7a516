"""Network rewrites before lowering: folding and fusion. Each keeps the
network's meaning (the network reference of the rewritten network equals
the original's, up to rounding), takes (network, weights) and returns the
rewritten pair; `fuse` applies them all, in order, and says what it did.

- fold_batchnorm: a batchnorm that follows a convolution and is the only
  reader of its output becomes the convolution's scaled weights and bias;
- fuse_activations: a relu or relu6 whose input only it reads, written by a
  convolution or pool without an activation, becomes that layer's activation;
- fuse_residuals: an add of two tensors, one written by a float convolution
  that only the add reads, becomes that convolution's residual (added in its
  epilogue, before its activation);
- fuse_pools: a max or average pool whose input only it reads, written by a
  float convolution, becomes the convolution's fused `pool:` (pooled in its
  epilogue; the schedule computes the pooled window's part in place);
- batchnorms_as_convs: a batchnorm left becomes a depthwise 1x1 convolution
  (global_avgpool and linear are layer specs already: network.py).

int8 networks take only fuse_activations (a relu or relu6 keeps its
input's scale, so it is the convolution's clamp, as TFLite fuses it).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .network import Layer, Network
from .spec import Pool, load_spec


def readers(network: Network) -> dict[str, int]:
    """How many layers read each tensor (the network's output counts as one more)."""
    count: dict[str, int] = {network.output: 1}
    for layer in network.layers:
        for name in layer.inputs:
            count[name] = count.get(name, 0) + 1
    return count


def _merged(network: Network, into: dict[str, Layer], gone: set[str]) -> Network:
    """network with layers replaced (by name) by `into`, the layers named in gone
    removed and the tensors only they wrote dropped."""
    layers = tuple(into.get(layer.name, layer) for layer in network.layers if layer.name not in gone)
    kept = {network.input} | {layer.output for layer in layers}
    shapes = tuple((name, shape) for name, shape in network.shapes if name in kept)
    return replace(network, layers=layers, shapes=shapes)


def _absorb(network: Network, weights, can_take, take) -> tuple[Network, dict, list[str]]:
    """Each layer L for which can_take(producer, L) holds, where producer wrote
    L's only input and L is its only reader, merged into the producer:
    take(producer, L, weights) gives the producer's new form (writing L's output)."""
    writer = {layer.output: layer for layer in network.layers}
    count = readers(network)
    weights, into, gone, said = dict(weights), {}, set(), []
    for layer in network.layers:
        source = writer.get(layer.inputs[0])
        if source is None or len(layer.inputs) != 1 or count[source.output] != 1:
            continue
        source = into.get(source.name, source)
        if not can_take(source, layer):
            continue
        into[source.name] = replace(take(source, layer, weights), output=layer.output)
        writer[layer.output] = into[source.name]
        gone.add(layer.name)
        said.append(f"{layer.name} ({layer.op}) into {source.name}")
    return _merged(network, into, gone), weights, said


def fold_batchnorm(network: Network, weights: dict[str, np.ndarray]) -> tuple[Network, dict[str, np.ndarray]]:
    """(the network with each foldable batchnorm folded into the convolution
    before it, the weights to go with it). With scale = gamma / sqrt(var + eps):
    w'[o] = w[o] * scale[o], b'[o] = (b[o] or 0) * scale[o] + beta[o] - mean[o] * scale[o];
    the convolution then writes the batchnorm's output tensor."""
    network, weights, _ = _fold_batchnorm(network, weights)
    return network, weights


def _fold_batchnorm(network, weights):
    def can_take(conv: Layer, layer: Layer) -> bool:
        return (layer.op == "batchnorm" and conv.op == "conv2d" and not conv.spec.is_quantized
                and conv.spec.activation == "none" and conv.spec.pool is None)

    def take(conv: Layer, layer: Layer, weights) -> Layer:
        scale, shift = batchnorm_affine(layer, weights)
        bias = weights.get(f"{conv.name}.bias", np.zeros_like(scale))
        weights[f"{conv.name}.weight"] = weights[f"{conv.name}.weight"] * scale.reshape(-1, 1, 1, 1)
        weights[f"{conv.name}.bias"] = bias * scale + shift
        for key in ("weight", "bias", "running_mean", "running_var"):
            del weights[f"{layer.name}.{key}"]
        return replace(conv, spec=replace(conv.spec, bias=True))

    return _absorb(network, weights, can_take, take)


def batchnorm_affine(layer: Layer, weights) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of a batchnorm: y = x * scale + shift per channel."""
    scale = weights[f"{layer.name}.weight"] / np.sqrt(weights[f"{layer.name}.running_var"] + layer.eps)
    return scale, weights[f"{layer.name}.bias"] - weights[f"{layer.name}.running_mean"] * scale


def fuse_activations(network, weights):
    def can_take(source: Layer, layer: Layer) -> bool:
        return (layer.op in ("relu", "relu6") and source.spec is not None and source.spec.activation == "none"
                and source.spec.pool is None)

    def take(source: Layer, layer: Layer, weights) -> Layer:
        return replace(source, spec=replace(source.spec, activation=layer.op))

    return _absorb(network, weights, can_take, take)


def fuse_pools(network, weights):
    def can_take(conv: Layer, layer: Layer) -> bool:
        pool = layer.spec
        return (layer.op in ("maxpool2d", "avgpool2d") and conv.op == "conv2d" and conv.spec.pool is None
                and not conv.spec.is_quantized and pool.padding_mode == "zeros" and pool.dilation == (1, 1)
                and pool.activation == "none" and pool.input_layout == conv.spec.output_layout)

    def take(conv: Layer, layer: Layer, weights) -> Layer:
        p = layer.spec
        pool = Pool(p.op, p.kernel_size, p.stride, p.padding, p.count_include_pad, p.ceil_mode)
        return replace(conv, spec=replace(conv.spec, pool=pool))

    return _absorb(network, weights, can_take, take)


def fuse_residuals(network, weights):
    """Each add of two tensors, one written by a float convolution without an
    activation, pool or residual that only the add reads: the convolution
    adds the other tensor in its epilogue (residual) and writes the add's
    output, in the add's place (the other tensor may be written after the
    convolution was)."""
    writer = {layer.output: layer for layer in network.layers}
    count = readers(network)
    moved, gone, said = {}, set(), []
    for layer in network.layers:
        if layer.op != "add" or len(layer.inputs) != 2:
            continue
        for mine, other in (layer.inputs, layer.inputs[::-1]):
            conv = writer.get(mine)
            if (conv is not None and conv.op == "conv2d" and count[mine] == 1 and conv.name not in gone
                    and not conv.spec.is_quantized and conv.spec.activation == "none" and conv.spec.pool is None
                    and not conv.spec.residual and other != mine):
                moved[layer.name] = replace(conv, inputs=(conv.inputs[0], other), output=layer.output,
                                            spec=replace(conv.spec, residual=True))
                gone.add(conv.name)
                said.append(f"{layer.name} (add) into {conv.name} (its residual: {other})")
                break
    return _merged(network, moved, gone), weights, said


def batchnorms_as_convs(network: Network, weights) -> tuple[Network, dict, list[str]]:
    """Each batchnorm left (not after a convolution it could fold into) as a
    depthwise 1x1 convolution with the batchnorm's scale and shift."""
    shape, weights, layers, said = network.shape, dict(weights), [], []
    for layer in network.layers:
        if layer.op != "batchnorm":
            layers.append(layer)
            continue
        channels = shape[layer.inputs[0]][1]
        scale, shift = batchnorm_affine(layer, weights)
        for key in ("running_mean", "running_var"):
            del weights[f"{layer.name}.{key}"]
        weights[f"{layer.name}.weight"] = scale.reshape(-1, 1, 1, 1)
        weights[f"{layer.name}.bias"] = shift
        source = shape[layer.inputs[0]]
        spec = load_spec(dict(name=f"{network.name}_{layer.name}", op="conv2d", batch=source[0], in_channels=channels,
                              out_channels=channels, groups=channels, input_size=list(source[2:]), kernel_size=1))
        layers.append(replace(layer, spec=spec))   # keeps its op, for what it says
        said.append(f"{layer.name} (batchnorm) as a depthwise 1x1 convolution")
    return replace(network, layers=tuple(layers)), weights, said


def fuse(network: Network, weights: dict[str, np.ndarray]) -> tuple[Network, dict[str, np.ndarray], list[str]]:
    """Every rewrite, in order: fold batch norms, fuse residual adds, then
    activations (after the sum, as they follow it), then pools (after the
    activation, as they follow it), then the batchnorms left as depthwise
    convolutions. Returns (network, weights, what was done, a line each)."""
    said = []
    for name, rewrite in (("folded", _fold_batchnorm), ("fused", fuse_residuals), ("fused", fuse_activations),
                          ("fused", fuse_pools), ("left", batchnorms_as_convs)):
        network, weights, done = rewrite(network, weights)
        said += [f"{name} {line}" for line in done]
    return network, weights, said
