"""Network specs: a whole model as YAML, parsed and validated into an
immutable Network in which every tensor's shape is known.

    name: block
    input: {name: x, shape: [1, 64, 56, 56]}     # N, C, H, W (float32, NCHW)
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
in_channels, input_size, layout, dtype). The other ops: batchnorm (`eps`,
default 1e-5), relu, relu6, add (same shapes), concat (along channels),
global_avgpool (to N x C x 1 x 1), linear (`out_features`, `bias`; its
input flattened per sample). Weights are arrays of the .npz named as
PyTorch's state dict names them: `<layer>.weight`, `<layer>.bias`, and for
batchnorm also `<layer>.running_mean` and `<layer>.running_var`.

Every problem is reported, one line each, naming the file, the layer and
the field. This is the spec stage for networks; building one is still to
come (the networks issue).
"""

from __future__ import annotations

from dataclasses import dataclass
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
_OTHER_FIELDS = {"batchnorm": {"eps"}, "linear": {"out_features", "bias"}}
_DECIDED_BY_INPUT = ("batch", "in_channels", "input_size", "layout", "dtype")


@dataclass(frozen=True)
class Layer:
    name: str
    op: str
    inputs: tuple[str, ...]
    output: str
    spec: Spec | None = None       # conv2d and the pools: the layer as a layer spec
    eps: float = 1e-5              # batchnorm
    out_features: int = 0          # linear
    bias: bool = True              # linear

    def weight_shapes(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """The arrays this layer takes from the weights file, by key, with their shapes."""
        if self.spec is not None and self.spec.is_conv:
            found = {f"{self.name}.weight": self.spec.weight_shape}
            return found | ({f"{self.name}.bias": (self.spec.out_channels,)} if self.spec.bias else {})
        if self.op == "batchnorm":
            channels = shapes[self.inputs[0]][1]
            return {f"{self.name}.{key}": (channels,) for key in ("weight", "bias", "running_mean", "running_var")}
        if self.op == "linear":
            features = int(np.prod(shapes[self.inputs[0]][1:]))
            found = {f"{self.name}.weight": (self.out_features, features)}
            return found | ({f"{self.name}.bias": (self.out_features,)} if self.bias else {})
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

    @property
    def shape(self) -> dict[str, tuple[int, ...]]:
        return dict(self.shapes)

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
        if problems:
            raise SpecError(problems)
        return arrays


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
                and len(shape) == 4 and all(isinstance(v, int) and v >= 1 for v in shape)):
            self.note("input", f"expected {{name: TENSOR, shape: [N, C, H, W]}} with positive ints; got {given!r}")
            raise SpecError(self.problems)
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
                       self.label)

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
        if op in LAYER_OPS:
            return self.layer_spec(where, item, name, op, inputs, output, source)
        if op == "linear":
            features = item.get("out_features")
            if not isinstance(features, int) or features < 1 or not isinstance(item.get("bias", True), bool):
                self.note(f"{where}: out_features", f"expected a positive int (and bias true or false); "
                                                    f"got {features!r}")
                return None
            return Layer(name, op, tuple(inputs), output, out_features=features, bias=item.get("bias", True))
        if len(source) != 4:
            self.note(f"{where}: input", f"expected a N x C x H x W tensor; {inputs[0]} is {list(source)}")
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
        return Layer(name, op, tuple(inputs), output)

    def layer_spec(self, where, item, name, op, inputs, output, source) -> Layer | None:
        if len(source) != 4:
            self.note(f"{where}: input", f"expected a N x C x H x W tensor; {inputs[0]} is {list(source)}")
            return None
        data = {k: v for k, v in item.items() if k not in _OWN_FIELDS}
        data.update(name=f"{self.data['name']}_{name}", op=op, batch=source[0], in_channels=source[1],
                    input_size=[source[2], source[3]])
        try:
            spec = load_spec(data)
        except SpecError as err:
            self.problems += [problem.replace("<dict>:", f"{self.label}: {where}:", 1) for problem in err.problems]
            return None
        return Layer(name, op, tuple(inputs), output, spec=spec)

    @staticmethod
    def output_shape(index: int, layer: Layer, shapes: dict) -> tuple[int, ...]:
        source = shapes[layer.inputs[0]]
        if layer.spec is not None:
            return (source[0], layer.spec.out_channels, *layer.spec.output_size)
        if layer.op == "concat":
            return (source[0], sum(shapes[t][1] for t in layer.inputs), source[2], source[3])
        if layer.op == "global_avgpool":
            return (source[0], source[1], 1, 1)
        if layer.op == "linear":
            return (source[0], layer.out_features)
        return source
