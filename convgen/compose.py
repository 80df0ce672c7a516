"""A network as one program: the fused network's layers (fold.py) each
lowered and scheduled on its own, bound to the network's tensors and
weights, and run in order over one arena laid out by a static memory plan
(memplan.py).

- conv2d and pools go through the driver's plan (their default schedule for
  the target), each with its layer's name as prefix, so that no two layers'
  loops, stages or buffers share a name; add, relu, relu6 and concat are
  lowered here (lower.py);
- each layer's x, w, b and y become the network's buffers (ir.rebind): the
  network's input is the argument `x`, its output the argument `y`, its
  weights the arguments `<layer>_w` and `<layer>_b`, every other tensor a
  workspace buffer `t_<tensor>`;
- the prepare stages of every layer (weight packing) run first, once; the
  run stages per call, layer by layer;
- tensors live from the layer that writes them to the last that reads them,
  a layer's own scratch for that layer; a layer that is the last reader of
  an input of its output's shape writes in place of it (one buffer for
  both) where that is safe (_storage: elementwise layers, and layers that
  copy x to another layout before writing y); linear reads its input
  flattened, a view that shares the input's bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from . import ir
from .errors import SpecError
from .fold import fuse
from .lower import lower_concat, lower_elementwise
from .memplan import Live, MemoryPlan, peak_bytes, plan_memory, round_up
from .network import Layer, Network
from .target import Target

ACTIVATION_AXES = ("N", "C", "H", "W")


@dataclass(frozen=True)
class LayerStep:
    layer: Layer            # of the fused network
    plan: object            # conv2d and pools: the driver's Plan of its layer spec; else None
    func: ir.Func           # its kernel, bound to the network's buffers


@dataclass(frozen=True)
class NetworkPlan:
    """A network fused, each layer planned, composed into one program."""

    network: Network                     # as written
    source_weights: dict[str, np.ndarray]  # its weights, by state-dict key
    fused: Network                       # after folding and fusion
    rewrites: tuple[str, ...]            # what folding and fusion did, a line each
    target: Target
    layers: tuple[LayerStep, ...]
    weights: dict[str, np.ndarray]       # the program's weight arguments by name, float32, in its layouts
    memory: MemoryPlan                   # the arena's buffers
    storage: dict[str, str]              # the arena buffer of each intermediate tensor, by tensor
    func: ir.Func                        # the composed kernel
    program: ir.Program                  # split, its scratch laid out by the memory plan

    def describe(self) -> list[str]:
        """The fused program in words: the rewrites, a line per layer, the memory plan."""
        lines = [f"network {self.network.name}: {len(self.network.layers)} layers as written, "
                 f"{len(self.fused.layers)} after folding and fusion"]
        lines += [f"  {line}" for line in self.rewrites] + _layer_lines(self.layers, schedules=True)
        return lines + ["memory plan:"] + [f"  {line}" for line in self.memory.table(
            [step.layer.name for step in self.layers])] + [f"  {line}" for line in self.in_place()]

    def in_place(self) -> list[str]:
        """A line per tensor written in place of another (sharing its buffer)."""
        holder, lines = {}, []
        for layer in self.fused.layers:
            buffer = self.storage.get(layer.output)
            if buffer in holder:
                lines.append(f"{layer.output} in place of {holder[buffer]} ({buffer}), by {layer.name}")
            if buffer is not None:
                holder[buffer] = layer.output
        return lines


def c_identifier(name: str) -> str:
    return re.sub(r"\W", "_", name)


def compose(network: Network, weights: dict[str, np.ndarray], target: Target, plan_layer) -> NetworkPlan:
    """The network as one program for the target. plan_layer(spec, prefix)
    gives a layer's Plan (the driver's plan, with its schedule choice)."""
    source_weights = weights
    fused, weights, rewrites = fuse(network, weights)
    plans = {layer.name: plan_layer(layer.spec, _prefix(layer)) for layer in fused.layers if layer.spec is not None}
    storage = _storage(fused, plans)
    shape = fused.shape
    dtype = ir.INT8 if fused.is_quantized else ir.FLOAT32
    buffers = {name: _tensor_buffer(storage[name], shape[name], "workspace", dtype) for name in storage}
    buffers[fused.input] = _tensor_buffer("x", shape[fused.input], "global", dtype)
    buffers[fused.output] = _tensor_buffer("y", shape[fused.output], "global", dtype)
    steps, arrays, views = [], {}, {}
    for layer in fused.layers:
        prefix = _prefix(layer)
        if layer.spec is None:
            steps.append(_elementwise_step(fused, layer, prefix, buffers))
            continue
        step, taken, view = _layer_step(layer, prefix, plans[layer.name], buffers, weights, network.source)
        steps.append(step)
        arrays.update(taken)
        if view is not None:
            views[view.name] = (view, buffers[layer.inputs[0]].name)
    memory, arena = _plan_memory(fused, steps, buffers, views)
    counts = [ir.program.prepare_stages(step.func) for step in steps]
    prepare = [stage for step, k in zip(steps, counts) for stage in step.func.stages[:k]]
    run = [stage for step, k in zip(steps, counts) for stage in step.func.stages[k:]]
    prepared = [b for step in steps for b in step.func.workspace if b.name not in arena]
    weight_params = [p for step in steps for p in step.func.params if p.weight]
    params = (buffers[fused.input], *weight_params, buffers[fused.output])
    func = ir.Func(c_identifier(network.name), params, ir.Seq(tuple(prepare + run)),
                   doc=_doc(network, fused, memory, steps), workspace=tuple(prepared) + tuple(arena.values()))
    func = ir.verify(func, f"{network.source}: the composed program")
    sizes = (("ARENA_BYTES", memory.arena_bytes, "the arena: every intermediate tensor and layer scratch, "
                                                 "placed by the memory plan"),
             ("NAIVE_BYTES", memory.naive_bytes, "the same buffers, each in bytes of its own"),
             ("LOWER_BOUND_BYTES", memory.lower_bound, "the most bytes live during one layer"))
    program = replace(ir.split(func, memory.offset), sizes=sizes)
    return NetworkPlan(network, source_weights, fused, tuple(rewrites), target, tuple(steps), arrays, memory, storage,
                       func, program)


def _tensor_buffer(name: str, shape: tuple[int, ...], scope: str, dtype: str) -> ir.Buffer:
    """A tensor as an N x C x H x W buffer (a linear layer's N x F is N x F x 1 x 1)."""
    shape = tuple(shape) + (1,) * (4 - len(shape))
    return ir.Buffer(name, dtype, ACTIVATION_AXES, shape, ir.plain_layout(ACTIVATION_AXES), scope=scope)


def _last_readers(network: Network) -> dict[str, int]:
    found = {}
    for index, layer in enumerate(network.layers):
        for name in layer.inputs:
            found[name] = index
    return found


def _prefix(layer: Layer) -> str:
    return c_identifier(layer.name) + "_"


def _storage(network: Network, plans: dict) -> dict[str, str]:
    """The workspace buffer of each intermediate tensor, by tensor. A layer
    writes in place of an input it is the last reader of, of its output's
    shape, where that is safe: an elementwise layer (each element read
    before it is written, by nothing else), or a layer whose stages read x
    only before any stage writes y (one that first copies x to another
    layout, as the depthwise defaults do)."""
    last_reader, shape, storage = _last_readers(network), network.shape, {}
    outside = {network.input, network.output}
    for index, layer in enumerate(network.layers):
        if layer.output in outside:
            continue
        candidates = layer.inputs if layer.op in IN_PLACE_OPS else \
            layer.inputs[:1] if _reads_x_before_writing_y(plans.get(layer.name)) else ()
        shared = next((t for t in candidates if t not in outside and last_reader[t] == index
                       and shape[t] == shape[layer.output]), None)
        storage[layer.output] = storage[shared] if shared else "t_" + c_identifier(layer.output)
    return storage


IN_PLACE_OPS = ("relu", "relu6", "add")


def _reads_x_before_writing_y(plan) -> bool:
    """Whether every stage of the planned layer that reads x runs before every stage that writes y."""
    if plan is None:
        return False
    stages = plan.func.stages
    reads = [k for k, s in enumerate(stages) if "x" in {load.buffer.name for load in ir.find_all(s.body, ir.Load)}]
    writes = [k for k, s in enumerate(stages) if "y" in ir.program.stage_writes(s)]
    return bool(reads) and bool(writes) and max(reads) < min(writes)


def _layer_step(layer: Layer, prefix: str, plan, buffers: dict[str, ir.Buffer], weights, network_source: str):
    """(the layer's step, its weight arguments' arrays by name, the view of its
    input it reads, if it reads one: a linear layer's input flattened)."""
    func, source = plan.func, layer.inputs[0]
    param = {p.name: p for p in func.params}
    given, view = buffers[source], None
    if given.shape != param["x"].shape:
        if given.scope == "global":
            raise SpecError([f"{network_source}: {layer.name}: input: {layer.op} reads {source} flattened, and "
                             f"{source} is the network's input or output; flattening one is not supported yet"])
        x = param["x"]
        view = given = ir.Buffer(f"{given.name}_as_{prefix}x", x.dtype, x.axes, x.shape, x.layout, scope="workspace")
    mapping, taken = {"x": given, "y": buffers[layer.output]}, {}
    if "r" in param:
        mapping["r"] = buffers[layer.inputs[1]]
    for name, key in (("w", "weight"), ("b", "bias")):
        if name in param:
            p = param[name]
            mapping[name] = ir.Buffer(prefix + name, p.dtype, p.axes, p.shape, p.layout, weight=True)
            taken[prefix + name] = np.ascontiguousarray(weights[f"{layer.name}.{key}"], dtype=np.dtype(p.dtype)
                                                        ).reshape(p.shape)
    return LayerStep(layer, plan, ir.rebind(func, mapping)), taken, view


def _elementwise_step(network: Network, layer: Layer, prefix: str, buffers: dict[str, ir.Buffer]) -> LayerStep:
    inputs, y, name = tuple(buffers[t] for t in layer.inputs), buffers[layer.output], c_identifier(layer.name)
    quantization = tuple(network.quantization[t] for t in (*layer.inputs, layer.output)) if network.is_quantized \
        else ()
    func = lower_concat(name, inputs, y, prefix) if layer.op == "concat" else \
        lower_elementwise(name, layer.op, inputs, y, prefix, quantization)
    return LayerStep(layer, None, func)


def _plan_memory(network: Network, steps, buffers, views) -> tuple[MemoryPlan, dict[str, ir.Buffer]]:
    """(the memory plan, the arena's buffers by name): the tensors' buffers,
    views of them (sharing their bytes) and each layer's scratch. The lower
    bound and the naive sum count each tensor on its own, as if nothing were in place."""
    first, last = {}, {}
    for index, step in enumerate(steps):
        for tensor in (*step.layer.inputs, step.layer.output):
            name = buffers[tensor].name
            first.setdefault(name, index)
            last[name] = index
    arena = {b.name: b for b in buffers.values() if b.scope == "workspace"}
    lives = [Live(name, b.nbytes, first[name], last[name]) for name, b in arena.items()]
    last_reader = _last_readers(network)
    writer = {layer.output: index for index, layer in enumerate(network.layers)}
    separate = [Live(t, b.nbytes, writer[t], last_reader.get(t, writer[t])) for t, b in buffers.items()
                if b.scope == "workspace"]
    for view, base in views.values():
        arena[view.name] = view
        lives.append(Live(view.name, view.nbytes, first[base], last[base]))
    for index, step in enumerate(steps):
        kept = ir.program.prepare_stages(step.func)
        prepared = set().union(*(ir.program.stage_writes(s) for s in step.func.stages[:kept]))
        for b in step.func.workspace:
            if b.name not in prepared:
                arena[b.name] = b
                lives.append(Live(b.name, b.nbytes, index, index))
                separate.append(lives[-1])
    memory = plan_memory(lives, [[base, view.name] for view, base in views.values()])
    return replace(memory, lower_bound=peak_bytes(separate), naive_bytes=sum(round_up(b.size) for b in separate)), arena


def _summary(spec) -> str:
    kh, kw = spec.kernel_size
    parts = [f"{spec.op} {kh}x{kw}"]
    if spec.is_conv:
        parts.append(f"{spec.in_channels}->{spec.out_channels}" + (f" groups {spec.groups}" if spec.groups > 1 else ""))
    if spec.stride != (1, 1):
        parts.append(f"stride {spec.stride[0]}")
    if spec.activation != "none":
        parts.append(spec.activation)
    if spec.pool is not None:
        parts.append(f"then {spec.pool.op} {spec.pool.kernel_size[0]}x{spec.pool.kernel_size[1]}")
    return " ".join(parts)


def _layer_lines(steps, schedules: bool = False) -> list[str]:
    """A line per layer: what it reads and writes, and what it is; with
    schedules, a second line saying where its schedule came from (a tuned
    record, or the default and why)."""
    lines = []
    for step in steps:
        lines.append(f"  {step.layer.name}: {', '.join(step.layer.inputs)} -> {step.layer.output}: "
                     f"{_summary(step.plan.spec) if step.plan is not None else step.layer.op}")
        if schedules and step.plan is not None:
            lines.append(f"    schedule: {step.plan.schedule_source}" + (f" ({step.plan.tuned})" if step.plan.tuned
                                                                          else ""))
    return lines


def _doc(network: Network, fused: Network, memory: MemoryPlan, steps) -> str:
    """What the backends put in comments: the layers and the memory plan."""
    lines = [f"{network.name}: a network of {len(fused.layers)} layers (from {network.source})."]
    return "\n".join(lines + _layer_lines(steps) + ["Memory plan:"] + [f"  {line}" for line in memory.table(
        [step.layer.name for step in steps])])
