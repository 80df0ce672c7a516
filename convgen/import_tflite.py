"""TFLite import: a .tflite model (float32, or fully int8-quantized as TFLite
Micro users have it) becomes a network spec and its weights, which convgen
builds like any network spec.

    convgen import model.tflite -o DIR      # writes DIR/<name>.yaml and DIR/<name>.npz

The flatbuffer is read with the schema LiteRT ships (`ai_edge_litert.
schema_py_generated`; `pip install 'convgen[tflite]'`). TFLite is NHWC and
the network spec NCHW: the network takes x and gives y as N x C x H x W
(transpose to and from TFLite's layout), filters become OIHW, and a fully
connected layer's weight columns are reordered from NHWC's flattening to
NCHW's. Supported: CONV_2D, DEPTHWISE_CONV_2D (any depth multiplier),
AVERAGE_POOL_2D, MAX_POOL_2D, FULLY_CONNECTED, ADD, CONCATENATION (along
channels), RELU and RELU6 (int8: at their input's scale), MEAN over H and W
(float), RESHAPE and SQUEEZE before FULLY_CONNECTED; fused ReLU and ReLU6;
SAME and VALID padding. int8 models: int8 activations with per-tensor
scales, int8 weights with per-channel (or per-tensor) scales, int32 biases:
TFLite's scheme, which convgen computes bit for bit. Anything else is
refused with every such op listed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ConvgenError
from .import_onnx import UnsupportedModel, validate_network

_ACTIVATIONS = {0: "none", 1: "relu", 3: "relu6"}


class _Refused(Exception):
    """One operator's use that the import does not take (its message says why)."""


def import_tflite(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(the network spec as a dict, with `source` the model's file name; its
    weights by key) of a .tflite file; UnsupportedModel lists what cannot be imported."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise ConvgenError("import: reading TFLite needs LiteRT's schema: pip install 'convgen[tflite]'") from None
    source = str(path)
    try:
        data = Path(source).read_bytes()
    except FileNotFoundError:
        raise ConvgenError(f"{source}: no such file") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ConvgenError(f"{source}: not a TFLite model (no TFL3 identifier)")
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    if len(model.subgraphs) != 1:
        raise ConvgenError(f"{source}: expected one subgraph; the model has {len(model.subgraphs)}")
    reader = _Reader(source, model, schema)
    return reader.network()


class _Reader:
    def __init__(self, source: str, model, schema):
        self.source, self.model, self.schema = source, model, schema
        self.graph = model.subgraphs[0]
        self.names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.tensor: dict[int, str] = {}          # TFLite tensor index -> spec tensor name
        self.layers: list[dict] = []
        self.weights: dict[str, np.ndarray] = {}
        self.quant: dict[int, tuple[float, int]] = {}
        self.problems: list[str] = []
        self.count: dict[str, int] = {}
        self.flattened: dict[int, tuple[int, ...]] = {}   # a RESHAPE/SQUEEZE's output -> its input's NHWC shape

    # -- tensors ------------------------------------------------------------
    def info(self, index: int):
        return self.graph.tensors[index]

    def shape(self, index: int) -> tuple[int, ...]:
        return tuple(int(v) for v in self.info(index).shape)

    def is_int8(self, index: int) -> bool:
        return self.info(index).type == self.schema.TensorType.INT8

    def constant(self, index: int) -> np.ndarray | None:
        """The tensor's data when it is a constant (a buffer with bytes), else None."""
        if index < 0:
            return None
        t = self.info(index)
        buffer = self.model.buffers[t.buffer]
        if buffer.data is None or len(buffer.data) == 0:
            return None
        kinds = {self.schema.TensorType.FLOAT32: np.float32, self.schema.TensorType.INT8: np.int8,
                 self.schema.TensorType.INT32: np.int32, self.schema.TensorType.INT64: np.int64}
        if t.type not in kinds:
            raise _Refused(f"constant {t.name.decode()} of an unsupported type ({t.type})")
        return np.frombuffer(bytes(buffer.data), dtype=kinds[t.type]).reshape(self.shape(index))

    def scale_and_zero_point(self, index: int) -> tuple[float, int]:
        q = self.info(index).quantization
        if q is None or q.scale is None or len(q.scale) != 1:
            raise _Refused(f"tensor {self.info(index).name.decode()}: expected one scale and zero point")
        return float(q.scale[0]), int(q.zeroPoint[0])

    def data(self, index: int) -> str:
        if index not in self.tensor:
            raise _Refused(f"input tensor {self.info(index).name.decode()} is a constant; expected one computed")
        return self.tensor[index]

    # -- the network -------------------------------------------------------------
    def network(self) -> tuple[dict, dict[str, np.ndarray]]:
        g = self.graph
        if len(g.inputs) != 1 or len(g.outputs) != 1:
            raise ConvgenError(f"{self.source}: expected one input and one output; the model has {len(g.inputs)} "
                               f"and {len(g.outputs)}")
        first = int(g.inputs[0])
        shape = self.shape(first)
        if len(shape) != 4:
            raise ConvgenError(f"{self.source}: input: expected N x H x W x C; got {list(shape)}")
        self.int8 = self.is_int8(first)
        if not self.int8 and self.info(first).type != self.schema.TensorType.FLOAT32:
            raise ConvgenError(f"{self.source}: input: expected float32 or int8 (QUANTIZE at the input is not "
                               f"supported: convert with inference_input_type int8)")
        given = {"name": "x", "shape": [shape[0], shape[3], shape[1], shape[2]]}
        if self.int8:
            scale, zero_point = self.quant[first] = self.scale_and_zero_point(first)
            given.update(dtype="int8", quantization={"scale": scale, "zero_point": zero_point})
        self.tensor[first] = "x"
        for position, op in enumerate(g.operators):
            code = self.model.operatorCodes[op.opcodeIndex]
            name = self.names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
            handler = getattr(self, f"op_{name.lower()}", None)
            where = f"operator {position} ({name})"
            if handler is None:
                self.problems.append(f"{where}: op {name} is not supported")
                continue
            if any(i >= 0 and i not in self.tensor and self.constant(i) is None for i in op.inputs):
                continue   # it reads what a refused operator wrote: listed already
            try:
                handler(op, op.builtinOptions)
            except _Refused as refusal:
                self.problems.append(f"{where}: {refusal}")
        if self.problems:
            raise UnsupportedModel(self.source, self.problems)
        output = int(g.outputs[0])
        stem = Path(self.source).stem
        spec = {"name": stem if stem.isidentifier() else "model", "input": given, "layers": self.layers,
                "output": self.tensor[output]}
        validate_network(spec, self.source)
        return spec | {"source": Path(self.source).name}, self.weights

    def add_layer(self, op, kind: str, fields: dict, inputs: list[str], weights: dict | None = None) -> None:
        self.count[kind] = self.count.get(kind, 0) + 1
        name = f"{kind}{self.count[kind]}"
        out = int(op.outputs[0])
        layer = {"name": name, "op": kind, **({"inputs": inputs} if kind in ("add", "concat") else {"input": inputs[0]}),
                 "output": name + "_out", **fields}
        self.layers.append(layer)
        for key, array in (weights or {}).items():
            self.weights[f"{name}.{key}"] = array
        self.tensor[out] = layer["output"]
        if self.int8:
            self.quant[out] = self.scale_and_zero_point(out)

    def output_quantization(self, op) -> dict:
        scale, zero_point = self.scale_and_zero_point(int(op.outputs[0]))
        return {"output": {"scale": scale, "zero_point": zero_point}}

    def activation(self, options) -> dict:
        fused = options.fusedActivationFunction
        if fused not in _ACTIVATIONS:
            raise _Refused(f"fused activation {fused} (only none, RELU, RELU6)")
        return {"activation": _ACTIVATIONS[fused]} if fused else {}

    def padding(self, options, size, kernel, stride, dilation) -> list[int]:
        """TFLite's SAME (the extra row and column at the bottom and right) or VALID."""
        if options.padding == self.schema.Padding.VALID:
            return [0, 0, 0, 0]
        padding = []
        for n, k, s, d in zip(size, kernel, stride, dilation):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            padding += [total // 2, total - total // 2]
        return padding

    # -- operators ----------------------------------------------------------
    def conv(self, op, options, filters: np.ndarray, groups: int) -> None:
        x, w_index, b_index = (int(i) for i in op.inputs[:3]) if len(op.inputs) >= 3 else (*op.inputs, -1)
        bias = self.constant(b_index)
        source = self.shape(x)
        stride = [options.strideH, options.strideW]
        dilation = [options.dilationHFactor, options.dilationWFactor]
        fields = {"out_channels": int(filters.shape[0]), "kernel_size": list(filters.shape[2:]), "stride": stride,
                  "padding": self.padding(options, source[1:3], filters.shape[2:], stride, dilation),
                  **({"dilation": dilation} if dilation != [1, 1] else {}),
                  **({"groups": groups} if groups > 1 else {}), "bias": bias is not None, **self.activation(options)}
        self.add_weighted_layer(op, "conv2d", fields, x, filters, bias, w_index)

    def add_weighted_layer(self, op, kind: str, fields: dict, x: int, weights: np.ndarray, bias, w_index: int):
        """A conv2d or linear layer: its weights, its bias (int32 in an int8 model) and, int8, its quantization."""
        arrays = {"weight": np.ascontiguousarray(weights)}
        if bias is not None:
            arrays["bias"] = bias.astype(np.int32 if self.int8 else np.float32)
        if self.int8:
            fields["quantization"] = {**self.output_quantization(op),
                                      "weight_scales": self.weight_scales(w_index, int(weights.shape[0]))}
        self.add_layer(op, kind, fields, [self.data(x)], arrays)

    def weight_scales(self, index: int, channels: int) -> list[float]:
        q = self.info(index).quantization
        scales = [float(s) for s in q.scale]
        if any(int(z) != 0 for z in q.zeroPoint):
            raise _Refused("int8 weights with a zero point other than 0 (TFLite's are symmetric)")
        if len(scales) not in (1, channels):
            raise _Refused(f"expected 1 or {channels} weight scales; got {len(scales)}")
        return scales

    def op_conv_2d(self, op, options):
        filters = self.constant(int(op.inputs[1]))                    # O, H, W, I
        self.conv(op, options, np.ascontiguousarray(filters.transpose(0, 3, 1, 2)), 1)

    def op_depthwise_conv_2d(self, op, options):
        filters = self.constant(int(op.inputs[1]))                    # 1, H, W, I * multiplier
        channels = self.shape(int(op.inputs[0]))[3]
        self.conv(op, options, np.ascontiguousarray(filters.transpose(3, 0, 1, 2)), channels)

    def pool(self, op, options, kind: str) -> None:
        x = int(op.inputs[0])
        kernel, stride = [options.filterHeight, options.filterWidth], [options.strideH, options.strideW]
        fields = {"kernel_size": kernel, "stride": stride,
                  "padding": self.padding(options, self.shape(x)[1:3], kernel, stride, [1, 1]),
                  **self.activation(options)}
        if kind == "avgpool2d":
            fields["count_include_pad"] = False     # TFLite averages the window's elements inside the input
        if self.int8 and self.scale_and_zero_point(x) != self.scale_and_zero_point(int(op.outputs[0])):
            raise _Refused("an int8 pool whose output scale differs from its input's")
        self.add_layer(op, kind, fields, [self.data(x)])

    def op_average_pool_2d(self, op, options):
        self.pool(op, options, "avgpool2d")

    def op_max_pool_2d(self, op, options):
        self.pool(op, options, "maxpool2d")

    def op_fully_connected(self, op, options):
        x, w_index = int(op.inputs[0]), int(op.inputs[1])
        b_index = int(op.inputs[2]) if len(op.inputs) > 2 else -1
        if options.keepNumDims:
            raise _Refused("keep_num_dims true")
        weights = self.constant(w_index)
        source = self.nhwc_source(x)
        if int(np.prod(source[1:])) != weights.shape[1]:
            raise _Refused(f"weights {list(weights.shape)} for an input of {list(source)}")
        if len(source) == 4:   # columns in NHWC's flattening order -> NCHW's
            _, h, w, c = source
            weights = weights.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(weights.shape[0], -1)
        bias = self.constant(b_index)
        fields = {"out_features": int(weights.shape[0]), "bias": bias is not None}
        if options.fusedActivationFunction:
            raise _Refused("a fused activation on FULLY_CONNECTED")
        self.add_weighted_layer(op, "linear", fields, x, weights, bias, w_index)

    def nhwc_source(self, index: int) -> tuple[int, ...]:
        """The NHWC shape of what a tensor was before RESHAPE or SQUEEZE flattened it."""
        return self.flattened.get(index, self.shape(index))

    def op_reshape(self, op, options):
        self.flatten(op)

    def op_squeeze(self, op, options):
        self.flatten(op)

    def flatten(self, op) -> None:
        """RESHAPE or SQUEEZE to N x features, before a FULLY_CONNECTED (which flattens its input itself)."""
        x, out = int(op.inputs[0]), int(op.outputs[0])
        if len(self.shape(out)) != 2 or self.shape(out)[0] != self.shape(x)[0]:
            raise _Refused(f"only to N x features (before FULLY_CONNECTED); got {list(self.shape(out))}")
        self.flattened[out] = self.nhwc_source(x)
        self.tensor[out] = self.data(x)
        if self.int8:
            self.quant[out] = self.quant[x]

    def op_add(self, op, options):
        a, b = (int(i) for i in op.inputs)
        activation = self.activation(options).get("activation")
        fields = {"quantization": self.output_quantization(op)} if self.int8 else {}
        self.add_layer(op, "add", fields, [self.data(a), self.data(b)])
        if activation:   # its own layer: int8, a clamp at the add's output scale, which is TFLite's fused range
            self.count[activation] = self.count.get(activation, 0) + 1
            name = f"{activation}{self.count[activation]}"
            self.layers.append({"name": name, "op": activation, "input": self.layers[-1]["output"],
                                "output": name + "_out"})
            self.tensor[int(op.outputs[0])] = name + "_out"

    def op_concatenation(self, op, options):
        if options.axis not in (3, -1):
            raise _Refused(f"only along channels (axis 3 of NHWC); got axis {options.axis}")
        if options.fusedActivationFunction:
            raise _Refused("a fused activation on CONCATENATION")
        inputs = [int(i) for i in op.inputs]
        if self.int8 and len({self.scale_and_zero_point(i) for i in inputs + [int(op.outputs[0])]}) != 1:
            raise _Refused("int8 inputs and output of different scales")
        self.add_layer(op, "concat", {}, [self.data(i) for i in inputs])

    def elementwise_activation(self, op, kind: str) -> None:
        x = int(op.inputs[0])
        if self.int8 and self.scale_and_zero_point(x) != self.scale_and_zero_point(int(op.outputs[0])):
            raise _Refused(f"an int8 {kind} whose output scale differs from its input's")
        self.add_layer(op, kind, {}, [self.data(x)])

    def op_relu(self, op, options):
        self.elementwise_activation(op, "relu")

    def op_relu6(self, op, options):
        self.elementwise_activation(op, "relu6")

    def op_mean(self, op, options):
        axes = self.constant(int(op.inputs[1]))
        if self.int8:
            raise _Refused("int8 MEAN (its rounding is not TFLite's average pool's)")
        if axes is None or sorted(int(a) % 4 for a in axes.reshape(-1)) != [1, 2] or not options.keepDims:
            raise _Refused("only MEAN over H and W keeping them (global average pooling)")
        self.add_layer(op, "global_avgpool", {}, [self.data(int(op.inputs[0]))])
