"""The meaning of a layer, in plain float64 NumPy, written from the formulas.

    y[n, o, i, j] = act( b[o] + sum_{c, p, q} w[o, c, p, q]
                         * xpad[n, g(o) * Cg + c, i * sh + p * dh, j * sw + q * dw] )

with xpad the input padded by (top, bottom, left, right) in the padding mode,
g(o) = o // (O / groups) and Cg = C / groups. Max pooling pads with -inf,
average pooling with zeros that count towards the mean (PyTorch semantics).
A convolution's `pool` is applied to its activated output, the same way.

An int8 layer (TensorFlow Lite's scheme, see spec.Quantization) is computed
in exact integers: acc = b[o] + sum (x - input_zero_point) * w, requantized
per output channel by quant.requantize, plus the output zero point, clamped
to the activation range. Zero padding pads with the input zero point (a real
zero). Max pooling takes the max of int8 values; average pooling sums the
window and divides rounding half away from zero, as TFLite does.

This module shares no code with lowering or codegen: it is what they are
checked against.
"""

from __future__ import annotations

import numpy as np

from .quant import requantize
from .spec import Spec

_NUMPY_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge"}


def reference(spec: Spec, x: np.ndarray, w: np.ndarray | None = None, b: np.ndarray | None = None) -> np.ndarray:
    """Compute the layer in float64 (int8 layers: exactly, in integers). x and the
    result are in the spec's layouts; w is OIHW."""
    if spec.is_quantized:
        return _from_nchw(_quantized(spec, _to_nchw(np.asarray(x, dtype=np.int64), spec.input_layout), w, b),
                          spec.output_layout)
    x = _to_nchw(np.asarray(x, dtype=np.float64), spec.input_layout)
    if spec.is_conv:
        y = _conv2d(spec, x, np.asarray(w, dtype=np.float64))
        if spec.bias:
            y = y + np.asarray(b, dtype=np.float64).reshape(1, -1, 1, 1)
        y = _activation(spec.activation, y)
        if spec.pool is not None:
            p = spec.pool
            y = _pool2d(p.op, _pad(y, p.padding, "zeros", -np.inf if p.op == "maxpool2d" else 0.0),
                        p.kernel_size, p.stride, (1, 1))
    else:
        fill = -np.inf if spec.op == "maxpool2d" else 0.0
        y = _pool2d(spec.op, _pad(x, spec.padding, spec.padding_mode, fill), spec.kernel_size, spec.stride,
                    spec.dilation)
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
        y = _pool2d("maxpool2d", _pad(x.astype(np.float64), spec.padding, spec.padding_mode, -np.inf),
                    spec.kernel_size, spec.stride, spec.dilation).astype(np.int64)
    else:
        xpad = _pad(x, spec.padding, spec.padding_mode, q.input_zero_point)
        windows = [window for _, _, window in _taps(xpad, spec.kernel_size, spec.stride, spec.dilation)]
        total, count = np.sum(windows, axis=0), len(windows)
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


def _pool2d(op: str, xpad: np.ndarray, kernel, stride, dilation) -> np.ndarray:
    windows = np.stack([window for _, _, window in _taps(xpad, kernel, stride, dilation)])
    return np.max(windows, axis=0) if op == "maxpool2d" else np.sum(windows, axis=0) / len(windows)


def _activation(name: str, y: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(y, 0.0)
    if name == "relu6":
        return np.clip(y, 0.0, 6.0)
    return y
