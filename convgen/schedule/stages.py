"""Data movement as stages: a parameter's workspace copy and the stage that fills it.

Schedules never change a parameter: it is the caller's array as the spec
describes it. To compute on another layout or on a padded input, a schedule
step gives the parameter a workspace copy, `<name>_packed`, points the
computation at it, and adds a stage that moves the data:

- an input's copy is filled by `pack_<name>`, before the computation: each
  element of the copy (its padding included) is the caller's element, the
  padding's fill, or for reflect / replicate padding the mirrored or edge
  element; a blocked axis's last block is filled past the axis (zeros);
- an output's copy is written by the computation and read back into the
  caller's array by `unpack_<name>`, after it.

Stages that copy weights come first: they form the prepare step that `bind`
runs once (ir/program.py). A copy stage's loops are named
`<copy>.<axis>` (e.g. w_packed.o), so steps can schedule them like any other.
"""

from __future__ import annotations

from dataclasses import replace

from .. import ir
from ..errors import ScheduleError

PAD_MODES = {"reflect": "reflect", "replicate": "clamp"}   # padding mode -> the index remap that reads it


def copy_name(func: ir.Func, parameter: str) -> str:
    return f"{func.prefix}{parameter}_packed"


def parameter(func: ir.Func, name: str, primitive: str) -> ir.Buffer:
    """The parameter `name`, or a ScheduleError naming the parameters there are."""
    params = {p.name: p for p in func.params}
    if name not in params:
        raise ScheduleError(primitive, f"no parameter '{name}'; parameters are {', '.join(params)}")
    return params[name]


def current(func: ir.Func, name: str) -> ir.Buffer:
    """What the computation reads or writes for parameter `name`: its workspace copy when it has one."""
    copies = {b.name: b for b in func.workspace}
    return copies.get(copy_name(func, name)) or next(p for p in func.params if p.name == name)


def is_output(func: ir.Func, name: str) -> bool:
    return name in func.written_buffers()


def with_copy(func: ir.Func, name: str, copy: ir.Buffer, rewrite: ir.Rewriter | None = None) -> ir.Func:
    """func computing on `copy` (new, or the parameter's copy changed) instead
    of parameter `name` or its previous copy, with the stage that moves the
    data rebuilt. rewrite: applied to every other stage instead of a plain
    retarget (pad_input shifts indices and drops guards)."""
    old = current(func, name).name
    source = next(p for p in func.params if p.name == name)
    output = is_output(func, name)
    if copy != sized(source, copy):
        raise ValueError(f"{copy.name}: the copy's shape {copy.shape} is not what its padding and blocks make")
    mover = f"{func.prefix}{'unpack' if output else 'pack'}_{name}"
    retarget = rewrite or Retarget(old, copy)
    stages = [ir.Stage(s.name, retarget.visit(s.body)) for s in func.stages if s.name != mover]
    stage = ir.Stage(mover, _unpack_nest(source, copy) if output else _pack_nest(source, copy))
    stages = stages + [stage] if output else insert_input_stage(func, stages, stage, source.weight)
    workspace = tuple(b for b in func.workspace if b.name != copy.name) + (copy,)
    return ir.with_stages(replace(func, workspace=workspace), stages)


def insert_input_stage(func: ir.Func, stages: list[ir.Stage], stage: ir.Stage, weight: bool) -> list[ir.Stage]:
    """stages with `stage` (which fills a workspace buffer from an input) placed
    first if it reads weights (the prepare step leads), else after every stage
    that reads only weights."""
    if weight:
        return [stage] + stages
    weights = {p.name for p in func.params if p.weight} | {b.name for b in func.workspace}
    lead = 0
    while lead < len(stages) and stages[lead].name != func.prefix + "compute" and \
            {l.buffer.name for l in ir.find_all(stages[lead].body, ir.Load)} <= weights:
        lead += 1
    return stages[:lead] + [stage] + stages[lead:]


def new_copy(func: ir.Func, source: ir.Buffer) -> ir.Buffer:
    """A workspace copy of a parameter, laid out as it is."""
    return replace(source, name=copy_name(func, source.name), scope="workspace", weight=False)


def sized(source: ir.Buffer, copy: ir.Buffer) -> ir.Buffer:
    """The copy with its extents: the source's, plus its padding, rounded up
    to whole blocks along a blocked axis (the last block's tail is part of
    the copy: the pack stage fills it, and no stage writes past the copy)."""
    pads = copy.pad or ((0, 0),) * len(copy.axes)
    shape = []
    for axis, extent, (before, after) in zip(copy.axes, source.shape, pads):
        block = copy.block(axis)
        padded = extent + before + after
        shape.append(-(-padded // block) * block if block else padded)
    return replace(copy, shape=tuple(shape))


def _variables(copy: ir.Buffer) -> list[ir.Var]:
    return [ir.Var(f"{copy.name}.{axis.lower()}") for axis in copy.axes]


def _loops(copy: ir.Buffer, variables: list[ir.Var], extents: list[int], body: ir.Stmt,
           innermost: str | None = None) -> ir.Stmt:
    """body in loops over the copy's axes, outermost in its storage order (writes run along it),
    except `innermost`, if given, innermost."""
    order = [d.axis for d in copy.layout if not d.block and d.axis != innermost]
    order += [innermost] if innermost else []
    for axis in reversed(order):
        k = copy.axes.index(axis)
        body = ir.Loop(variables[k], extents[k], body)
    return body


def _zero(dtype: str) -> ir.Expr:
    return ir.FloatImm(0.0) if dtype == ir.FLOAT32 else ir.IntImm(0, dtype)


def _pack_nest(source: ir.Buffer, copy: ir.Buffer) -> ir.Stmt:
    """copy[i] = source[i - before] over the copy, its padding and its blocks'
    last tails included: where the copy extends past the source (zero or
    constant padding, a blocked axis's last tail), a first nest fills the
    whole copy (loops <copy>.fill.<axis>; with no padding, only the blocks'
    tails) and the second copies the source into its place; reflect and
    replicate padding read the mirrored or edge element instead. No element
    is guarded: plain copies vectorize, where a guarded or selected copy
    with clamped reads miscompiles under GCC 12 -O3 -march=native (AVX-512,
    256-bit vectors)."""
    variables = _variables(copy)
    pads = copy.pad or ((0, 0),) * len(copy.axes)
    remap = PAD_MODES.get(copy.pad_mode) if copy.pad else None
    storage, extents, indices, targets = list(copy.shape), [], [], []
    for variable, (before, after), extent in zip(variables, pads, source.shape):
        padded = extent + before + after
        if remap is not None and (before or after):   # the padding reads the source, mirrored or at the edge
            extents.append(padded)
            index = ir.Call(remap, (ir.simplify(variable - before), ir.IntImm(extent)))
            if remap == "reflect":
                # one mirror covers what a valid output reads (the spec keeps reflect padding under the
                # input's size); a copy padded further for the masked lanes of a vector tail reads the edge
                # there, as no output uses those elements
                index = ir.Call("clamp", (index, ir.IntImm(extent)))
            indices.append(index)
            targets.append(variable)
        else:
            extents.append(extent)
            indices.append(variable)
            targets.append(ir.simplify(variable + before))
    copying = _loops(copy, variables, extents, ir.Store(copy, tuple(targets), ir.Load(source, tuple(indices))))
    if storage == extents:
        return copying
    fill = ir.FloatImm(copy.pad_value) if copy.pad and copy.dtype == ir.FLOAT32 else _zero(copy.dtype)
    if not copy.pad:
        return ir.Seq((*_tail_fills(copy, extents, fill), copying))
    filling = [ir.Var(f"{copy.name}.fill.{axis.lower()}") for axis in copy.axes]
    return ir.Seq((_loops(copy, filling, storage, ir.Store(copy, tuple(filling), fill)), copying))


def _tail_fills(copy: ir.Buffer, extents: list[int], fill: ir.Expr) -> list[ir.Stmt]:
    """Nests that fill only the blocked axes' last tails, past `extents` (a
    depthwise layer's 116 channels in blocks of 16: 12 of 128, where filling
    the whole copy stored every element twice per call). A tail inside one
    block is filled along it, innermost: its elements are adjacent in storage
    (24 channels in blocks of 16, NCHW depthwise 1x1 at 56x56: 44 -> 30 us a
    call, where each of the 8 lanes was a pass over the whole copy)."""
    nests = []
    for k, (axis, extent, size) in enumerate(zip(copy.axes, extents, copy.shape)):
        if extent == size:
            continue
        label = "fill" if not nests else f"fill_{axis.lower()}"
        variables = [ir.Var(f"{copy.name}.{label}.{a.lower()}") for a in copy.axes]
        bounds = list(copy.shape[:k]) + [size - extent] + list(copy.shape[k + 1:])
        at = tuple(v + extent if i == k else v for i, v in enumerate(variables))
        within_block = size - extent <= copy.block(axis)
        nests.append(_loops(copy, variables, bounds, ir.Store(copy, at, fill), axis if within_block else None))
    return nests


def _unpack_nest(target: ir.Buffer, copy: ir.Buffer) -> ir.Stmt:
    """target[i] = copy[i] over the caller's array."""
    variables = _variables(copy)
    body = ir.Store(target, tuple(variables), ir.Load(copy, tuple(variables)))
    return _loops(target, variables, list(target.shape), body)


class Retarget(ir.Rewriter):
    """Loads and stores of one buffer pointed at another: indices kept, or replaced by `indices`."""

    def __init__(self, old: str, new: ir.Buffer, indices: tuple[ir.Expr, ...] | None = None):
        self.old, self.new, self.indices = old, new, indices

    def visit_Load(self, node: ir.Load):
        node = self.generic_visit(node)
        if node.buffer.name != self.old:
            return node
        return ir.Load(self.new, self.indices if self.indices is not None else node.indices)

    def visit_Store(self, node: ir.Store):
        node = self.generic_visit(node)
        if node.buffer.name != self.old:
            return node
        return ir.Store(self.new, self.indices if self.indices is not None else node.indices, node.value)


def require_unscheduled_data(func: ir.Func, primitive: str, hint: str) -> None:
    """Refuse where a step has already added workspace or stages."""
    if func.workspace or len(func.stages) > 1:
        raise ScheduleError(primitive, "the kernel has been scheduled already "
                                       f"(it has stages {', '.join(s.name for s in func.stages)})", hint)
