"""Network specs: a whole model as YAML, parsed and validated into an
immutable Network in which every tensor's shape is known.

    name: block
    input: {name: x, shape: [1, 64, 56, 56]}     # N, C, H, W (NCHW; float32, or dtype int8 with quantization)
    weights: block.npz                           # default: <spec file>.npz beside it, if there
    layers:
      - {name: conv1, op: conv2d, input: x, output: c1, out_channels: 64, kernel_size: 3, padding: 1, bias: false}
      - {name: bn1, op: batchnorm, input: c1, output: b1}
      - {name: relu1, op: relu, input: b1, output: r1}
      - {name: add1, op: add, inputs: [r1, x], output: y}
    output: y

Each layer reads named tensors (`input`, or `inputs` for add and concat)
and writes one (`output`); a tensor is written once, before it is read.
conv2d, maxpool2d and avgpool2d take every field of a layer spec
(docs/spec-format.md) but those the input tensor decides (batch,
in_channels, input_size, layout, dtype, and an int8 layer's input
quantization). The other ops: batchnorm (`eps`, default 1e-5), relu, relu6,
add (same shapes), concat (along channels), global_avgpool (to N x C x 1 x
1; an average pool over the whole image, as which it is kept in `spec`),
linear (`out_features`, `bias`; its input flattened per sample; kept in
`spec` as a 1x1 convolution on N x features x 1 x 1). Weights are arrays of
the .npz named as PyTorch's state dict names them: `<layer>.weight`,
`<layer>.bias`, and for batchnorm also `<layer>.running_mean` and
`<layer>.running_var`.

An int8 network (TFLite's scheme; `input: {..., dtype: int8, quantization:
{scale, zero_point}}`) gives each layer that changes the scale its output's
`quantization`: conv2d and linear `{output: {scale, zero_point},
weight_scales: [...]}` (int8 weights, int32 bias), add `{output: {...}}`;
pools, global_avgpool, relu, relu6 and concat keep their input's. No
batchnorm (fold it before quantizing).

Every problem is reported, one line each, naming the file, the layer and
the field. This is the spec stage for networks; building one is still to
come (the networks issue).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .errors import SpecError
from .spec import Spec, load_spec

NETWORK_FIELDS = ("name", "input", "weights", "layers", "output")
LAYER_OPS = ("conv2d", "maxpool2d", "avgpool2d")
OTHER_OPS = ("batchnorm", "relu", "relu6", "add", "concat", "global_avgpool", "linear")
OPS = LAYER_OPS + OTHER_OPS
_OWN_FIELDS = {"name", "op", "input", "inputs", "output"}
_OTHER_FIELDS = {"batchnorm": {"eps"}, "linear": {"out_features", "bias", "quantization"}, "add": {"quantization"}}
_DECIDED_BY_INPUT = ("batch", "in_channels", "input_size", "layout", "dtype")


@dataclass(frozen=True)
class Layer:
    name: str
    op: str
    inputs: tuple[str, ...]
    output: str
    spec: Spec | None = None       # conv2d, pools, global_avgpool, linear: the layer as a layer spec
    eps: float = 1e-5              # batchnorm
    out_features: int = 0          # linear
    bias: bool = True              # linear
    output_quantization: tuple[float, int] | None = None   # int8 add: its output's (scale, zero point)

    def weight_shapes(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """The arrays this layer takes from the weights file, by key, with their shapes."""
        if self.op == "linear":
            features = int(np.prod(shapes[self.inputs[0]][1:]))
            found = {f"{self.name}.weight": (self.out_features, features)}
            return found | ({f"{self.name}.bias": (self.out_features,)} if self.bias else {})
        if self.spec is not None and self.spec.is_conv:
            found = {f"{self.name}.weight": self.spec.weight_shape}
            return found | ({f"{self.name}.bias": (self.spec.out_channels,)} if self.spec.bias else {})
        if self.op == "batchnorm":
            channels = shapes[self.inputs[0]][1]
            return {f"{self.name}.{key}": (channels,) for key in ("weight", "bias", "running_mean", "running_var")}
        return {}


@dataclass(frozen=True)
class Network:
    name: str
    input: str
    layers: tuple[Layer, ...]
    output: str
    shapes: tuple[tuple[str, tuple[int, ...]], ...]   # every tensor's shape (NCHW, or N x features), in order
    weights_file: Path | None = None
    source: str = "<dict>"
    dtype: str = "float32"        # of every tensor: float32, or int8
    # int8: every tensor's (scale, zero point), in order
    quantizations: tuple[tuple[str, tuple[float, int]], ...] = ()

    @property
    def shape(self) -> dict[str, tuple[int, ...]]:
        return dict(self.shapes)

    @property
    def quantization(self) -> dict[str, tuple[float, int]]:
        return dict(self.quantizations)

    @property
    def is_quantized(self) -> bool:
        return self.dtype == "int8"

    def load_weights(self) -> dict[str, np.ndarray]:
        """The arrays the layers take, from the weights file, checked: each key there, each shape right."""
        if self.weights_file is None:
            raise SpecError([f"{self.source}: weights: no .npz named, and none beside the spec"])
        try:
            with np.load(self.weights_file) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError) as err:
            raise SpecError([f"{self.weights_file}: cannot read it as a NumPy .npz archive: {err}"]) from None
        problems = []
        for layer in self.layers:
            for key, shape in layer.weight_shapes(self.shape).items():
                if key not in arrays:
                    problems.append(f"{self.weights_file}: {key}: missing (layer {layer.name} takes it)")
                elif arrays[key].shape != shape:
                    problems.append(f"{self.weights_file}: {key}: expected shape {list(shape)}; "
                                    f"got {list(arrays[key].shape)}")
                elif self.is_quantized and not _fits(arrays[key], key.endswith(".bias")):
                    problems.append(f"{self.weights_file}: {key}: expected whole numbers in "
                                    f"{'int32' if key.endswith('.bias') else '[-127, 127] (int8 weights)'}")
        if problems:
            raise SpecError(problems)
        if self.is_quantized:
            arrays = {k: v.astype(np.int32 if k.endswith(".bias") else np.int8) for k, v in arrays.items()}
        return arrays


def _fits(array: np.ndarray, is_bias: bool) -> bool:
    """Whole numbers in an int8 network's range: int32 for a bias, [-127, 127] for weights."""
    low, high = (-(2**31), 2**31 - 1) if is_bias else (-127, 127)
    return bool(np.all(np.round(array) == array) and array.min(initial=0) >= low and array.max(initial=0) <= high)


def is_network(data: Any) -> bool:
    """Whether parsed YAML is a network spec (it has `layers`) rather than a layer spec."""
    return isinstance(data, dict) and "layers" in data


def load_network(source: str | Path | dict) -> Network:
    """Parse and validate a network spec from a YAML file or a dict; SpecError lists every problem."""
    if isinstance(source, dict):
        return _NetworkParser("<dict>", source, None).parse()
    path = Path(source)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError([f"{source}: no such file"]) from None
    except yaml.YAMLError as err:
        raise SpecError([f"{source}: not valid YAML: {getattr(err, 'problem', None) or err}"]) from None
    if not isinstance(data, dict):
        raise SpecError([f"{source}: expected a mapping with name, input, layers and output"])
    return _NetworkParser(str(source), data, path).parse()


class _NetworkParser:
    def __init__(self, label: str, data: dict, path: Path | None):
        self.label, self.data, self.path = label, data, path
        self.problems: list[str] = []
        self.refused: set[str] = set()   # tensors of layers already refused: their readers are not reported again
        self.quant: dict[str, tuple[float, int]] = {}   # int8: each tensor's (scale, zero point)
        self.dtype = "float32"

    def note(self, where: str, message: str) -> None:
        self.problems.append(f"{self.label}: {where}: {message}")

    def parse(self) -> Network:
        for key in self.data:
            if key not in NETWORK_FIELDS:
                self.note(str(key), f"unknown field; known fields are {', '.join(NETWORK_FIELDS)}")
        for key in ("name", "input", "layers", "output"):
            if key not in self.data:
                self.note(key, "missing (required)")
        if self.problems:
            raise SpecError(self.problems)
        name, output = self.data["name"], self.data["output"]
        if not isinstance(name, str) or not name.isidentifier():
            self.note("name", f"expected a C identifier; got {name!r}")
        given = self.data["input"]
        shape = given.get("shape") if isinstance(given, dict) else None
        if not (isinstance(given, dict) and isinstance(given.get("name"), str) and isinstance(shape, list)
                and len(shape) == 4 and all(isinstance(v, int) and v >= 1 for v in shape)
                and set(given) <= {"name", "shape", "dtype", "quantization"}):
            self.note("input", f"expected {{name: TENSOR, shape: [N, C, H, W]}} with positive ints (and for an "
                               f"int8 network dtype: int8, quantization: {{scale, zero_point}}); got {given!r}")
            raise SpecError(self.problems)
        self.input_quantization(given)
        shapes = {given["name"]: tuple(shape)}
        layers = self.data["layers"]
        if not isinstance(layers, list) or not layers:
            self.note("layers", "expected a list of layers")
            raise SpecError(self.problems)
        parsed = []
        for index, item in enumerate(layers):
            layer = self.layer(index, item, shapes)
            if layer is not None:
                parsed.append(layer)
                shapes[layer.output] = self.output_shape(index, layer, shapes)
            elif isinstance(item, dict) and isinstance(item.get("output"), str):
                self.refused.add(item["output"])
        if output not in shapes and output not in self.refused:
            self.note("output", f"no layer writes a tensor named {output!r}")
        if self.problems:
            raise SpecError(self.problems)
        return Network(name, given["name"], tuple(parsed), output, tuple(shapes.items()), self.weights_file(),
                       self.label, self.dtype, tuple(self.quant.items()))

    def input_quantization(self, given: dict) -> None:
        """The input's dtype, and for int8 its (scale, zero point)."""
        dtype = given.get("dtype", "float32")
        if dtype not in ("float32", "int8"):
            self.note("input.dtype", f"expected float32 or int8; got {dtype!r}")
            raise SpecError(self.problems)
        self.dtype = dtype
        if (dtype == "int8") != ("quantization" in given):
            self.note("input.quantization", "required for dtype int8, and only for it: {scale, zero_point}")
            raise SpecError(self.problems)
        if dtype == "int8":
            pair = self.scale_and_zero_point("input.quantization", given["quantization"])
            if pair is None:
                raise SpecError(self.problems)
            self.quant[given["name"]] = pair

    def scale_and_zero_point(self, where: str, value) -> tuple[float, int] | None:
        if not (isinstance(value, dict) and set(value) == {"scale", "zero_point"}
                and isinstance(value["scale"], (int, float)) and not isinstance(value["scale"], bool)
                and 0 < value["scale"] < float("inf") and isinstance(value["zero_point"], int)
                and -128 <= value["zero_point"] <= 127):
            self.note(where, f"expected {{scale: positive number, zero_point: int in [-128, 127]}}; got {value!r}")
            return None
        return float(value["scale"]), value["zero_point"]

    def weights_file(self) -> Path | None:
        given = self.data.get("weights")
        folder = self.path.parent if self.path is not None else Path(".")
        if given is not None:
            return folder / given
        beside = self.path.with_suffix(".npz") if self.path is not None else None
        return beside if beside is not None and beside.exists() else None

    def layer(self, index: int, item: Any, shapes: dict) -> Layer | None:
        where = f"layers[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or item.get("op") not in OPS:
            self.note(where, f"expected a mapping with a name and an op among {', '.join(OPS)}; got {item!r}")
            return None
        name, op = item["name"], item["op"]
        where = f"layers[{index}] ({name})"
        many = op in ("add", "concat")
        inputs = item.get("inputs") if many else [item.get("input")]
        if many and not (isinstance(inputs, list) and len(inputs) >= 2):
            self.note(f"{where}: inputs", f"expected a list of two or more tensor names; got {inputs!r}")
            return None
        if any(t in self.refused for t in inputs):
            return None   # what it reads was refused, and said so
        unknown = [t for t in inputs if t not in shapes]
        if unknown:
            self.note(f"{where}: {'inputs' if many else 'input'}",
                      f"no tensor {unknown[0]!r} is written before this layer; known: {', '.join(shapes)}")
            return None
        output = item.get("output")
        if not isinstance(output, str) or output in shapes:
            self.note(f"{where}: output", f"expected the name of a new tensor; got {output!r}" +
                      (" (written already: each tensor is written once)" if output in shapes else ""))
            return None
        allowed = _OWN_FIELDS | (set() if op in LAYER_OPS else _OTHER_FIELDS.get(op, set()))
        extra = [k for k in item if k not in allowed and (op not in LAYER_OPS or k in _DECIDED_BY_INPUT)]
        if extra:
            why = "the input tensor decides it" if extra[0] in _DECIDED_BY_INPUT else f"not a field of {op}"
            self.note(f"{where}: {extra[0]}", why)
            return None
        source = shapes[inputs[0]]
        if "quantization" in item and not self.quant:
            self.note(f"{where}: quantization", "for int8 networks only (the input is float32)")
            return None
        if op in LAYER_OPS:
            fields = {k: v for k, v in item.items() if k not in _OWN_FIELDS}
            return self.layer_spec(where, fields, name, op, op, inputs, output, source)
        if op == "linear":
            return self.linear(where, item, name, inputs, output, source)
        if len(source) != 4:
            self.note(f"{where}: input", f"expected a N x C x H x W tensor; {inputs[0]} is {list(source)}")
            return None
        if op == "global_avgpool":
            return self.layer_spec(where, {"kernel_size": list(source[2:])}, name, op, "avgpool2d", inputs, output,
                                   source)
        if op == "batchnorm" and self.quant:
            self.note(where, "batchnorm in an int8 network: fold it into the convolution before quantizing")
            return None
        if op == "batchnorm":
            eps = item.get("eps", 1e-5)
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
                self.note(f"{where}: eps", f"expected a positive number; got {eps!r}")
                return None
            return Layer(name, op, tuple(inputs), output, eps=float(eps))
        others = [shapes[t] for t in inputs[1:]]
        if op == "add" and any(s != source for s in others):
            self.note(f"{where}: inputs", f"expected tensors of one shape; got {[list(shapes[t]) for t in inputs]}")
            return None
        if op == "concat" and any(len(s) != 4 or (s[0], s[2], s[3]) != (source[0], source[2], source[3])
                                  for s in others):
            self.note(f"{where}: inputs", f"expected tensors that differ only in channels; got "
                                          f"{[list(shapes[t]) for t in inputs]}")
            return None
        return self.elementwise(where, item, name, op, inputs, output)

    def elementwise(self, where, item, name, op, inputs, output) -> Layer | None:
        """relu, relu6, add and concat; int8: an add's output quantization, the others' their input's."""
        if not self.quant:
            return Layer(name, op, tuple(inputs), output)
        given = [self.quant[t] for t in inputs]
        if op == "add":
            pair = self.scale_and_zero_point(f"{where}: quantization.output",
                                             (item.get("quantization") or {}).get("output"))
            if pair is None or set(item.get("quantization")) != {"output"}:
                if pair is not None:
                    self.note(f"{where}: quantization", "expected {output: {scale, zero_point}} alone")
                return None
            self.quant[output] = pair
            return Layer(name, op, tuple(inputs), output, output_quantization=pair)
        if op == "concat" and len(set(given)) != 1:
            self.note(f"{where}: inputs", f"expected int8 tensors of one scale and zero point (requantizing "
                                          f"concat is not supported yet); got {given}")
            return None
        self.quant[output] = given[0]
        return Layer(name, op, tuple(inputs), output)

    def linear(self, where, item, name, inputs, output, source) -> Layer | None:
        """A linear layer, kept in `spec` as a 1x1 convolution of its input flattened."""
        features = item.get("out_features")
        if not isinstance(features, int) or features < 1 or not isinstance(item.get("bias", True), bool):
            self.note(f"{where}: out_features", f"expected a positive int (and bias true or false); got {features!r}")
            return None
        flat = int(np.prod(source[1:]))
        fields = {"out_channels": features, "kernel_size": 1, "bias": item.get("bias", True),
                  **({"quantization": item["quantization"]} if "quantization" in item else {})}
        layer = self.layer_spec(where, fields, name, "linear", "conv2d", inputs, output, (source[0], flat, 1, 1))
        return None if layer is None else replace(layer, out_features=features, bias=item.get("bias", True))

    def layer_spec(self, where, fields, name, op, spec_op, inputs, output, source) -> Layer | None:
        """A layer kept as a layer spec of op spec_op, from its fields and its input tensor."""
        if len(source) != 4:
            self.note(f"{where}: input", f"expected a N x C x H x W tensor; {inputs[0]} is {list(source)}")
            return None
        data = dict(fields, name=f"{self.data['name']}_{name}", op=spec_op, batch=source[0], in_channels=source[1],
                    input_size=[source[2], source[3]])
        if self.quant:
            if "quantization" in data and not isinstance(data["quantization"], dict):
                self.note(f"{where}: quantization", f"expected a mapping; got {data['quantization']!r}")
                return None
            scale, zero_point = self.quant[inputs[0]]
            mine = {k: v for k, v in data.get("quantization", {}).items()}
            if "input" in mine:
                self.note(f"{where}: quantization.input", "the input tensor decides it")
                return None
            data.update(dtype="int8", quantization={"input": {"scale": scale, "zero_point": zero_point}, **mine})
        try:
            spec = load_spec(data)
        except SpecError as err:
            self.problems += [problem.replace("<dict>:", f"{self.label}: {where}:", 1) for problem in err.problems]
            return None
        if self.quant:
            q = spec.quantization
            self.quant[output] = (q.output_scale, q.output_zero_point)
        return Layer(name, op, tuple(inputs), output, spec=spec)

    @staticmethod
    def output_shape(index: int, layer: Layer, shapes: dict) -> tuple[int, ...]:
        source = shapes[layer.inputs[0]]
        if layer.op == "linear":
            return (source[0], layer.out_features)
        if layer.spec is not None:
            return (source[0], layer.spec.out_channels, *layer.spec.output_size)
        if layer.op == "concat":
            return (source[0], sum(shapes[t][1] for t in layer.inputs), source[2], source[3])
        return source
