"""ONNX import: a model file becomes a network spec (YAML) and its weights
(.npz), which convgen builds like any network spec.

    convgen import model.onnx -o DIR      # writes DIR/<name>.yaml and DIR/<name>.npz

The `onnx` package reads the model (`pip install 'convgen[onnx]'`); nothing
else is needed, and nothing of ONNX at run time. Supported, float32, NCHW,
static shapes, batch of any size (float32, or int8 in QDQ form, below):

- Conv (auto_pad NOTSET with explicit pads, SAME_UPPER, SAME_LOWER, VALID;
  group; dilations; strides; bias); BatchNormalization; Relu; Clip to
  [0, 6] (ReLU6); MaxPool and AveragePool (count_include_pad, ceil_mode);
  GlobalAveragePool, and ReduceMean over H and W keeping them; Add (of two
  tensors); Concat along channels;
- Flatten (axis 1) and Reshape to N x features before Gemm or MatMul (the
  linear layer flattens its input itself); Gemm (transA 0; alpha and beta
  folded into the weights) and MatMul by a constant, with an Add of a
  constant after it as its bias;
- Identity and Dropout pass their input on; Constant nodes, and Casts of
  constants, give values.

int8 models in QDQ form (ONNX Runtime's static quantization: QuantizeLinear
and DequantizeLinear around float ops) become int8 networks in TFLite's
scheme: a layer's output quantization is what the QuantizeLinear after it
applies, its weights and bias the integers behind a DequantizeLinear
(symmetric int8 weights, per channel or per tensor; an int32 bias at input
scale times weight scale). An average over the image whose output has its
own scale becomes a depthwise convolution of weights 1 at scale 1 / (H x W),
which requantizes as it sums. ONNX Runtime requantizes in floating point, so
its results and convgen's may differ by one quantization step.

Anything else is refused with the list of such ops and the nodes where they
are. ONNX lists pads as [top, left, bottom, right]; a network spec as
[top, bottom, left, right].
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .errors import ConvgenError, SpecError

PASS_THROUGH = ("Identity", "Dropout")
FLATTENING = ("Flatten", "Reshape")


class UnsupportedModel(ConvgenError):
    """A model with ops (or uses of them) convgen cannot import, each named with its node."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}: cannot import {len(problems)} node{'s' * (len(problems) != 1)}:\n" +
                         "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True)
class _QConstant:
    """A constant of a QDQ model: its integers, scale(s), zero point(s) and axis."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


@dataclass
class _Graph:
    """What the import builds: layers of a network spec, its weights, and how
    ONNX names map to the spec's tensors."""

    source: str
    constants: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    tensor: dict[str, str] = field(default_factory=dict)      # ONNX value name -> spec tensor name
    layers: list[dict] = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    # QDQ models: the (scale, zero point) a QuantizeLinear gives each float tensor it reads, by name;
    # constants that a DequantizeLinear dequantizes (quantized weights and biases), by its output
    quantized_as: dict[str, tuple[float, int]] = field(default_factory=dict)
    dequantized: dict[str, "_QConstant"] = field(default_factory=dict)
    input_quantization: tuple[float, int] | None = None

    @property
    def is_int8(self) -> bool:
        return self.input_quantization is not None

    def fresh(self, hint: str, prefix: str) -> str:
        base = re.sub(r"\W+", "_", hint).strip("_").lower() or prefix
        if not base[0].isalpha():
            base = f"{prefix}_{base}"
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name


def import_onnx(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(the network spec as a dict, with `source` the model's file name for
    write_network to mention; its weights by key) of an ONNX model file;
    UnsupportedModel lists what cannot be imported."""
    try:
        import onnx
        from onnx import numpy_helper, shape_inference
    except ImportError:
        raise ConvgenError("import: reading ONNX needs the onnx package: pip install 'convgen[onnx]'") from None
    source = str(path)
    try:
        model = onnx.load(source)
        model = shape_inference.infer_shapes(model)
    except FileNotFoundError:
        raise ConvgenError(f"{source}: no such file") from None
    except Exception as err:   # onnx raises its own kinds for a file that is not a model
        raise ConvgenError(f"{source}: not an ONNX model: {str(err).splitlines()[0]}") from None
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    shapes = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    g = _Graph(source, constants, shapes)
    inputs = [v for v in graph.input if v.name not in constants]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ConvgenError(f"{source}: expected one input and one output; the graph has {len(inputs)} inputs "
                           f"and {len(graph.output)} outputs")
    given = inputs[0]
    shape = shapes[given.name]
    if len(shape) != 4 or min(shape) < 1:
        raise ConvgenError(f"{source}: input {given.name}: expected a static N x C x H x W shape; got {list(shape)}")
    if given.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ConvgenError(f"{source}: input {given.name}: expected float32 (an int8 model in QDQ form "
                           f"quantizes a float input)")
    g.tensor[given.name] = g.fresh(given.name, "x")
    _find_quantization(g, graph, onnx.helper.get_attribute_value)
    g.input_quantization = g.quantized_as.get(given.name)
    for node in graph.node:
        _import_node(g, node, onnx.helper.get_attribute_value)
    if g.problems:
        raise UnsupportedModel(source, g.problems)
    output = g.tensor.get(graph.output[0].name)
    name = g.fresh(Path(source).stem if graph.name in ("", "main_graph", "torch_jit") else graph.name, "net")
    given_spec = {"name": g.tensor[given.name], "shape": list(shape)}
    if g.is_int8:
        scale, zero_point = g.input_quantization
        given_spec.update(dtype="int8", quantization={"scale": scale, "zero_point": zero_point})
    spec = {"name": name, "input": given_spec, "layers": g.layers, "output": output}
    validate_network(spec, source)
    return spec | {"source": Path(source).name}, g.weights


def write_network(spec: dict, weights: dict[str, np.ndarray], folder: str | Path) -> tuple[Path, Path]:
    """Write DIR/<name>.yaml and DIR/<name>.npz; the spec names its weights file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, weights_path = folder / f"{spec['name']}.yaml", folder / f"{spec['name']}.npz"
    np.savez(weights_path, **weights)
    lines = [f"# imported by convgen from {spec.get('source', 'a model')}", f"name: {spec['name']}",
             f"input: {_flow(spec['input'])}", f"weights: {weights_path.name}", "layers:"]
    lines += [f"  - {_flow(layer)}" for layer in spec["layers"]]
    spec_path.write_text("\n".join(lines + [f"output: {spec['output']}", ""]))
    return spec_path, weights_path


def _flow(layer: dict) -> str:
    """A layer as one line of YAML flow style."""
    return yaml.safe_dump(layer, default_flow_style=True, sort_keys=False, width=10**6).strip()


# ---------------------------------------------------------------------------
# QDQ: int8 models as ONNX Runtime's static quantization writes them
# ---------------------------------------------------------------------------
#
# Every int8 tensor is a QuantizeLinear of the float tensor an op computes,
# read back through a DequantizeLinear; weights and biases are integer
# constants behind a DequantizeLinear. The import reads the float ops as
# convgen's int8 layers: a layer's output quantization is the scale and zero
# point that the QuantizeLinear after it applies, its weights the integers
# behind the DequantizeLinear.

def _find_quantization(g: _Graph, graph, attribute_value) -> None:
    from onnx import numpy_helper
    constants = dict(g.constants)
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            constants[node.output[0]] = numpy_helper.to_array(attribute_value(node.attribute[0]))
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        scale, zero_point = constants.get(node.input[1]), constants.get(node.input[2])
        if scale is None or zero_point is None:
            continue
        axis = next((attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants and scale.size == 1:
            if zero_point.dtype != np.int8:
                g.problems.append(f"QuantizeLinear (node {node.name}): expected int8 activations; got "
                                  f"{zero_point.dtype}")
            g.quantized_as[node.input[0]] = (float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0]))
        elif node.op_type == "DequantizeLinear" and node.input[0] in constants:
            g.dequantized[node.output[0]] = _QConstant(constants[node.input[0]], scale.reshape(-1),
                                                       zero_point.reshape(-1), axis)


def _quantize_linear(g, node, attrs):
    """An int8 tensor: the same tensor as the float one it quantizes (whose layer took this scale)."""
    source = node.input[0]
    if source not in g.tensor:
        raise _Refused(f"input {source} is not a tensor the graph computes")
    g.tensor[node.output[0]] = g.tensor[source]


def _dequantize_linear(g, node, attrs):
    """An int8 tensor read back as float: the same tensor; or a quantized constant (kept in g.dequantized)."""
    if node.output[0] in g.dequantized:
        return
    g.tensor[node.output[0]] = _data(g, node, 0)


def _int8_output(g: _Graph, node) -> dict:
    """{output: {scale, zero_point}}: what the QuantizeLinear after the node applies."""
    pair = g.quantized_as.get(node.output[0])
    if pair is None:
        raise _Refused("its output is not quantized (expected a QuantizeLinear after it)")
    return {"output": {"scale": pair[0], "zero_point": pair[1]}}


def _int8_weights(g: _Graph, node, index: int, channels: int) -> tuple[np.ndarray, list[float]]:
    """(the int8 weights, their scales) behind a DequantizeLinear."""
    q = g.dequantized.get(node.input[index])
    if q is None or q.values.dtype != np.int8:
        raise _Refused(f"input {index} ({node.input[index]}): expected int8 weights behind a DequantizeLinear")
    if np.any(q.zero_point != 0) or q.values.min(initial=0) < -127:
        raise _Refused("int8 weights must be symmetric: zero point 0, values in [-127, 127]")
    if len(q.scale) not in (1, channels) or (len(q.scale) > 1 and q.axis != 0):
        raise _Refused(f"expected one weight scale, or one per output channel on axis 0; got {len(q.scale)}")
    return q.values, [float(v) for v in q.scale]


def _int32_bias(g: _Graph, node, index: int, expected_scales: np.ndarray) -> np.ndarray | None:
    """The int32 bias behind a DequantizeLinear, its scale input scale x weight scale (as TFLite's)."""
    if index >= len(node.input) or not node.input[index]:
        return None
    q = g.dequantized.get(node.input[index])
    if q is None or q.values.dtype != np.int32 or np.any(q.zero_point != 0):
        raise _Refused(f"input {index}: expected an int32 bias behind a DequantizeLinear, zero point 0")
    if not np.allclose(np.broadcast_to(q.scale, expected_scales.shape), expected_scales, rtol=1e-5):
        raise _Refused("the bias scale is not the input scale times the weight scale")
    return q.values.astype(np.int32)


def _input_scale(g: _Graph, node) -> float:
    spec_tensor = g.tensor[node.input[0]]
    return next(scale for name, (scale, _) in g.quantized_as.items() if g.tensor.get(name) == spec_tensor)


# ---------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------

def _import_node(g: _Graph, node, attribute_value) -> None:
    attrs = {a.name: attribute_value(a) for a in node.attribute}
    where = f"{node.op_type} (node {node.name or '?'}, output {node.output[0] if node.output else '?'})"
    if node.op_type == "Constant":
        from onnx import numpy_helper
        if "value" in attrs:
            g.constants[node.output[0]] = numpy_helper.to_array(attrs["value"])
        else:
            g.problems.append(f"{where}: only its `value` form is supported")
        return
    handler = _HANDLERS.get(node.op_type)
    if handler is None:
        g.problems.append(f"{where}: op {node.op_type} is not supported")
        return
    missing = [name for name in node.input
               if name and name not in g.tensor and name not in g.constants and name not in g.dequantized]
    if missing:
        return   # what it reads came from a refused node, already listed
    try:
        handler(g, node, attrs)
    except _Refused as refusal:
        g.problems.append(f"{where}: {refusal}")


class _Refused(Exception):
    """One node's use of an op that the import does not take (its message says why)."""


def _data(g: _Graph, node, index: int) -> str:
    """The spec tensor of a node's data input."""
    name = node.input[index]
    if name not in g.tensor:
        raise _Refused(f"input {index} ({name}) is a constant; expected a tensor the graph computes")
    return g.tensor[name]


def _constant(g: _Graph, node, index: int) -> np.ndarray | None:
    if index >= len(node.input) or not node.input[index]:
        return None
    name = node.input[index]
    if name not in g.constants:
        raise _Refused(f"input {index} ({name}) must be a constant (an initializer)")
    return g.constants[name]


def _layer_name(node) -> str:
    """A node's name without its op type: /layer1/conv1/Conv -> layer1/conv1 (then made an identifier)."""
    parts = [p for p in (node.name or "").split("/") if p]
    if len(parts) > 1 and parts[-1].split("_")[0] == node.op_type:
        parts = parts[:-1]
    return "_".join(parts) or node.op_type


def _add_layer(g: _Graph, node, op: str, fields: dict, inputs: list[str], weights: dict | None = None) -> None:
    name = g.fresh(_layer_name(node), op)
    out = g.fresh(f"{name}_out", "t")
    layer = {"name": name, "op": op}
    layer.update({"inputs": inputs} if op in ("add", "concat") else {"input": inputs[0]})
    layer["output"] = out
    layer.update(fields)
    g.layers.append(layer)
    for key, array in (weights or {}).items():
        kind = array.dtype if np.issubdtype(array.dtype, np.integer) else np.float32   # int8 models keep integers
        g.weights[f"{name}.{key}"] = np.ascontiguousarray(array, dtype=kind)
    g.tensor[node.output[0]] = out


def _window_fields(g: _Graph, node, attrs: dict, spatial: tuple[int, int]) -> dict:
    """kernel_size, stride, padding (and dilation) of a Conv or pool, auto_pad resolved."""
    kernel = list(attrs.get("kernel_shape", spatial))
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    if len(kernel) != 2:
        raise _Refused(f"expected a 2-D window; got kernel_shape {kernel}")
    source = g.shapes.get(node.input[0], ())
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        padding = [pads[0], pads[2], pads[1], pads[3]]          # ONNX: top, left, bottom, right
    elif auto_pad == "VALID":
        padding = [0, 0, 0, 0]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if len(source) != 4 or min(source) < 1:
            raise _Refused("auto_pad SAME needs the input's static shape")
        padding = []
        for size, k, s, d in zip(source[2:], kernel, strides, dilations):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            padding += [small, total - small] if auto_pad == "SAME_UPPER" else [total - small, small]
    else:
        raise _Refused(f"auto_pad {auto_pad!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    fields = {"kernel_size": kernel, "stride": strides, "padding": padding}
    if dilations != [1, 1]:
        fields["dilation"] = dilations
    return fields


def _conv(g, node, attrs):
    if g.is_int8:
        return _int8_conv(g, node, attrs)
    w = _constant(g, node, 1)
    b = _constant(g, node, 2)
    if w is None or w.ndim != 4:
        raise _Refused("expected 4-D weights (a 2-D convolution)")
    fields = {"out_channels": int(w.shape[0]), **_window_fields(g, node, attrs, w.shape[2:])}
    if attrs.get("group", 1) != 1:
        fields["groups"] = int(attrs["group"])
    fields["bias"] = b is not None
    _add_layer(g, node, "conv2d", fields, [_data(g, node, 0)], {"weight": w} | ({"bias": b} if b is not None else {}))


def _int8_conv(g, node, attrs):
    w = g.dequantized.get(node.input[1])
    if w is None or w.values.ndim != 4:
        raise _Refused("expected 4-D int8 weights behind a DequantizeLinear")
    values, scales = _int8_weights(g, node, 1, w.values.shape[0])
    bias = _int32_bias(g, node, 2, _input_scale(g, node) * np.asarray(scales))
    fields = {"out_channels": int(values.shape[0]), **_window_fields(g, node, attrs, values.shape[2:])}
    if attrs.get("group", 1) != 1:
        fields["groups"] = int(attrs["group"])
    fields.update(bias=bias is not None, quantization={**_int8_output(g, node), "weight_scales": scales})
    _add_layer(g, node, "conv2d", fields, [_data(g, node, 0)],
               {"weight": values} | ({"bias": bias} if bias is not None else {}))


def _batchnorm(g, node, attrs):
    scale, bias, mean, var = (_constant(g, node, k) for k in (1, 2, 3, 4))
    eps = float(f"{attrs.get('epsilon', 1e-5):.7g}")   # a float32 attribute: 1e-05, not 9.99999974738e-06
    _add_layer(g, node, "batchnorm", {"eps": eps}, [_data(g, node, 0)],
               {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var})


def _keeps_quantization(g: _Graph, node) -> None:
    """An int8 pool, ReLU or concat keeps its input's scale and zero point: the model's must agree."""
    if not g.is_int8:
        return
    given = {g.quantized_as.get(name) for name in node.input[:1] if name in g.quantized_as}
    given |= {pair for name, pair in g.quantized_as.items() if g.tensor.get(name) == g.tensor.get(node.input[0])}
    out = g.quantized_as.get(node.output[0])
    if out is None or given != {out}:
        raise _Refused(f"an int8 {node.op_type} whose output is quantized otherwise than its input "
                       f"({sorted(given)} -> {out})")


def _relu(g, node, attrs):
    _keeps_quantization(g, node)
    _add_layer(g, node, "relu", {}, [_data(g, node, 0)])


def _clip(g, node, attrs):
    low = _constant(g, node, 1) if len(node.input) > 1 and node.input[1] else attrs.get("min")
    high = _constant(g, node, 2) if len(node.input) > 2 and node.input[2] else attrs.get("max")
    if low is None or high is None or float(low) != 0.0 or float(high) != 6.0:
        raise _Refused(f"only Clip to [0, 6] (ReLU6) is supported; got [{low}, {high}]")
    _keeps_quantization(g, node)
    _add_layer(g, node, "relu6", {}, [_data(g, node, 0)])


def _pool(g, node, attrs):
    op = "maxpool2d" if node.op_type == "MaxPool" else "avgpool2d"
    fields = _window_fields(g, node, attrs, ())
    if op == "avgpool2d" and "dilation" in fields:
        raise _Refused("dilated average pooling")
    if attrs.get("storage_order", 0):
        raise _Refused("storage_order 1 (column major indices)")
    if op == "avgpool2d":
        fields["count_include_pad"] = bool(attrs.get("count_include_pad", 0))
    if attrs.get("ceil_mode", 0):
        fields["ceil_mode"] = True
    _keeps_quantization(g, node)
    _add_layer(g, node, op, fields, [_data(g, node, 0)])


def _global_avgpool(g, node, attrs):
    if g.is_int8:
        return _int8_global_avgpool(g, node)
    _add_layer(g, node, "global_avgpool", {}, [_data(g, node, 0)])


def _int8_global_avgpool(g, node):
    """An int8 average over the image whose output has a scale of its own (as
    ONNX Runtime quantizes it): a depthwise convolution over the whole image
    with weights 1 at scale 1 / (H x W), which requantizes as it sums."""
    n, c, h, w = g.shapes[node.input[0]]
    fields = {"out_channels": c, "groups": c, "kernel_size": [h, w], "bias": False,
              "quantization": {**_int8_output(g, node), "weight_scales": 1.0 / (h * w)}}
    _add_layer(g, node, "conv2d", fields, [_data(g, node, 0)], {"weight": np.ones((c, 1, h, w), np.int8)})


def _reduce_mean(g, node, attrs):
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1:
        axes = _constant(g, node, 1).tolist()
    if sorted(int(a) % 4 for a in (axes or [])) != [2, 3] or not attrs.get("keepdims", 1):
        raise _Refused(f"only ReduceMean over H and W keeping them (global average pooling); got axes {axes}")
    _global_avgpool(g, node, attrs)


def _add(g, node, attrs):
    if g.is_int8:
        _add_layer(g, node, "add", {"quantization": _int8_output(g, node)}, [_data(g, node, 0), _data(g, node, 1)])
        return
    constant = [k for k in (0, 1) if node.input[k] in g.constants]
    if constant:
        _bias_for_linear(g, node, constant[0])
        return
    _add_layer(g, node, "add", {}, [_data(g, node, 0), _data(g, node, 1)])


def _bias_for_linear(g, node, index: int) -> None:
    """Add(MatMul(x, W), b): b becomes the linear layer's bias."""
    source = g.tensor.get(node.input[1 - index])
    layer = next((layer for layer in g.layers if layer["output"] == source), None)
    if layer is None or layer["op"] != "linear" or layer.get("bias", True):
        raise _Refused("an Add of a constant is supported only as the bias of a MatMul before it")
    bias = g.constants[node.input[index]].reshape(-1)
    layer["bias"] = True
    g.weights[f"{layer['name']}.bias"] = bias.astype(np.float32)
    g.tensor[node.output[0]] = source


def _concat(g, node, attrs):
    if attrs.get("axis") not in (1, -3):
        raise _Refused(f"only Concat along channels (axis 1) is supported; got axis {attrs.get('axis')}")
    _keeps_quantization(g, node)
    _add_layer(g, node, "concat", {}, [_data(g, node, k) for k in range(len(node.input))])


def _cast(g, node, attrs):
    """A Cast of a constant (exporters cast Clip's bounds) is a constant; of a tensor, refused."""
    from onnx.helper import tensor_dtype_to_np_dtype
    if node.input[0] not in g.constants:
        raise _Refused("only a Cast of a constant is supported (the network computes in float32)")
    g.constants[node.output[0]] = g.constants[node.input[0]].astype(tensor_dtype_to_np_dtype(attrs["to"]))


def _pass_through(g, node, attrs):
    g.tensor[node.output[0]] = _data(g, node, 0)


def _flatten(g, node, attrs):
    """Flatten or Reshape to N x features: a linear layer flattens its input itself."""
    if node.op_type == "Flatten" and attrs.get("axis", 1) != 1:
        raise _Refused(f"only Flatten from axis 1; got axis {attrs.get('axis')}")
    if node.op_type == "Reshape":
        target = _constant(g, node, 1)
        source = g.shapes.get(node.input[0], ())
        if target is None or len(target) != 2 or (len(source) == 4 and target[0] not in (source[0], 0, -1)):
            raise _Refused(f"only Reshape to [N, features] before Gemm or MatMul; got {target}")
    g.tensor[node.output[0]] = _data(g, node, 0)


def _gemm(g, node, attrs):
    if attrs.get("transA", 0):
        raise _Refused("transA 1")
    if g.is_int8:
        return _int8_gemm(g, node, attrs)
    w = _constant(g, node, 1)
    c = _constant(g, node, 2)
    w = w if attrs.get("transB", 0) else w.T
    w = w * attrs.get("alpha", 1.0)
    fields = {"out_features": int(w.shape[0]), "bias": c is not None}
    weights = {"weight": w}
    if c is not None:
        weights["bias"] = (np.broadcast_to(c, (w.shape[0],)) * attrs.get("beta", 1.0)).astype(np.float32)
    _add_layer(g, node, "linear", fields, [_data(g, node, 0)], weights)


def _int8_gemm(g, node, attrs):
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        raise _Refused("an int8 Gemm with alpha or beta other than 1")
    w = g.dequantized.get(node.input[1])
    if w is None or w.values.ndim != 2:
        raise _Refused("expected 2-D int8 weights behind a DequantizeLinear")
    transposed = bool(attrs.get("transB", 0))
    outputs = w.values.shape[0] if transposed else w.values.shape[1]
    if not transposed and len(w.scale) > 1:
        raise _Refused("per-channel weight scales on a Gemm without transB")
    values, scales = _int8_weights(g, node, 1, outputs)
    values = values if transposed else values.T
    bias = _int32_bias(g, node, 2, _input_scale(g, node) * np.asarray(scales))
    fields = {"out_features": int(outputs), "bias": bias is not None,
              "quantization": {**_int8_output(g, node), "weight_scales": scales}}
    _add_layer(g, node, "linear", fields, [_data(g, node, 0)],
               {"weight": np.ascontiguousarray(values)} | ({"bias": bias} if bias is not None else {}))


def _matmul(g, node, attrs):
    w = _constant(g, node, 1)
    if w is None or w.ndim != 2 or len(g.shapes.get(node.input[0], ())) != 2:
        raise _Refused("only MatMul of N x features by a 2-D constant (a fully connected layer)")
    _add_layer(g, node, "linear", {"out_features": int(w.shape[1]), "bias": False}, [_data(g, node, 0)],
               {"weight": w.T})


_HANDLERS = {
    "Conv": _conv, "BatchNormalization": _batchnorm, "Relu": _relu, "Clip": _clip, "MaxPool": _pool,
    "AveragePool": _pool, "GlobalAveragePool": _global_avgpool, "ReduceMean": _reduce_mean, "Add": _add,
    "Concat": _concat, "Gemm": _gemm, "MatMul": _matmul, "Cast": _cast,
    "QuantizeLinear": _quantize_linear, "DequantizeLinear": _dequantize_linear,
    **{op: _pass_through for op in PASS_THROUGH}, **{op: _flatten for op in FLATTENING},
}


def validate_network(spec: dict, source: str) -> None:
    """The imported spec, validated as any network spec is (shapes that do not chain, say)."""
    from .network import load_network
    try:
        load_network({key: value for key, value in spec.items() if key != "source"})
    except SpecError as err:
        raise ConvgenError(f"{source}: the imported network does not validate:\n" + "\n".join(err.problems)) from None
