"""Where data lives: the accumulator tile, copies of what a loop reads, the padded input, buffer layouts."""

from __future__ import annotations

import math
from dataclasses import replace

from .. import ir
from ..errors import ScheduleError
from . import stages
from .nest import enclosing_loops, find_loop, perfect_chain, replace_loop

MAX_TILE = 4096


def cache_write(func: ir.Func, at: str) -> ir.Func:
    """Accumulate a tile of outputs in a local buffer allocated in loop `at`, and
    write it back once (TVM: cache_write; oneDNN: register blocking).

    The loops between `at` and the accumulator become the tile's axes. The
    nest is distributed into three: initialise the tile, run the reduction
    with the tile loops inside it (where reorder can move them innermost),
    and write the tile out. Each output's sum keeps its order, so results
    are bit-identical. The init and write-back copies of a tile loop L are
    named L.init and L.out.

    It requires: `at` holds, through a perfect nest of loops, the one-element
    accumulator of the lowered kernel (cache_write has not run yet); there is
    at least one loop between them; each such loop is spatial (the output
    store depends on it); the tile has at most 4096 elements.

    rewrite cache_write(ow.o) with ow.i: 0..4 between:
        for ow.o:                          for ow.o:
          for ow.i in 0..4:                  local acc[ow.i=4]
            local acc[1]                     for ow.i.init: acc[ow.i.init] = b
            acc[0] = b              ->       for ow.i: for ic, kh, kw: acc[ow.i] += ...
            for ic, kh, kw: acc[0] += ...    for ow.i.out: y[..] = act(acc[ow.i.out])
            y[..] = act(acc[0])
    """
    target = find_loop(func, at, "cache_write")
    chain = perfect_chain(target)
    allocation = chain[-1].body
    if not (isinstance(allocation, ir.Allocate) and allocation.buffer.scope == "local"):
        raise ScheduleError("cache_write", f"no accumulator sits under '{at}' through a perfect loop nest "
                                           f"(the nest ends at '{chain[-1].var.name}')",
                            "choose a loop that encloses the output loops only")
    acc = allocation.buffer
    if acc.size != 1 or not (isinstance(allocation.body, ir.Seq) and len(allocation.body.body) == 3):
        raise ScheduleError("cache_write", f"'{acc.name}' is already a tile; cache_write runs once per kernel")
    tile_loops = chain[1:]
    if not tile_loops:
        raise ScheduleError("cache_write", f"'{at}' holds the accumulator directly: the tile would be one element",
                            "choose a loop further out")
    init, reduce, finish = allocation.body.body
    for loop in tile_loops:
        if loop.role != "spatial" or not any(loop.var.name in ir.free_vars(ir.flat_index(s.buffer, s.indices))
                   for s in ir.find_all(finish, ir.Store) if s.buffer.name != acc.name):
            raise ScheduleError("cache_write", f"'{loop.var.name}' is not an output loop: the output store "
                                               f"does not depend on it")
    names = tuple(loop.var.name for loop in tile_loops)
    extents = tuple(loop.extent for loop in tile_loops)
    if math.prod(extents) > MAX_TILE:
        raise ScheduleError("cache_write", f"the tile would hold {math.prod(extents)} elements; at most {MAX_TILE}",
                            "split the loops inside it and cache_write at an inner loop")
    tile = ir.Buffer(acc.name, acc.dtype, names, extents, ir.plain_layout(names), scope="local")
    retarget = stages.Retarget(acc.name, tile, tuple(ir.Var(n) for n in names))

    def nest(stmt: ir.Stmt, suffix: str) -> ir.Stmt:
        renamed = {n: ir.Var(n + suffix) for n in names} if suffix else {}
        body = ir.substitute(retarget.visit(stmt), renamed)
        for loop in reversed(tile_loops):
            body = replace(loop, var=ir.Var(loop.var.name + suffix), body=body)
        return body

    new_body = ir.Allocate(tile, ir.Seq((nest(init, ".init"), nest(reduce, ""), nest(finish, ".out"))))
    return replace_loop(func, at, lambda node: replace(node, body=new_body))


class _IndexBounds(ir.Visitor):
    """Intervals of the raw row and column indices of every load of one buffer."""

    def __init__(self, name: str, axes: tuple[int, ...]):
        self.name, self.axes = name, axes
        self.ranges: ir.Ranges = {}
        self.spans = {axis: [] for axis in axes}
        self.remaps: set[str] = set()

    def visit_Loop(self, node: ir.Loop):
        self.ranges[node.var.name] = (0, node.extent - 1)
        self.visit(node.body)
        del self.ranges[node.var.name]

    def visit_Load(self, node: ir.Load):
        if node.buffer.name == self.name:
            for axis in self.axes:
                index = node.indices[axis]
                if isinstance(index, ir.Call):
                    self.remaps.add(index.name)
                    index = index.args[0]
                self.spans[axis].append(ir.bounds(index, self.ranges))
        self.generic_visit(node)


class _PadRewrite(ir.Rewriter):
    def __init__(self, name: str, padded: ir.Buffer, before: dict[int, int]):
        self.name, self.padded, self.before = name, padded, before

    def visit_Load(self, node: ir.Load):
        node = self.generic_visit(node)
        if node.buffer.name != self.name:
            return node
        indices = list(node.indices)
        for axis, shift in self.before.items():
            index = indices[axis]
            if isinstance(index, ir.Call):  # the copy holds the reflected / replicated values
                index = index.args[0]
            indices[axis] = index + shift
        return ir.Load(self.padded, tuple(indices))

    def visit_Call(self, node: ir.Call):
        if node.name == "in_range":
            return ir.BoolImm(True)  # reading the padding is now in bounds and adds nothing
        return self.generic_visit(node)


def pad_input(func: ir.Func, buffer: str = "x") -> ir.Func:
    """Read the input from a padded copy instead of guarding each load (Halide: a
    boundary condition computed at root; TVM: pad stage).

    The copy is a workspace buffer, `<buffer>_packed`, filled by the stage
    `pack_<buffer>` (schedule/stages.py) before the computation, per call.
    The padding guards disappear, and reflect / replicate index remaps
    become plain indices. After layout(buffer, ...), the copy is padded in
    that layout; layout after pad_input keeps the padding.

    It requires: `buffer` is an input parameter read outside its bounds (the
    layer has padding), not padded already, and not through a cache_read
    copy (whose reads keep their guards; pad first, then cache_read); for
    zero padding, each guarded update is a sum or a max, so the fill (0 or
    -inf) leaves it unchanged.

    rewrite (padding 1):
        if in_range(oh + kh - 1, 56) && in_range(ow + kw - 1, 56):
          acc[0] = acc[0] + x[0, ic, oh + kh - 1, ow + kw - 1] * w[...]
      ->
        stage pack_x: x_packed[n, c, h, w] = x[n, c, h - 1, w - 1] inside x, 0 outside  (58x58)
        acc[0] = acc[0] + x_packed[0, ic, oh + kh, ow + kw] * w[...]
    """
    source = stages.parameter(func, buffer, "pad_input")
    if stages.is_output(func, buffer):
        raise ScheduleError("pad_input", f"'{buffer}' is the kernel's output; only inputs are padded")
    read = stages.current(func, buffer)
    if read.pad:
        raise ScheduleError("pad_input", f"'{buffer}' is padded already")
    copies = sorted({s.buffer.name for s in ir.find_all(func.body, ir.Store) if s.buffer.scope in ("local", "shared")
                     and isinstance(s.value, ir.Load) and s.value.buffer.name == read.name})
    if copies:
        raise ScheduleError("pad_input", f"'{buffer}' is read through a cache_read copy ('{copies[0]}')",
                            "pad_input first, then cache_read")
    if source.dtype != ir.FLOAT32:
        # an int8 layer's padding is its input zero point, which the IR does not carry
        raise ScheduleError("pad_input", f"'{buffer}' is {source.dtype}; only float32 inputs are padded so far")
    computing = [s for s in func.stages if s.name != f"{func.prefix}pack_{buffer}"]
    spatial = tuple(i for i, a in enumerate(source.axes) if a in ("H", "W"))
    walker = _IndexBounds(read.name, spatial)
    for stage in computing:
        walker.visit(stage.body)
    before, after = {}, {}
    for axis in spatial:
        spans = walker.spans[axis]
        if any(s is None for s in spans):
            raise ScheduleError("pad_input", f"cannot bound the {source.axes[axis]} index of '{buffer}'")
        before[axis] = max([0] + [-lo for lo, _ in spans])
        after[axis] = max([0] + [hi - (source.shape[axis] - 1) for _, hi in spans])
    if not any(before.values()) and not any(after.values()):
        raise ScheduleError("pad_input", f"'{buffer}' is never read outside its bounds: there is nothing to pad")
    mode, fill = _padding_fill(func, read.name, walker.remaps)
    pads = [(0, 0)] * len(source.shape)
    for axis in spatial:
        pads[axis] = (before[axis], after[axis])
    padded = stages.sized(source, replace(stages.new_copy(func, source), layout=read.layout, pad=tuple(pads),
                                          pad_mode=mode, pad_value=fill))
    padded_func = stages.with_copy(func, buffer, padded, rewrite=_PadRewrite(read.name, padded, before))
    return ir.simplify(padded_func)


def _padding_fill(func: ir.Func, buffer: str, remaps: set[str]) -> tuple[str, float]:
    if "reflect" in remaps:
        return "reflect", 0.0
    if "clamp" in remaps:
        return "replicate", 0.0
    fills = set()
    for guard in ir.find_all(func.body, ir.If):
        if not any(isinstance(c, ir.Call) and c.name == "in_range" for c in ir.find_all(guard.cond, ir.Call)):
            continue
        for store in ir.find_all(guard.then, ir.Store):
            value = store.value
            if isinstance(value, ir.BinOp) and value.op == "max":
                fills.add(float("-inf"))
            elif isinstance(value, ir.BinOp) and value.op == "+":
                fills.add(0.0)
            else:
                raise ScheduleError("pad_input", f"the guarded update of '{store.buffer.name}' is neither a sum "
                                                 f"nor a max, so no fill value leaves it unchanged")
    if len(fills) != 1:
        raise ScheduleError("pad_input", f"cannot tell which value to pad '{buffer}' with")
    return "constant", fills.pop()


def layout(func: ir.Func, buffer: str, layout: str) -> ir.Func:
    """Compute on a parameter stored in another layout: a permutation (NHWC)
    or channel blocks (NCHW8c for activations, OIHW8i16o for weights).
    Indices stay logical; only addresses change (TVM: transform_layout).

    The parameter itself stays the caller's array: the computation reads or
    writes a workspace copy, `<buffer>_packed`, in the new layout, and a
    stage moves the data (schedule/stages.py): `pack_<buffer>` before the
    computation for an input (for weights, in the prepare step that bind
    runs once), `unpack_<buffer>` after it for the output. Its loops are
    named <buffer>_packed.<axis>. A second layout step on the same buffer
    changes the copy's layout.

    It requires: `buffer` is a parameter with more than one axis, and the
    layout names each of its axes once in capitals, with at most one inner
    block per axis (digits and the axis in lower case). `buffer` may also
    name a workspace buffer a stage fills (e.g. w_winograd): it is laid out
    anew where it is, its stages' accesses following.

    rewrite layout(w, OIHW16o):
        ... w[oc, ic, kh, kw] ...   ->   stage pack_w: w_packed[o, i, h, w] = w[o, i, h, w]
                                         ... w_packed[oc, ic, kh, kw] ...   (element
                                         ((((oc // 16) * I + ic) * KH + kh) * KW + kw) * 16 + oc % 16)
    """
    workspace = {b.name: b for b in func.workspace}
    copied = {stages.copy_name(func, p.name): p.name for p in func.params}
    if buffer in copied:
        buffer = copied[buffer]          # a parameter's copy: lay out the copy, as layout(parameter) does
    elif buffer in workspace:
        return _relayout_workspace(func, workspace[buffer], layout)
    source = stages.parameter(func, buffer, "layout")
    if len(source.axes) < 2:
        raise ScheduleError("layout", f"'{buffer}' has one axis and so one layout")
    if not isinstance(layout, str):
        raise ScheduleError("layout", f"expected a layout such as {''.join(source.axes)}; got {layout!r}")
    try:
        dims = ir.parse_layout(layout, source.axes)
    except ValueError as err:
        raise ScheduleError("layout", f"'{layout}' for '{buffer}' (axes {''.join(source.axes)}): {err}") from None
    read = stages.current(func, buffer)
    copy = read if read.scope == "workspace" else stages.new_copy(func, source)
    return stages.with_copy(func, buffer, stages.sized(source, replace(copy, layout=dims)))


def _relayout_workspace(func: ir.Func, buffer: ir.Buffer, layout: str) -> ir.Func:
    try:
        dims = ir.parse_layout(layout, buffer.axes)
    except ValueError as err:
        raise ScheduleError("layout", f"'{layout}' for '{buffer.name}' (axes {''.join(buffer.axes)}): {err}") from None
    changed = replace(buffer, layout=dims)
    workspace = tuple(changed if b.name == buffer.name else b for b in func.workspace)
    return replace(func, workspace=workspace, body=stages.Retarget(buffer.name, changed).visit(func.body))


def cache_read(func: ir.Func, buffer: str, at: str, scope: str = "local") -> ir.Func:
    """Copy the part of `buffer` that loop `at`'s body reads into a buffer
    allocated there, and read it from the copy (TVM: cache_read). scope
    "local" keeps the copy on the thread's stack; "shared" stages it in a GPU
    block's shared memory, with a barrier after the copy (every thread's part
    is in) and one after the body (no thread overwrites what another still
    reads in the next iteration).

    The copy spans, along each axis, what the loops inside `at` add to an
    index; what the loops outside add is the copy's origin. Its loops are
    named <copy>_<axis> (e.g. x_local_H), so they can be scheduled like any
    other; elements past the buffer's edge are not copied (the reads of them
    are under the kernel's own guard).

    It requires: `buffer` is read inside `at` and not written there; every
    index of every read is a sum of terms of loops outside `at`, the same for
    every read, and terms of loops inside whose span the simplifier bounds;
    the copy holds at most 4096 elements; scope is local or shared.

    rewrite cache_read(x, ow.o):
        for ow.o in 0..8:                      for ow.o in 0..8:
          for ow.i in 0..4: for kw in 0..3:      local x_local[W=6]
            ... x[ow.o * 4 + ow.i + kw] ...  ->  for x_local_W in 0..6: x_local[x_local_W] = x[ow.o * 4 + x_local_W]
                                                 for ow.i in 0..4: for kw in 0..3:
                                                   ... x_local[ow.i + kw] ...
    """
    if scope not in ("local", "shared"):
        raise ScheduleError("cache_read", f"scope: expected 'local' or 'shared'; got {scope!r}")
    target = find_loop(func, at, "cache_read")
    reads = [load for load in ir.find_all(target.body, ir.Load) if load.buffer.name == buffer]
    if not reads:
        raise ScheduleError("cache_read", f"'{at}' reads no buffer named '{buffer}'",
                            f"buffers read there: {', '.join(sorted({l.buffer.name for l in ir.find_all(target.body, ir.Load)})) or 'none'}")
    if any(store.buffer.name == buffer for store in ir.find_all(target.body, ir.Store)):
        raise ScheduleError("cache_read", f"'{buffer}' is written inside '{at}': a copy would go stale")
    source = reads[0].buffer
    inner, origin, spans, extents = bounded_region(reads, target, "cache_read", "copy", "cache_read at an inner loop")
    name = fresh_buffer_name(func, f"{func.prefix}{buffer.removeprefix(func.prefix)}_{scope}")
    copy = ir.Buffer(name, source.dtype, source.axes, extents, ir.plain_layout(source.axes), scope=scope)
    outer = {loop.var.name: (0, loop.extent - 1) for loop in enclosing_loops(func, at) + [target]}
    body = Reread(buffer, copy, inner, spans).visit(target.body)
    staged = (_copy_nest(copy, source, origin, spans, outer), body)
    if scope == "shared":
        staged = (staged[0], ir.Barrier(), body, ir.Barrier())
    return replace_loop(func, at, lambda node: replace(node, body=ir.Allocate(copy, ir.Seq(staged))))


def _split_terms(expr: ir.Expr, inner: set[str]) -> tuple[ir.Expr, ir.Expr]:
    """(the terms of a sum that use no loop in `inner`, the terms that do); a
    sum times a constant (a strided index: (oh.o * 4 + oh.i) * 2) is split term by term."""
    if isinstance(expr, ir.BinOp) and expr.op in ("+", "-"):
        (a_out, a_in), (b_out, b_in) = _split_terms(expr.a, inner), _split_terms(expr.b, inner)
        return (ir.simplify(ir.BinOp(expr.op, a_out, b_out)), ir.simplify(ir.BinOp(expr.op, a_in, b_in)))
    if isinstance(expr, ir.BinOp) and expr.op == "*" and isinstance(expr.b, ir.IntImm):
        out, in_ = _split_terms(expr.a, inner)
        return ir.simplify(out * expr.b), ir.simplify(in_ * expr.b)
    if ir.free_vars(expr) & inner:
        return ir.IntImm(0), expr
    return expr, ir.IntImm(0)


def bounded_region(reads: list[ir.Load], target: ir.Loop, primitive: str, what: str, hint: str):
    """(the ranges of the loops inside `target`, then origin, spans and extents
    per axis of what `reads` touch as those loops run), refused where the
    region would hold more than MAX_TILE elements."""
    inner = {loop.var.name: (0, loop.extent - 1) for loop in ir.find_all(target.body, ir.Loop)}
    origin, spans = read_region(reads, inner, target.var.name, primitive)
    extents = tuple(hi - lo + 1 for lo, hi in spans)
    if math.prod(extents) > MAX_TILE:
        raise ScheduleError(primitive, f"the {what} would hold {math.prod(extents)} elements; at most {MAX_TILE}", hint)
    return inner, origin, spans, extents


def read_region(reads: list[ir.Load], inner: ir.Ranges, at: str, primitive: str):
    """(origin per axis, (lo, hi) per axis) of what `reads` touch as the inner loops run."""
    origin, spans = None, []
    for load in reads:
        parts = [_split_terms(index, set(inner)) for index in load.indices]
        outer = tuple(o for o, _ in parts)
        if origin is None:
            origin, spans = outer, [None] * len(parts)
        elif outer != origin:
            raise ScheduleError(primitive, f"reads of '{load.buffer.name}' start at different places outside "
                                              f"'{at}': {', '.join(map(ir.format_expr, origin))} and "
                                              f"{', '.join(map(ir.format_expr, outer))}")
        for k, (_, part) in enumerate(parts):
            span = ir.bounds(part, inner)
            if span is None:
                raise ScheduleError(primitive, f"cannot bound index {ir.format_expr(part)} of "
                                                  f"'{load.buffer.name}' over the loops inside '{at}'")
            spans[k] = span if spans[k] is None else (min(spans[k][0], span[0]), max(spans[k][1], span[1]))
    return origin, [(int(lo), int(hi)) for lo, hi in spans]


class Reread(ir.Rewriter):
    """Reads of one buffer inside the cached loop, pointed at the copy."""

    def __init__(self, name: str, copy: ir.Buffer, inner: ir.Ranges, spans):
        self.name, self.copy, self.inner, self.spans = name, copy, set(inner), spans

    def visit_Load(self, node: ir.Load):
        node = self.generic_visit(node)
        if node.buffer.name != self.name:
            return node
        indices = tuple(ir.simplify(_split_terms(index, self.inner)[1] - lo)
                        for index, (lo, _) in zip(node.indices, self.spans))
        return ir.Load(self.copy, indices)


def _copy_nest(copy: ir.Buffer, source: ir.Buffer, origin, spans, outer: ir.Ranges) -> ir.Stmt:
    """for each element of the copy: copy[a] = source[origin + lo + a], where that lies in source."""
    variables = [ir.Var(f"{copy.name}_{axis}") for axis in copy.axes]
    indices = [ir.simplify(o + lo + v) for o, (lo, _), v in zip(origin, spans, variables)]
    ranges = dict(outer, **{v.name: (0, e - 1) for v, e in zip(variables, copy.shape)})
    inside = []
    for index, extent in zip(indices, source.shape):
        span = ir.bounds(index, ranges)
        if span is None or span[0] < 0 or span[1] > extent - 1:
            inside.append(ir.all_of(ir.le(0, index), ir.lt(index, extent)))
    body: ir.Stmt = ir.Store(copy, tuple(variables), ir.Load(source, tuple(indices)))
    if inside:
        body = ir.If(ir.all_of(*inside), body)
    for variable, extent in reversed(list(zip(variables, copy.shape))):
        body = ir.Loop(variable, extent, body)
    return body


def fresh_buffer_name(func: ir.Func, base: str) -> str:
    taken = {b.name for b in func.params + func.workspace} | {a.buffer.name for a in ir.find_all(func.body, ir.Allocate)}
    return next(name for name in [base] + [f"{base}{k}" for k in range(2, 100)] if name not in taken)
