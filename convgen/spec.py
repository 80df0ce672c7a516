"""Layer specs: YAML (or a dict) parsed and validated into an immutable Spec.

The loader collects every problem in a file and raises them together, one line
each, naming the file, the field, what was expected and what was found.
Derived facts (shapes, parameter count, MACs) live here too; nothing about
loops or code does.
"""

from __future__ import annotations

import difflib
import keyword
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .errors import SpecError
from .filters import FILTERS
from .quant import quantize_multiplier, round_half_away
from .schedule.steps import parse_schedule

OPS = ("conv2d", "maxpool2d", "avgpool2d")
PADDING_MODES = ("zeros", "reflect", "replicate")
ACTIVATIONS = ("none", "relu", "relu6")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "int8")
FIELDS = (
    "name", "op", "batch", "in_channels", "out_channels", "input_size",
    "kernel_size", "stride", "padding", "padding_mode", "dilation", "groups",
    "bias", "activation", "layout", "dtype", "quantization", "weights", "schedule", "pool",
    "count_include_pad", "ceil_mode", "residual",
)
QUANT_FIELDS = ("input", "output", "weight_scales")
INT8_RANGE = (-128, 127)
WEIGHT_RANGE = (-127, 127)   # TFLite's symmetric int8 weights never use -128
INT32_RANGE = (-(2**31), 2**31 - 1)
CONV_ONLY_FIELDS = ("out_channels", "groups", "bias", "weights", "pool", "residual")
POOL_ONLY_FIELDS = ("count_include_pad", "ceil_mode")
POOL_FIELDS = ("op", "kernel_size", "stride", "padding", "count_include_pad", "ceil_mode")
POOL_OPS = ("maxpool2d", "avgpool2d")

# C keywords a name may not take, since the name becomes a C symbol.
_C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if "
    "inline int long register restrict return short signed sizeof static struct switch typedef "
    "union unsigned void volatile while _Bool _Complex _Imaginary".split()
)
_C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_MAX_ELEMENTS = 2**31 - 1
PADDING_EXPECTED = "an int, [h, w], [top, bottom, left, right], 'same' or 'valid'"


@dataclass(frozen=True)
class Pool:
    """A pooling layer that follows a convolution, applied in its epilogue:
    PyTorch's MaxPool2d (padding is -inf) or AvgPool2d (padded zeros count,
    unless count_include_pad is false); ceil_mode as PyTorch's (see Spec)."""

    op: str
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    count_include_pad: bool = True
    ceil_mode: bool = False


@dataclass(frozen=True)
class Quantization:
    """TensorFlow Lite's int8 scheme: real = scale * (q - zero_point) for
    activations; weights are symmetric per output channel (zero point 0,
    real = weight_scale[o] * q); an int32 bias has scale input_scale *
    weight_scale[o] and zero point 0. Pooling keeps the input's parameters."""

    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int
    weight_scales: tuple[float, ...] = ()   # one per output channel; () for pooling


@dataclass(frozen=True)
class Spec:
    """One layer, validated. Pooling layers have out_channels == in_channels and groups == 1.

    `padding` is resolved to (top, bottom, left, right). `weights`, when the
    spec gives them, are flat float values in OIHW order.
    """

    name: str
    op: str
    batch: int
    in_channels: int
    out_channels: int
    input_size: tuple[int, int]
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    padding_mode: str
    dilation: tuple[int, int]
    groups: int
    bias: bool
    activation: str
    input_layout: str
    output_layout: str
    dtype: str
    weights: tuple[float, ...] | None = None
    bias_values: tuple[float, ...] | None = None
    # schedule written in the spec file: Steps, or "naive" / "default"; None when it gives none
    schedule: tuple | str | None = None
    pool: Pool | None = None  # conv2d only: pooling fused after bias and activation
    # pooling only, as PyTorch's: average pooling divides by the window's elements inside the
    # padded input (count_include_pad, PyTorch's default) or inside the input alone (ONNX's and
    # TFLite's); ceil_mode rounds the output size up, so a last window may hang past the padding
    # (it keeps at least one element of the input or of the top/left padding)
    count_include_pad: bool = True
    ceil_mode: bool = False
    quantization: Quantization | None = None  # dtype int8 only
    source: str = "<dict>"
    # conv2d, float32: the kernel also takes r, of the convolution's output shape (before a fused
    # pool) in y's layout, added to the sum before the activation: y = pool(activation(conv(x) + b + r))
    residual: bool = False

    @property
    def is_quantized(self) -> bool:
        return self.dtype == "int8"

    @property
    def is_conv(self) -> bool:
        return self.op == "conv2d"

    @property
    def conv_output_size(self) -> tuple[int, int]:
        """Output rows and columns of the convolution or pooling window itself."""
        return _output_size(self.input_size, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode)

    @property
    def output_size(self) -> tuple[int, int]:
        """Output rows and columns of the layer, after a fused pool if there is one."""
        size = self.conv_output_size
        if self.pool is None:
            return size
        return _output_size(size, self.pool.kernel_size, self.pool.stride, self.pool.padding, (1, 1),
                            self.pool.ceil_mode)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of x in the spec's input layout."""
        return layout_shape(self.input_layout, self.batch, self.in_channels, *self.input_size)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of y in the spec's output layout."""
        return layout_shape(self.output_layout, self.batch, self.out_channels, *self.output_size)

    @property
    def residual_shape(self) -> tuple[int, ...]:
        """Shape of r (a residual layer's), in the output layout: the convolution's
        output, before a fused pool."""
        return layout_shape(self.output_layout, self.batch, self.out_channels, *self.conv_output_size)

    @property
    def weight_shape(self) -> tuple[int, int, int, int] | None:
        """OIHW: [out_channels, in_channels / groups, kh, kw]; None for pooling."""
        if not self.is_conv:
            return None
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def param_count(self) -> int:
        if not self.is_conv:
            return 0
        return int(np.prod(self.weight_shape)) + (self.out_channels if self.bias else 0)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the convolution over its whole output (for
        pooling: window element visits); a fused pool adds no MACs."""
        oh, ow = self.conv_output_size
        kh, kw = self.kernel_size
        per_output = kh * kw * (self.in_channels // self.groups if self.is_conv else 1)
        return self.batch * self.out_channels * oh * ow * per_output

    @property
    def executed_macs(self) -> int:
        """The MACs over the taps that fall inside the input: with zero padding,
        a tap in the padding adds nothing, and convgen's kernels and the peers
        skip it, so % of peak counts these (macs would pass 100%: 3x3 256 at
        14x14 showed 109%). Equal to macs without padding, or where the
        padding reads real values (reflect, replicate)."""
        if self.padding_mode != "zeros" or not (any(self.padding) or self.ceil_mode):
            return self.macs
        (h, w), (oh, ow) = self.input_size, self.conv_output_size
        rows = _taps_inside(h, oh, self.kernel_size[0], self.stride[0], self.dilation[0], self.padding[0])
        cols = _taps_inside(w, ow, self.kernel_size[1], self.stride[1], self.dilation[1], self.padding[2])
        per_tap = self.in_channels // self.groups if self.is_conv else 1
        return self.batch * self.out_channels * rows * cols * per_tap

    @property
    def array_dtypes(self) -> dict[str, np.dtype]:
        """NumPy dtype of each argument: x, w, b, r (a residual), y."""
        if self.is_quantized:
            return {"x": np.dtype(np.int8), "w": np.dtype(np.int8), "b": np.dtype(np.int32), "y": np.dtype(np.int8)}
        return dict.fromkeys(("x", "w", "b", "r", "y"), np.dtype(np.float32))

    def weight_array(self) -> np.ndarray | None:
        """The spec's own weights in OIHW (float32, or int8 when quantized), or None when the caller supplies them."""
        if self.weights is None:
            return None
        return np.array(self.weights, dtype=self.array_dtypes["w"]).reshape(self.weight_shape)

    def bias_array(self) -> np.ndarray | None:
        if self.bias_values is None:
            return None
        return np.array(self.bias_values, dtype=self.array_dtypes["b"])

    def requantization(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per output channel, TFLite's fixed-point (multiplier, shift) for the real
        multiplier input_scale * weight_scale[o] / output_scale (quantized conv2d)."""
        q = self.quantization
        pairs = [quantize_multiplier(q.input_scale * ws / q.output_scale) for ws in q.weight_scales]
        return tuple(m for m, _ in pairs), tuple(s for _, s in pairs)

    def activation_range(self) -> tuple[int, int]:
        """The int8 output clamp of a quantized layer, as TFLite's
        CalculateActivationRangeQuantized: ReLU from the output zero point,
        ReLU6 up to its quantized 6."""
        q = self.quantization
        low, high = INT8_RANGE
        if self.activation in ("relu", "relu6"):
            low = max(low, q.output_zero_point)
        if self.activation == "relu6":
            high = min(high, q.output_zero_point + round_half_away(6.0 / q.output_scale))
        return low, high


def layout_shape(layout: str, n: int, c: int, h: int, w: int) -> tuple[int, ...]:
    sizes = {"N": n, "C": c, "H": h, "W": w}
    return tuple(sizes[axis] for axis in layout)


def _taps_inside(size: int, outputs: int, kernel: int, stride: int, dilation: int, before: int) -> int:
    """Over all outputs along one axis, the kernel taps that read inside the input."""
    return sum(1 for o in range(outputs) for k in range(kernel) if 0 <= o * stride + k * dilation - before < size)


def _output_size(size, kernel, stride, padding, dilation, ceil_mode: bool = False) -> tuple[int, int]:
    """Outputs along each axis; ceil_mode as PyTorch's pooling_output_shape: rounded
    up, less one where the last window would start past the input and its top/left padding."""
    top, bottom, left, right = padding
    pads, before = (top + bottom, left + right), (top, left)
    found = []
    for i in range(2):
        span = size[i] + pads[i] - dilation[i] * (kernel[i] - 1) - 1
        out = (span + (stride[i] - 1 if ceil_mode else 0)) // stride[i] + 1
        if ceil_mode and (out - 1) * stride[i] >= size[i] + before[i]:
            out -= 1
        found.append(out)
    return tuple(found)


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's 'same': ceil(size / stride) outputs, the odd extra pad at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def load_spec(source: str | Path | dict) -> Spec:
    """Parse and validate a layer spec from a YAML file path or a dict.

    Raises SpecError listing every problem found, one line each.
    """
    if isinstance(source, dict):
        return _SpecParser("<dict>", source).parse()
    path = Path(source)
    label = str(source)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError([f"{label}: no such file"]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise SpecError([f"{label}: cannot read the file: {err.__class__.__name__}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid syntax"
        raise SpecError([f"{label}: not valid YAML{where}: {problem}"]) from None
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise SpecError([f"{label}: expected a mapping of spec fields (one layer per file); got {found}"])
    return _SpecParser(label, data).parse()


def _suggest(value: Any, choices) -> str:
    if not isinstance(value, str):
        return ""
    lowered = {c.lower(): c for c in choices}
    if value.lower() in lowered:
        return f"; did you mean '{lowered[value.lower()]}'?"
    close = difflib.get_close_matches(value.lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean '{lowered[close[0]]}'?" if close else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Missing(Exception):
    """A field could not be parsed; its problem is already recorded."""


class _SpecParser:
    def __init__(self, label: str, data: dict):
        self.label = label
        self.data = data
        self.problems: list[str] = []

    # -- recording problems -------------------------------------------------
    def fail(self, field: str, expected: str, found: Any, hint: str = "") -> None:
        self.problems.append(f"{self.label}: {field}: expected {expected}; got {_shorten(found)}{hint}")
        raise _Missing(field)

    def note(self, field: str, message: str) -> None:
        self.problems.append(f"{self.label}: {field}: {message}")

    def field(self, name: str, parse, default=None, required=False):
        """Parse one field; a failed field yields None and a recorded problem."""
        if name not in self.data:
            if required:
                self.note(name, "missing (required)")
            return default
        try:
            return parse(name, self.data[name])
        except _Missing:
            return None

    # -- value parsers ------------------------------------------------------
    def choice(self, choices):
        def parse(field, value):
            if value not in choices:
                options = ", ".join(repr(c) for c in choices)
                self.fail(field, f"one of {options}", value, _suggest(value, choices))
            return value
        return parse

    def boolean(self, field, value):
        if not isinstance(value, bool):
            self.fail(field, "true or false", value)
        return value

    def positive_int(self, field, value):
        if not _is_int(value) or value < 1:
            self.fail(field, "a positive int", value)
        return value

    def pair(self, field, value):
        """int or [a, b], both positive."""
        if _is_int(value) and value >= 1:
            return (value, value)
        if isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value):
            return tuple(value)
        self.fail(field, "a positive int or [h, w] of positive ints", value)

    def input_size(self, field, value):
        if isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value):
            return tuple(value)
        self.fail(field, "[H, W] of positive ints", value)

    def padding(self, field, value):
        if isinstance(value, str):
            if value in ("same", "valid"):
                return value
            self.fail(field, PADDING_EXPECTED, value, _suggest(value, ("same", "valid")))
        if _is_int(value) and value >= 0:
            return (value, value, value, value)
        if isinstance(value, list) and all(_is_int(v) and v >= 0 for v in value):
            if len(value) == 2:
                return (value[0], value[0], value[1], value[1])
            if len(value) == 4:
                return tuple(value)
        self.fail(field, PADDING_EXPECTED + " (non-negative)", value)

    def bias(self, field, value):
        if isinstance(value, bool):
            return value
        if isinstance(value, list) and value and all(_is_number(v) for v in value):
            return tuple(float(v) for v in value)
        self.fail(field, "true, false or a list of numbers (one per output channel)", value)

    def layout(self, field, value):
        if isinstance(value, str):
            value = {"input": value, "output": value}
        if not isinstance(value, dict):
            self.fail(field, "{input: NCHW|NHWC, output: NCHW|NHWC} or one of 'NCHW', 'NHWC'", value)
        for key in value:
            if key not in ("input", "output"):
                self.note(f"{field}.{key}", f"unknown key; expected 'input' or 'output'{_suggest(key, ('input', 'output'))}")
        result = []
        for key in ("input", "output"):
            got = value.get(key, "NCHW")
            if got not in LAYOUTS:
                self.note(f"{field}.{key}", f"expected 'NCHW' or 'NHWC'; got {got!r}{_suggest(got, LAYOUTS)}")
                got = None
            result.append(got)
        if None in result:
            raise _Missing(field)
        return tuple(result)

    def name(self, field, value):
        if not isinstance(value, str) or not _C_IDENTIFIER.match(value):
            self.fail(field, "a C identifier (letters, digits, '_', not starting with a digit)", value)
        if value in _C_KEYWORDS or keyword.iskeyword(value):
            self.fail(field, "a C identifier that is not a keyword", value)
        return value

    def weights(self, field, value):
        if isinstance(value, str):
            if value not in FILTERS:
                self.fail(field, f"a filter name ({', '.join(FILTERS)}) or nested lists of numbers",
                          value, _suggest(value, FILTERS))
            return np.array(FILTERS[value], dtype=np.float64)
        try:
            array = np.array(value, dtype=np.float64)
        except (ValueError, TypeError):
            array = None
        if array is None or array.ndim not in (2, 4) or array.size == 0 or isinstance(value, bool):
            self.fail(field, "a filter name or numbers shaped [kh, kw] or [out, in/groups, kh, kw]",
                      value)
        return array

    def pool(self, field, value):
        if not isinstance(value, dict):
            self.fail(field, "a mapping {op: maxpool2d|avgpool2d, kernel_size: ..., stride: ..., padding: ...}", value)
        for key in value:
            if key not in POOL_FIELDS:
                self.note(f"{field}.{key}", f"unknown field{_suggest(key, POOL_FIELDS) or '; known: ' + ', '.join(POOL_FIELDS)}")
        if "op" not in value or "kernel_size" not in value:
            self.note(field, "expected at least op and kernel_size")
            raise _Missing(field)
        op = self.choice(POOL_OPS)(f"{field}.op", value["op"])
        kernel = self.pair(f"{field}.kernel_size", value["kernel_size"])
        stride = self.pair(f"{field}.stride", value["stride"]) if "stride" in value else kernel
        padding = self.padding(f"{field}.padding", value.get("padding", 0))
        include_pad = self.boolean(f"{field}.count_include_pad", value.get("count_include_pad", True))
        ceil_mode = self.boolean(f"{field}.ceil_mode", value.get("ceil_mode", False))
        if op == "maxpool2d" and "count_include_pad" in value:
            self.fail(f"{field}.count_include_pad", "no such field for maxpool2d (only avgpool2d has it)",
                      value["count_include_pad"])
        if isinstance(padding, str):
            self.fail(f"{field}.padding", "an int, [h, w] or [top, bottom, left, right]", padding)
        for axis, pads in ((0, padding[:2]), (1, padding[2:])):
            if max(pads) > kernel[axis] // 2:
                self.fail(f"{field}.padding", f"at most half the pooling window ({kernel[axis] // 2})", list(padding))
        return Pool(op, kernel, stride, padding, include_pad, ceil_mode)

    def scale_and_zero_point(self, field, value):
        if not isinstance(value, dict) or set(value) != {"scale", "zero_point"}:
            self.fail(field, "{scale: positive number, zero_point: int in [-128, 127]}", value)
        scale, zero_point = value["scale"], value["zero_point"]
        if not _is_number(scale) or not (0 < scale < float("inf")):
            self.fail(f"{field}.scale", "a positive number", scale)
        if not _is_int(zero_point) or not INT8_RANGE[0] <= zero_point <= INT8_RANGE[1]:
            self.fail(f"{field}.zero_point", "an int in [-128, 127]", zero_point)
        return float(scale), zero_point

    def quantization(self, field, value):
        """{input: {scale, zero_point}, output: {...}, weight_scales: number or list};
        returned as a dict of what parsed, checked against the layer in parse()."""
        if not isinstance(value, dict):
            self.fail(field, "a mapping {input: {scale, zero_point}, output: {scale, zero_point}, "
                             "weight_scales: [...]}", value)
        for key in value:
            if key not in QUANT_FIELDS:
                self.note(f"{field}.{key}", f"unknown field{_suggest(key, QUANT_FIELDS) or '; known: ' + ', '.join(QUANT_FIELDS)}")
        parsed = {}
        for key in ("input", "output"):
            if key in value:
                try:
                    parsed[key] = self.scale_and_zero_point(f"{field}.{key}", value[key])
                except _Missing:
                    pass
        if "weight_scales" in value:
            scales = value["weight_scales"]
            scales = scales if isinstance(scales, list) else [scales]
            if not scales or not all(_is_number(v) and 0 < v < float("inf") for v in scales):
                self.note(f"{field}.weight_scales", f"expected a positive number or a list of them (one per "
                                                   f"output channel); got {_shorten(value['weight_scales'])}")
            else:
                parsed["weight_scales"] = tuple(float(v) for v in scales)
        return parsed

    def schedule(self, field, value):
        try:
            return parse_schedule(value, f"{self.label}: {field}")
        except SpecError as err:
            self.problems.extend(err.problems)
            raise _Missing(field) from None

    # -- the whole spec -----------------------------------------------------
    def parse(self) -> Spec:
        for key in self.data:
            if key not in FIELDS:
                self.note(str(key), f"unknown field{_suggest(key, FIELDS) or '; known fields are ' + ', '.join(FIELDS)}")

        name = self.field("name", self.name, required=True)
        op = self.field("op", self.choice(OPS), required=True)
        is_conv = op == "conv2d"
        if op in ("maxpool2d", "avgpool2d"):
            for key in CONV_ONLY_FIELDS:
                if key in self.data:
                    self.note(key, f"not a field of {op} (only conv2d has it)")
        else:
            for key in POOL_ONLY_FIELDS:
                if key in self.data:
                    self.note(key, "not a field of conv2d (pooling layers have it; a fused pool takes it "
                                   "in `pool:`)")

        batch = self.field("batch", self.positive_int, default=1)
        in_channels = self.field("in_channels", self.positive_int, required=True)
        out_channels = self.field("out_channels", self.positive_int, required=is_conv) if is_conv else in_channels
        input_size = self.field("input_size", self.input_size, required=True)
        weights = self.field("weights", self.weights) if is_conv else None
        kernel_size = self.field("kernel_size", self.pair, required=weights is None)
        if kernel_size is None and weights is not None:
            kernel_size = tuple(weights.shape[-2:])
        stride = self.field("stride", self.pair, default=(1, 1) if is_conv else kernel_size)
        padding = self.field("padding", self.padding, default=(0, 0, 0, 0))
        padding_mode = self.field("padding_mode", self.choice(PADDING_MODES), default="zeros")
        dilation = self.field("dilation", self.pair, default=(1, 1))
        groups = self.field("groups", self.positive_int, default=1) if is_conv else 1
        bias = self.field("bias", self.bias, default=True) if is_conv else False
        activation = self.field("activation", self.choice(ACTIVATIONS), default="none")
        layout = self.field("layout", self.layout, default=("NCHW", "NCHW"))
        dtype = self.field("dtype", self.choice(DTYPES), default="float32")
        quantization = self.field("quantization", self.quantization)
        schedule = self.field("schedule", self.schedule, default=None)
        pool = self.field("pool", self.pool) if is_conv else None
        residual = self.field("residual", self.boolean, default=False) if is_conv else False
        if residual and dtype == "int8":
            self.note("residual", "not supported with dtype int8 yet")
        include_pad = self.field("count_include_pad", self.boolean, default=True) if not is_conv else True
        ceil_mode = self.field("ceil_mode", self.boolean, default=False) if not is_conv else False
        if op == "maxpool2d" and "count_include_pad" in self.data:
            self.note("count_include_pad", "not a field of maxpool2d (only avgpool2d has it)")
        if padding_mode != "zeros" and (include_pad is False or ceil_mode):
            self.note("count_include_pad" if include_pad is False else "ceil_mode",
                      f"expected padding_mode zeros: with {padding_mode} padding the padded values are "
                      f"the input's own" + (" and count" if include_pad is False else
                                             ", and a window past them has none"))

        if self.problems:
            raise SpecError(self.problems)

        if groups and (in_channels % groups or out_channels % groups):
            self.note("groups", f"expected a divisor of in_channels ({in_channels}) and "
                                f"out_channels ({out_channels}); got {groups}")
        if op == "avgpool2d" and dilation != (1, 1):
            self.note("dilation", f"expected 1 for avgpool2d (PyTorch's AvgPool2d has none); got {list(dilation)}")
        if padding in ("same", "valid"):
            padding = self._resolve_named_padding(padding, input_size, kernel_size, stride, dilation)
        self._check_padding(op, padding, padding_mode, input_size, kernel_size, dilation)
        out = _output_size(input_size, kernel_size, stride, padding, dilation, bool(ceil_mode))
        if pool is not None and min(out) >= 1:
            pooled = _output_size(out, pool.kernel_size, pool.stride, pool.padding, (1, 1), pool.ceil_mode)
            if min(pooled) < 1:
                self.note("pool", f"expected an output of at least 1x1; the convolution's {list(out)} pooled by "
                                  f"{list(pool.kernel_size)} gives {list(pooled)}")
        if min(out) < 1:
            self.note("input_size", f"expected an output of at least 1x1; {list(input_size)} with kernel "
                                    f"{list(kernel_size)}, dilation {list(dilation)}, padding "
                                    f"{list(padding)} gives {list(out)}")
        self._check_sizes(batch, in_channels, out_channels, input_size, out, kernel_size, groups)
        if min(out) >= 1 and not self.problems:
            self._check_windows_touch_input(op, padding, padding_mode, input_size, kernel_size, stride, dilation, out)
        weight_values = self._check_weights(weights, out_channels, in_channels, groups, kernel_size)
        bias_values = None
        if isinstance(bias, tuple):
            bias_values, bias = bias, True
            if len(bias_values) != out_channels:
                self.note("bias", f"expected {out_channels} numbers (one per output channel); got {len(bias_values)}")
        quant = None
        if dtype == "int8":
            quant = self._check_quantization(quantization, is_conv, out_channels, pool)
            weight_values = self._integers("weights", weight_values, WEIGHT_RANGE, "TFLite's symmetric int8 weights")
            bias_values = self._integers("bias", bias_values, INT32_RANGE, "an int32 bias")
        elif quantization is not None:
            self.note("quantization", f"only for dtype int8; this layer is {dtype}")
        if self.problems:
            raise SpecError(self.problems)

        return Spec(
            name=name, op=op, batch=batch, in_channels=in_channels, out_channels=out_channels,
            input_size=input_size, kernel_size=kernel_size, stride=stride, padding=padding,
            padding_mode=padding_mode, dilation=dilation, groups=groups, bias=bias,
            activation=activation, input_layout=layout[0], output_layout=layout[1], dtype=dtype,
            weights=weight_values, bias_values=bias_values, schedule=schedule, pool=pool,
            quantization=quant, source=self.label, count_include_pad=include_pad, ceil_mode=ceil_mode,
            residual=residual,
        )

    def _check_quantization(self, parsed, is_conv, out_channels, pool) -> Quantization | None:
        """The int8 layer's Quantization, or None with the problems noted."""
        if parsed is None:
            if "quantization" not in self.data:
                self.note("quantization", "required for dtype int8: {input: {scale, zero_point}, "
                                          "output: {scale, zero_point}" + (", weight_scales: [...]}" if is_conv else "}"))
            return None
        if "input" not in parsed:
            self.note("quantization.input", "missing (required): {scale, zero_point}")
            return None
        if not is_conv:
            output = parsed.get("output", parsed["input"])
            if output != parsed["input"]:
                self.note("quantization.output", f"expected the input's scale and zero point (TFLite's int8 "
                                                 f"pooling keeps them); got {list(output)}")
            if "weight_scales" in self.data["quantization"]:
                self.note("quantization.weight_scales", "pooling has no weights")
            return Quantization(*parsed["input"], *parsed["input"])
        if "output" not in parsed or "weight_scales" not in parsed:
            missing = [k for k in ("output", "weight_scales") if k not in parsed and k not in self.data["quantization"]]
            for key in missing:
                self.note(f"quantization.{key}", "missing (required for an int8 conv2d)")
            return None
        scales = parsed["weight_scales"]
        if len(scales) not in (1, out_channels):
            self.note("quantization.weight_scales", f"expected 1 or {out_channels} scales (one per output "
                                                   f"channel); got {len(scales)}")
            return None
        if pool is not None:
            self.note("pool", "not supported with dtype int8 yet; write the pool as its own int8 layer")
        return Quantization(*parsed["input"], *parsed["output"], scales * (out_channels // len(scales)))

    def _integers(self, field, values, allowed, what):
        """values (floats from YAML) as ints when each is a whole number in range, else a noted problem."""
        if values is None:
            return None
        low, high = allowed
        bad = [v for v in values if v != int(v) or not low <= v <= high]
        if bad:
            self.note(field, f"expected whole numbers in [{low}, {high}] ({what}); got {_shorten(bad[0])}")
            return None
        return tuple(int(v) for v in values)

    def _resolve_named_padding(self, padding, input_size, kernel_size, stride, dilation):
        if padding == "valid":
            return (0, 0, 0, 0)
        (top, bottom), (left, right) = (
            same_padding(input_size[i], kernel_size[i], stride[i], dilation[i]) for i in range(2)
        )
        return (top, bottom, left, right)

    def _check_padding(self, op, padding, mode, input_size, kernel_size, dilation):
        top, bottom, left, right = padding
        if mode == "reflect":
            too_wide = [f"{pad} on the {side}" for side, pad, size in (
                ("top", top, input_size[0]), ("bottom", bottom, input_size[0]),
                ("left", left, input_size[1]), ("right", right, input_size[1])) if pad >= size]
            if too_wide:
                self.note("padding", f"expected reflect padding smaller than the input "
                                     f"({input_size[0]}x{input_size[1]}) on every side; got {', '.join(too_wide)}")
        if op != "conv2d" and mode == "zeros":
            # PyTorch's rule, so that (without dilation) no window lies wholly in the padding.
            for axis, pads in ((0, (top, bottom)), (1, (left, right))):
                half = (dilation[axis] * (kernel_size[axis] - 1) + 1) // 2
                if max(pads) > half:
                    self.note("padding", f"expected at most half the effective kernel ({half}) for "
                                         f"{op}; got {list(padding)}")
                    return

    def _check_windows_touch_input(self, op, padding, mode, input_size, kernel_size, stride, dilation, out):
        """With dilation, a max-pooling window can skip over the whole input and see only padding."""
        if op != "maxpool2d" or mode != "zeros":
            return
        for axis, name in ((0, "rows"), (1, "columns")):
            before = padding[2 * axis]
            for o in range(out[axis]):
                taps = (o * stride[axis] + k * dilation[axis] - before for k in range(kernel_size[axis]))
                if not any(0 <= t < input_size[axis] for t in taps):
                    self.note("dilation", f"expected every max-pooling window to cover an input element; "
                                          f"output {name} {o} sees only padding with dilation {list(dilation)}")
                    return

    def _check_sizes(self, batch, in_channels, out_channels, input_size, out, kernel_size, groups):
        """Offsets must fit a signed 32-bit int, so the C runs on 32-bit microcontrollers too."""
        tensors = {"input_size": ("input", batch * in_channels * input_size[0] * input_size[1]),
                   "out_channels": ("weights", out_channels * (in_channels // groups) * kernel_size[0] * kernel_size[1]),
                   "batch": ("output", batch * out_channels * max(out[0], 0) * max(out[1], 0))}
        for field, (what, count) in tensors.items():
            if count > _MAX_ELEMENTS:
                self.note(field, f"expected at most {_MAX_ELEMENTS:,} elements per tensor; the {what} "
                                 f"would have {count:,}")
                return

    def _check_weights(self, weights, out_channels, in_channels, groups, kernel_size):
        if weights is None:
            return None
        full = (out_channels, in_channels // groups, *kernel_size)
        if weights.shape[-2:] != tuple(kernel_size):
            self.note("weights", f"expected a {kernel_size[0]}x{kernel_size[1]} kernel (kernel_size); "
                                 f"got {weights.shape[-2]}x{weights.shape[-1]}")
            return None
        if weights.ndim == 4 and weights.shape != full:
            self.note("weights", f"expected shape {list(full)} (OIHW); got {list(weights.shape)}")
            return None
        return tuple(float(v) for v in np.broadcast_to(weights, full).ravel())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shorten(value: Any) -> str:
    """repr of a found value, cut short so a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
