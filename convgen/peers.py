"""The peers `convgen bench` times convgen against, each running one layer.

Each peer function takes the spec, the inputs (in the spec's layouts) and a
thread count, and returns {contender name: (call, to_user)}: `call()` runs
the layer on inputs converted beforehand to the peer's preferred layout, and
`to_user` turns its result into the spec's output layout for the check. A
peer that cannot express a layer raises NotImplementedError; one that is not
installed, ImportError. All are optional extras (`pip install
'convgen[bench]'`):

- PyTorch 2.13.0 (exactly that version: others pull gigabytes of CUDA
  packages): F.conv2d and the pooling functions, NCHW and channels_last;
- ONNX Runtime, with onnx to write the one-layer graph: weights are graph
  initializers, which it pre-packs when the session starts;
- TFLite, as ai-edge-litert's interpreter (LiteRT) with its default XNNPACK
  delegate, TensorFlow's runtime for float inference on a CPU, NHWC layers
  only (its native layout): the one-op model is written with the flatbuffer
  schema LiteRT ships (schema_py_generated), so TensorFlow's converter, a
  package of gigabytes, is not needed;
- NumPy: im2col and a BLAS matrix product per group, the BLAS held to the
  thread count by threadpoolctl.
"""

from __future__ import annotations

import numpy as np

from .runtime import aligned_copy
from .spec import Spec, same_padding


def as_nchw(x: np.ndarray, layout: str) -> np.ndarray:
    return x if layout == "NCHW" else aligned_copy(x.transpose(0, 3, 1, 2))


def from_nchw(y: np.ndarray, layout: str) -> np.ndarray:
    return y if layout == "NCHW" else y.transpose(0, 2, 3, 1)


# ---------------------------------------------------------------------------
# PyTorch: F.conv2d and the pooling functions, NCHW and channels_last
# ---------------------------------------------------------------------------

def _torch(spec: Spec, inputs, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    w = torch.from_numpy(inputs["w"]) if spec.is_conv else None
    b = torch.from_numpy(inputs["b"]) if spec.is_conv and spec.bias else None
    layer = torch_layer(spec, w, b)
    found = {}
    for name, memory in (("torch (NCHW)", torch.contiguous_format), ("torch (channels_last)", torch.channels_last)):
        x = torch.from_numpy(as_nchw(inputs["x"], spec.input_layout)).contiguous(memory_format=memory)
        if w is not None:
            w = w.contiguous(memory_format=memory)
            layer = torch_layer(spec, w, b)

        def call(x=x, layer=layer):
            with torch.no_grad():
                return layer(x)
        found[name] = (call, lambda y: from_nchw(y.contiguous().numpy(), spec.output_layout))
    return found


def torch_layer(spec: Spec, w, b):
    """The layer as PyTorch functions of an NCHW tensor x (on any device), weights w and bias b given."""
    import torch.nn.functional as F

    top, bottom, left, right = spec.padding
    mode = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}[spec.padding_mode]
    symmetric = top == bottom and left == right and mode == "constant"
    if not symmetric and (spec.ceil_mode or not spec.count_include_pad):
        raise NotImplementedError("ceil_mode or count_include_pad false with uneven padding (F.pad would "
                                  "make the padding count as input)")
    _torch_pool_expressible(spec.pool)

    def layer(x):
        if not symmetric:
            fill = float("-inf") if spec.op == "maxpool2d" else 0.0
            x = F.pad(x, (left, right, top, bottom), mode=mode, **({"value": fill} if mode == "constant" else {}))
        padding = (top, left) if symmetric else 0
        if spec.op == "conv2d":
            y = F.conv2d(x, w, b, spec.stride, padding, spec.dilation, spec.groups)
        elif spec.op == "maxpool2d":
            y = F.max_pool2d(x, spec.kernel_size, spec.stride, padding, spec.dilation, ceil_mode=spec.ceil_mode)
        else:
            y = F.avg_pool2d(x, spec.kernel_size, spec.stride, padding, ceil_mode=spec.ceil_mode,
                             count_include_pad=spec.count_include_pad)
        if spec.activation == "relu":
            y = F.relu(y)
        elif spec.activation == "relu6":
            y = F.relu6(y)
        if spec.pool is not None:
            y = _torch_pool(F, spec.pool, y)
        return y
    return layer


def _torch_pool_expressible(pool) -> None:
    top, bottom, left, right = pool.padding if pool is not None else (0, 0, 0, 0)
    if pool is not None and (top != bottom or left != right) and (pool.ceil_mode or not pool.count_include_pad):
        raise NotImplementedError("a pool's ceil_mode or count_include_pad false with uneven padding")


def _torch_pool(F, pool, y):
    top, bottom, left, right = pool.padding
    if top != bottom or left != right:
        fill = float("-inf") if pool.op == "maxpool2d" else 0.0
        y = F.pad(y, (left, right, top, bottom), value=fill)
        top = left = 0
    if pool.op == "maxpool2d":
        return F.max_pool2d(y, pool.kernel_size, pool.stride, (top, left), ceil_mode=pool.ceil_mode)
    return F.avg_pool2d(y, pool.kernel_size, pool.stride, (top, left), ceil_mode=pool.ceil_mode,
                        count_include_pad=pool.count_include_pad)


# ---------------------------------------------------------------------------
# ONNX Runtime: a one-layer ONNX graph (Pad, Conv / MaxPool / AveragePool, Relu / Clip, pool)
# ---------------------------------------------------------------------------

def _onnxruntime(spec: Spec, inputs, threads: int) -> dict:
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    top, bottom, left, right = spec.padding
    nodes, initializers, current = [], [], "x"
    pads = [top, left, bottom, right]
    if spec.padding_mode != "zeros":
        mode = {"reflect": "reflect", "replicate": "edge"}[spec.padding_mode]
        initializers.append(numpy_helper.from_array(np.array([0, 0, top, left, 0, 0, bottom, right], np.int64), "pads"))
        nodes.append(helper.make_node("Pad", [current, "pads"], ["padded"], mode=mode))
        current, pads = "padded", [0, 0, 0, 0]
    attributes = dict(kernel_shape=list(spec.kernel_size), strides=list(spec.stride), pads=pads)
    if spec.op == "conv2d":
        initializers.append(numpy_helper.from_array(inputs["w"], "w"))
        names = [current, "w"] + (["b"] if spec.bias else [])
        if spec.bias:
            initializers.append(numpy_helper.from_array(inputs["b"], "b"))
        nodes.append(helper.make_node("Conv", names, ["conv"], dilations=list(spec.dilation), group=spec.groups,
                                      **attributes))
    elif spec.op == "maxpool2d":
        nodes.append(helper.make_node("MaxPool", [current], ["conv"], dilations=list(spec.dilation),
                                      ceil_mode=int(spec.ceil_mode), **attributes))
    else:
        nodes.append(helper.make_node("AveragePool", [current], ["conv"], ceil_mode=int(spec.ceil_mode),
                                      count_include_pad=int(spec.count_include_pad), **attributes))
    current = "conv"
    if spec.activation != "none":
        if spec.activation == "relu":
            nodes.append(helper.make_node("Relu", [current], ["act"]))
        else:
            initializers += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
                             numpy_helper.from_array(np.array(6, np.float32), "hi")]
            nodes.append(helper.make_node("Clip", [current, "lo", "hi"], ["act"]))
        current = "act"
    if spec.pool is not None:
        p = spec.pool
        op = "MaxPool" if p.op == "maxpool2d" else "AveragePool"
        extra = {"count_include_pad": int(p.count_include_pad)} if op == "AveragePool" else {}
        extra["ceil_mode"] = int(p.ceil_mode)
        pool_pads = [p.padding[0], p.padding[2], p.padding[1], p.padding[3]]
        nodes.append(helper.make_node(op, [current], ["pooled"], kernel_shape=list(p.kernel_size),
                                      strides=list(p.stride), pads=pool_pads, **extra))
        current = "pooled"
    nodes[-1].output[0] = "y"
    shape_in = [spec.batch, spec.in_channels, *spec.input_size]
    shape_out = [spec.batch, spec.out_channels, *spec.output_size]
    graph = helper.make_graph(nodes, spec.name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape_out)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = as_nchw(inputs["x"], spec.input_layout)
    _ = onnx  # imported to report a missing package by name
    return {"onnxruntime": (lambda: session.run(None, {"x": x})[0],
                            lambda y: from_nchw(y, spec.output_layout))}


# ---------------------------------------------------------------------------
# NumPy: im2col and one matrix product per group (BLAS)
# ---------------------------------------------------------------------------

def _numpy(spec: Spec, inputs, threads: int) -> dict:
    if not spec.is_conv or spec.pool is not None or spec.padding_mode != "zeros":
        raise NotImplementedError("the NumPy peer covers plain zero-padded conv2d only")
    x = as_nchw(inputs["x"], spec.input_layout)
    w, b = inputs["w"], inputs.get("b")
    top, bottom, left, right = spec.padding
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    oh, ow = spec.conv_output_size
    groups, cg, og = spec.groups, spec.in_channels // spec.groups, spec.out_channels // spec.groups
    weights = w.reshape(groups, og, cg * kh * kw)
    # without it BLAS runs on every core, whatever the thread count: not installed, not timed
    from threadpoolctl import threadpool_limits
    threadpool_limits(threads, user_api="blas")   # for the process, until the next peer sets its own

    def call():
        xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        windows = np.lib.stride_tricks.sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
        columns = windows[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :oh, :ow]        # N, C, OH, OW, KH, KW
        columns = columns.reshape(spec.batch, groups, cg, oh, ow, kh, kw).transpose(0, 1, 3, 4, 2, 5, 6)
        columns = columns.reshape(spec.batch, groups, oh * ow, cg * kh * kw)
        y = np.matmul(columns, weights.transpose(0, 2, 1)[None])                 # N, G, OH*OW, OG
        y = y.transpose(0, 1, 3, 2).reshape(spec.batch, spec.out_channels, oh, ow)
        if b is not None:
            y = y + b.reshape(1, -1, 1, 1)
        if spec.activation != "none":
            y = np.maximum(y, 0)
            if spec.activation == "relu6":
                y = np.minimum(y, 6)
        return y

    return {"numpy": (call, lambda y: from_nchw(y, spec.output_layout))}


# ---------------------------------------------------------------------------
# TFLite (LiteRT with XNNPACK): a one-op flatbuffer model, NHWC
# ---------------------------------------------------------------------------

def _tflite(spec: Spec, inputs, threads: int) -> dict:
    from ai_edge_litert import interpreter as litert
    from ai_edge_litert import schema_py_generated as schema

    if spec.input_layout != "NHWC" or spec.output_layout != "NHWC":
        raise NotImplementedError("TFLite runs NHWC layers (its native layout) only")
    if spec.padding_mode != "zeros":
        raise NotImplementedError(f"padding_mode {spec.padding_mode}")
    pools = [spec] if not spec.is_conv else [spec.pool] if spec.pool is not None else []
    if any(p.ceil_mode or not p.count_include_pad for p in pools):
        raise NotImplementedError("ceil_mode or count_include_pad false (the model pads explicitly)")
    model = _tflite_model(spec, inputs, schema)
    interpreter = litert.Interpreter(model_content=model, num_threads=threads)
    interpreter.allocate_tensors()
    x_index = interpreter.get_input_details()[0]["index"]
    y_index = interpreter.get_output_details()[0]["index"]
    interpreter.set_tensor(x_index, np.ascontiguousarray(inputs["x"]))
    # the input is set once, as for the other contenders; a call is the interpreter's invoke
    return {"tflite": (interpreter.invoke, lambda _: interpreter.get_tensor(y_index))}


def _tflite_model(spec: Spec, inputs, schema) -> bytes:
    """A flatbuffer model: [PAD ->] CONV_2D / DEPTHWISE_CONV_2D / pool [-> pool],
    the activation fused into the conv, weights as constant buffers."""
    import flatbuffers

    graph = _TfliteGraph(schema)
    current = graph.tensor([spec.batch, *spec.input_size, spec.in_channels], name="x")
    padding, current = _tflite_padding(spec, graph, current, schema)
    activation = {"none": schema.ActivationFunctionType.NONE, "relu": schema.ActivationFunctionType.RELU,
                  "relu6": schema.ActivationFunctionType.RELU6}[spec.activation]
    oh, ow = spec.conv_output_size
    out = graph.tensor([spec.batch, oh, ow, spec.out_channels], name="conv")
    if spec.is_conv:
        w = inputs["w"]                                               # O, I/g, KH, KW
        depthwise = spec.groups == spec.in_channels and spec.groups > 1
        if depthwise:   # [1, KH, KW, O]
            weights = graph.tensor([1, *spec.kernel_size, spec.out_channels], w.transpose(1, 2, 3, 0))
        else:           # [O, KH, KW, I/g]: a grouped conv where I/g is less than the input's channels
            weights = graph.tensor([spec.out_channels, *spec.kernel_size, spec.in_channels // spec.groups],
                                   w.transpose(0, 2, 3, 1))
        # a zero bias where the layer has none: TFLite's grouped conv requires one
        bias = graph.tensor([spec.out_channels], inputs["b"] if spec.bias else np.zeros(spec.out_channels, np.float32))
        options = (schema.DepthwiseConv2DOptionsT() if depthwise else schema.Conv2DOptionsT())
        if depthwise:
            options.depthMultiplier = spec.out_channels // spec.in_channels
        options.padding, options.fusedActivationFunction = padding, activation
        options.strideH, options.strideW = spec.stride
        options.dilationHFactor, options.dilationWFactor = spec.dilation
        code = schema.BuiltinOperator.DEPTHWISE_CONV_2D if depthwise else schema.BuiltinOperator.CONV_2D
        kind = (schema.BuiltinOptions.DepthwiseConv2DOptions if depthwise else schema.BuiltinOptions.Conv2DOptions)
        graph.operator(code, [current, weights, bias], [out], kind, options)
    else:
        if spec.dilation != (1, 1):
            raise NotImplementedError("dilated pooling")
        graph.pool(spec.op, spec.kernel_size, spec.stride, padding, activation, current, out)
    current = out
    if spec.pool is not None:
        pool = spec.pool
        if any(pool.padding):
            raise NotImplementedError("a padded fused pool")
        ph, pw = spec.output_size
        pooled = graph.tensor([spec.batch, ph, pw, spec.out_channels], name="pooled")
        graph.pool(pool.op, pool.kernel_size, pool.stride, schema.Padding.VALID, schema.ActivationFunctionType.NONE,
                   current, pooled)
        current = pooled
    builder = flatbuffers.Builder(1024)
    builder.Finish(graph.model(current).Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _tflite_padding(spec: Spec, graph, current: int, schema) -> tuple[int, int]:
    """(TFLite padding, the conv's input): SAME where it pads as the spec does,
    VALID with no padding, else an explicit PAD op before a VALID conv (as a
    converted PyTorch model has it)."""
    top, bottom, left, right = spec.padding
    if not any(spec.padding):
        return schema.Padding.VALID, current
    same = all(same_padding(size, k, s, d) == pads for size, k, s, d, pads in
               zip(spec.input_size, spec.kernel_size, spec.stride, spec.dilation, ((top, bottom), (left, right))))
    if same and (spec.is_conv or spec.op == "maxpool2d"):   # TFLite's average pool leaves padding out
        return schema.Padding.SAME, current
    if not spec.is_conv:
        raise NotImplementedError("a pool padded other than as SAME pads")
    h, w = spec.input_size
    pads = graph.tensor([4, 2], np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32),
                        tensor_type=schema.TensorType.INT32)
    padded = graph.tensor([spec.batch, h + top + bottom, w + left + right, spec.in_channels], name="padded")
    graph.operator(schema.BuiltinOperator.PAD, [current, pads], [padded], schema.BuiltinOptions.PadOptions,
                   schema.PadOptionsT())
    return schema.Padding.VALID, padded


class _TfliteGraph:
    """Tensors, constant buffers and operators of a one-subgraph TFLite model."""

    def __init__(self, schema):
        self.schema = schema
        self.tensors, self.operators, self.codes = [], [], []
        self.buffers = [schema.BufferT()]   # buffer 0: the empty buffer of every non-constant tensor

    def tensor(self, shape, data=None, name=None, tensor_type=None) -> int:
        tensor = self.schema.TensorT()
        tensor.shape, tensor.name = list(shape), name or f"t{len(self.tensors)}"
        tensor.type = self.schema.TensorType.FLOAT32 if tensor_type is None else tensor_type
        tensor.buffer = 0
        if data is not None:
            buffer = self.schema.BufferT()
            buffer.data = np.ascontiguousarray(data, np.float32 if tensor_type is None else None).view(np.uint8).ravel()
            tensor.buffer = len(self.buffers)
            self.buffers.append(buffer)
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def operator(self, code: int, inputs, outputs, options_type: int, options) -> None:
        if code not in self.codes:
            self.codes.append(code)
        op = self.schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = self.codes.index(code), list(inputs), list(outputs)
        op.builtinOptionsType, op.builtinOptions = options_type, options
        self.operators.append(op)

    def pool(self, op: str, kernel, stride, padding, activation, source: int, target: int) -> None:
        options = self.schema.Pool2DOptionsT()
        options.filterHeight, options.filterWidth = kernel
        options.strideH, options.strideW = stride
        options.padding, options.fusedActivationFunction = padding, activation
        code = (self.schema.BuiltinOperator.MAX_POOL_2D if op == "maxpool2d"
                else self.schema.BuiltinOperator.AVERAGE_POOL_2D)
        self.operator(code, [source], [target], self.schema.BuiltinOptions.Pool2DOptions, options)

    def model(self, output: int):
        schema = self.schema
        subgraph = schema.SubGraphT()
        subgraph.tensors, subgraph.operators = self.tensors, self.operators
        subgraph.inputs, subgraph.outputs = [0], [output]
        model = schema.ModelT()
        model.version, model.subgraphs, model.buffers = 3, [subgraph], self.buffers
        model.operatorCodes = []
        for code in self.codes:
            opcode = schema.OperatorCodeT()
            opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, min(code, 127), 1
            model.operatorCodes.append(opcode)
        return model


PEERS = {"torch": _torch, "onnxruntime": _onnxruntime, "tflite": _tflite, "numpy": _numpy}


def torch_network(network):
    """The network (convgen.network.Network) as a PyTorch module in eval mode:
    a submodule per layer with weights, named as the layer, so that its
    state_dict has the keys a network's .npz takes (`<layer>.weight`, ...,
    and batchnorm's running statistics; num_batches_tracked aside). Its
    forward runs the layers in order on an NCHW tensor."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.functions = {}
            shape = network.shape
            for layer in network.layers:
                source = shape[layer.inputs[0]]
                spec = layer.spec
                if layer.op == "conv2d":
                    module = torch.nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel_size, groups=spec.groups,
                                             bias=spec.bias)
                    self.add_module(layer.name, module)
                    self.functions[layer.name] = _conv_with(torch_layer, spec, module)
                elif layer.op == "batchnorm":
                    self.add_module(layer.name, torch.nn.BatchNorm2d(source[1], eps=layer.eps))
                elif layer.op == "linear":
                    features = int(np.prod(source[1:]))
                    self.add_module(layer.name, torch.nn.Linear(features, layer.out_features, bias=layer.bias))
                elif spec is not None and layer.op != "global_avgpool":   # that exports as GlobalAveragePool
                    self.functions[layer.name] = torch_layer(spec, None, None)
            self.eval()

        def forward(self, x):
            tensors = {network.input: x}
            for layer in network.layers:
                inputs = [tensors[name] for name in layer.inputs]
                tensors[layer.output] = self.run(layer, inputs)
            return tensors[network.output]

        def run(self, layer, inputs):
            x = inputs[0]
            if layer.name in self.functions:
                return self.functions[layer.name](x)
            if layer.op in ("batchnorm", "linear"):
                return getattr(self, layer.name)(x.flatten(1) if layer.op == "linear" else x)
            if layer.op == "relu":
                return torch.relu(x)
            if layer.op == "relu6":
                return torch.clamp(x, 0.0, 6.0)
            if layer.op == "add":
                total = inputs[0]
                for other in inputs[1:]:
                    total = total + other
                return total
            if layer.op == "concat":
                return torch.cat(inputs, dim=1)
            if layer.op == "global_avgpool":
                return torch.nn.functional.adaptive_avg_pool2d(x, 1)
            raise NotImplementedError(f"torch_network: no PyTorch form of {layer.op}")

    return Net()


def _conv_with(make_layer, spec, module):
    """torch_layer's convolution, reading the module's own weight and bias (as they are at call time)."""
    def call(x):
        return make_layer(spec, module.weight, module.bias)(x)
    return call
