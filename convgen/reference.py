"""The meaning of a layer, in plain float64 NumPy, written from the formulas.

    y[n, o, i, j] = act( b[o] + sum_{c, p, q} w[o, c, p, q]
                         * xpad[n, g(o) * Cg + c, i * sh + p * dh, j * sw + q * dw] )

with xpad the input padded by (top, bottom, left, right) in the padding mode,
g(o) = o // (O / groups) and Cg = C / groups. Max pooling pads with -inf,
average pooling with zeros that count towards the mean (PyTorch semantics),
or, with count_include_pad false, divides by the window's elements inside
the input. With ceil_mode a last window may hang past the padded input: the
elements past it are neither maxed nor summed nor counted (PyTorch's rule).
A convolution's `pool` is applied to its activated output, the same way.

An int8 layer (TensorFlow Lite's scheme, see spec.Quantization) is computed
in exact integers: acc = b[o] + sum (x - input_zero_point) * w, requantized
per output channel by quant.requantize, plus the output zero point, clamped
to the activation range. Zero padding pads with the input zero point (a real
zero). Max pooling takes the max of int8 values; average pooling sums the
window (padding as the input zero point, or left out with count_include_pad
false, as TFLite's pools do) and divides by the count rounding half away from
zero, as TFLite does.

A network (convgen.network) is its layers in order: conv2d and the pools as
above, batchnorm as (x - mean) / sqrt(var + eps) * weight + bias, relu,
relu6, add, concat along channels, global average pooling (an average pool
over the whole image), and linear (a 1x1 convolution of each sample
flattened). An int8 network's relu and relu6 clamp at their input's scale,
and its add is TFLite's (quant.py).

This module shares no code with lowering or codegen: it is what they are
checked against.
"""

from __future__ import annotations

import numpy as np

from . import quant
from .quant import requantize
from .spec import Spec

_NUMPY_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge"}


def reference(spec: Spec, x: np.ndarray, w: np.ndarray | None = None, b: np.ndarray | None = None,
              r: np.ndarray | None = None) -> np.ndarray:
    """Compute the layer in float64 (int8 layers: exactly, in integers). x, r (a
    residual layer's) and the result are in the spec's layouts; w is OIHW."""
    if spec.is_quantized:
        return _from_nchw(_quantized(spec, _to_nchw(np.asarray(x, dtype=np.int64), spec.input_layout), w, b),
                          spec.output_layout)
    x = _to_nchw(np.asarray(x, dtype=np.float64), spec.input_layout)
    if spec.is_conv:
        y = _conv2d(spec, x, np.asarray(w, dtype=np.float64))
        if spec.bias:
            y = y + np.asarray(b, dtype=np.float64).reshape(1, -1, 1, 1)
        if spec.residual:
            y = y + _to_nchw(np.asarray(r, dtype=np.float64), spec.output_layout)
        y = _activation(spec.activation, y)
        if spec.pool is not None:
            p = spec.pool
            y = _pool(p.op, y, p.kernel_size, p.stride, p.padding, (1, 1), "zeros", p.count_include_pad,
                      spec.output_size)
    else:
        y = _pool(spec.op, x, spec.kernel_size, spec.stride, spec.padding, spec.dilation, spec.padding_mode,
                  spec.count_include_pad, spec.output_size)
        y = _activation(spec.activation, y)
    return _from_nchw(y, spec.output_layout)


def _quantized(spec: Spec, x: np.ndarray, w, b) -> np.ndarray:
    q = spec.quantization
    low, high = spec.activation_range()
    if spec.is_conv:
        # float64 holds these integer sums exactly (each below 2**53)
        acc = np.rint(_conv2d(spec, x - q.input_zero_point, np.asarray(w, dtype=np.int64))).astype(np.int64)
        if spec.bias:
            acc += np.asarray(b, dtype=np.int64).reshape(1, -1, 1, 1)
        multipliers, shifts = (np.array(v, dtype=np.int64).reshape(1, -1, 1, 1) for v in spec.requantization())
        y = requantize(acc, multipliers, shifts) + q.output_zero_point
    elif spec.op == "maxpool2d":
        y = _pool("maxpool2d", x.astype(np.float64), spec.kernel_size, spec.stride, spec.padding, spec.dilation,
                  spec.padding_mode, True, spec.output_size).astype(np.int64)
    else:
        # the window's sum with padding as the input's zero point (shifted so that the zero point is 0)
        shifted = x - q.input_zero_point
        total = np.rint(_window_sums(shifted.astype(np.float64), spec.kernel_size, spec.stride, spec.padding,
                                     spec.padding_mode, spec.output_size)).astype(np.int64)
        count = _window_counts(spec.input_size, spec.kernel_size, spec.stride, spec.padding,
                               spec.count_include_pad, spec.output_size).astype(np.int64)
        total += count * q.input_zero_point
        rounded = total + np.where(total > 0, count // 2, -(count // 2))
        y = np.sign(rounded) * (np.abs(rounded) // count)     # C's division truncates toward zero
    return np.clip(y, low, high).astype(np.int8)


def _to_nchw(x: np.ndarray, layout: str) -> np.ndarray:
    return x if layout == "NCHW" else x.transpose(0, 3, 1, 2)


def _from_nchw(y: np.ndarray, layout: str) -> np.ndarray:
    return y if layout == "NCHW" else y.transpose(0, 2, 3, 1)


def _pad(x: np.ndarray, padding, mode: str, fill: float) -> np.ndarray:
    top, bottom, left, right = padding
    widths = ((0, 0), (0, 0), (top, bottom), (left, right))
    numpy_mode = _NUMPY_PAD_MODE[mode]
    if numpy_mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=fill)
    return np.pad(x, widths, mode=numpy_mode)


def _taps(xpad: np.ndarray, kernel, stride, dilation):
    """Yield (p, q, window): the input values each output position sees at kernel tap (p, q)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    oh = (xpad.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xpad.shape[3] - dw * (kw - 1) - 1) // sw + 1
    for p in range(kh):
        for q in range(kw):
            rows = slice(p * dh, p * dh + (oh - 1) * sh + 1, sh)
            cols = slice(q * dw, q * dw + (ow - 1) * sw + 1, sw)
            yield p, q, xpad[:, :, rows, cols]


def _conv2d(spec: Spec, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    n = spec.batch
    groups = spec.groups
    cg = spec.in_channels // groups
    og = spec.out_channels // groups
    oh, ow = spec.conv_output_size
    wg = w.reshape(groups, og, cg, *spec.kernel_size)
    y = np.zeros((n, groups, og, oh, ow))
    for p, q, window in _taps(_pad(x, spec.padding, spec.padding_mode, 0.0), spec.kernel_size, spec.stride,
                              spec.dilation):
        xg = window.reshape(n, groups, cg, oh, ow)
        y += np.einsum("ngchw,goc->ngohw", xg, wg[:, :, :, p, q], optimize=True)
    return y.reshape(n, spec.out_channels, oh, ow)


def _pool(op: str, x: np.ndarray, kernel, stride, padding, dilation, mode: str, include_pad: bool,
          out_size) -> np.ndarray:
    """Max or average pooling of x (NCHW, float64) to out_size."""
    if op == "maxpool2d":
        windows = _windows(_pad(x, padding, mode, -np.inf), kernel, stride, dilation, out_size, -np.inf)
        return np.max(windows, axis=0)
    total = _window_sums(x, kernel, stride, padding, mode, out_size)
    return total / _window_counts(x.shape[2:], kernel, stride, padding, include_pad, out_size)


def _window_sums(x: np.ndarray, kernel, stride, padding, mode: str, out_size) -> np.ndarray:
    """Each average-pooling window's sum over x padded (zeros, or the padding mode's values)."""
    return np.sum(_windows(_pad(x, padding, mode, 0.0), kernel, stride, (1, 1), out_size, 0.0), axis=0)


def _windows(xpad: np.ndarray, kernel, stride, dilation, out_size, fill: float) -> np.ndarray:
    """Every tap's values at each of the out_size outputs, the input extended by `fill`
    where a ceil_mode window hangs past the padded input."""
    extra = [max(0, (out_size[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 - xpad.shape[2 + i])
             for i in range(2)]
    if any(extra):
        xpad = np.pad(xpad, ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])), constant_values=fill)
    return np.stack([window for _, _, window in _taps(xpad, kernel, stride, dilation)])


def _window_counts(size, kernel, stride, padding, include_pad: bool, out_size) -> np.ndarray:
    """[rows, cols]: what each average-pooling window divides by: its elements
    inside the padded input (include_pad, PyTorch's default) or inside the input."""
    counts = []
    for i, before, after in ((0, padding[0], padding[1]), (1, padding[2], padding[3])):
        start = np.arange(out_size[i]) * stride[i] - before
        end = start + kernel[i]
        low, high = (start, np.minimum(end, size[i] + after)) if include_pad else \
            (np.maximum(start, 0), np.minimum(end, size[i]))
        counts.append(high - low)
    return counts[0][:, None] * counts[1][None, :]


def _activation(name: str, y: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(y, 0.0)
    if name == "relu6":
        return np.clip(y, 0.0, 6.0)
    return y


def network_reference(network, x: np.ndarray, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor of a network (convgen.network.Network) by name, from the
    input x (N x C x H x W) and the weights by their state-dict keys: in
    float64, or for an int8 network exactly, in integers (int64 arrays)."""
    kind = np.int64 if network.is_quantized else np.float64
    tensors = {network.input: np.asarray(x, dtype=kind)}
    for layer in network.layers:
        inputs = [tensors[name] for name in layer.inputs]
        tensors[layer.output] = np.asarray(_network_layer(network, layer, inputs, weights), dtype=kind)
    return tensors


def _network_layer(network, layer, inputs: list[np.ndarray], weights: dict[str, np.ndarray]) -> np.ndarray:
    x = inputs[0]

    def array(key: str) -> np.ndarray:
        return np.asarray(weights[f"{layer.name}.{key}"], dtype=np.int64 if network.is_quantized else np.float64)
    if layer.op == "linear":   # a 1x1 convolution of each sample flattened
        spec = layer.spec
        y = reference(spec, x.reshape(x.shape[0], -1, 1, 1), array("weight").reshape(spec.weight_shape),
                      array("bias") if layer.bias else None)
        return y.reshape(x.shape[0], -1)
    if layer.spec is not None:
        spec = layer.spec
        w = array("weight") if spec.is_conv else None
        b = array("bias") if spec.is_conv and spec.bias else None
        return reference(spec, x, w, b, inputs[1] if spec.residual else None)
    if network.is_quantized:
        return _quantized_network_layer(network, layer, inputs)
    if layer.op == "batchnorm":
        scale = array("weight") / np.sqrt(array("running_var") + layer.eps)
        shift = array("bias") - array("running_mean") * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
    if layer.op == "relu":
        return np.maximum(x, 0.0)
    if layer.op == "relu6":
        return np.clip(x, 0.0, 6.0)
    if layer.op == "add":
        return np.sum(inputs, axis=0)
    if layer.op == "concat":
        return np.concatenate(inputs, axis=1)
    raise ValueError(f"no reference for op {layer.op}")


def _quantized_network_layer(network, layer, inputs: list[np.ndarray]) -> np.ndarray:
    """relu, relu6 (a clamp at the input's own scale, TFLite's fused ranges),
    concat (inputs of one scale) and TFLite's int8 ADD: each input less its
    zero point, shifted left 20 bits, scaled by its scale over twice the
    larger input scale; the sum scaled to the output, plus its zero point,
    clamped."""
    x = inputs[0]
    scale, zero_point = network.quantization[layer.inputs[0]]
    if layer.op == "relu":
        return np.maximum(x, zero_point)
    if layer.op == "relu6":
        return np.clip(x, zero_point, min(127, zero_point + quant.round_half_away(6.0 / scale)))
    if layer.op == "concat":
        return np.concatenate(inputs, axis=1)
    if layer.op == "add":
        (s1, z1), (s2, z2) = (network.quantization[t] for t in layer.inputs)
        out_scale, out_zero_point = layer.output_quantization
        m1, sh1, m2, sh2, m_out, sh_out = quant.add_multipliers(s1, s2, out_scale)
        total = (quant.requantize((inputs[0] - z1) << quant.ADD_LEFT_SHIFT, m1, sh1)
                 + quant.requantize((inputs[1] - z2) << quant.ADD_LEFT_SHIFT, m2, sh2))
        return np.clip(quant.requantize(total, m_out, sh_out) + out_zero_point, -128, 127)
    raise ValueError(f"no int8 reference for op {layer.op}")
