"""Fusing stages: where a stage's values are computed (Halide: compute_at)."""

from __future__ import annotations

from dataclasses import replace

from .. import ir
from ..errors import ScheduleError
from .memory import Reread, bounded_region, fresh_buffer_name
from .nest import enclosing_loops, find_loop, guard_stores, perfect_chain, replace_loop


def compute_at(func: ir.Func, stage: str, at: str) -> ir.Func:
    """Compute stage `stage` inside loop `at` of a later stage, for just the
    part of its output that one iteration of `at` reads, into a local buffer
    there; the stage and its workspace buffer go (Halide: compute_at; TVM:
    compute_at). A fused pool's convolution computed at the pool's row loop
    keeps two rows of the convolution, not the whole intermediate.

    The region is what cache_read would copy: along each axis, what the loops
    inside `at` add to an index, at an origin set by the loops outside. The
    stage's loops keep their names and run over the region (loops of one
    iteration are dropped); an element past the edge of the stage's output
    is not computed (the reads of it are under the reader's own guard).
    Where pooling windows overlap, their shared elements are computed twice.

    It requires: `stage` writes one workspace buffer, read only inside `at`;
    its outer loops form a perfect nest, each storing along one axis of that
    buffer (the stage has not been scheduled: compute_at comes before steps
    on its loops); the region holds at most 4096 elements.

    rewrite compute_at(conv, ph) (pool 2x2 stride 2 over a 3x3 convolution):
        stage conv:                              stage pool:
          for oc, oh, ow: conv_out[oc, oh, ow] = ...  for pc, ph:
        stage pool:                          ->      local conv_out[C=1, H=2, W=8]
          for pc, ph, pw, pi, pj:                    for oh in 0..2: for ow in 0..8:
            ... conv_out[pc, ph * 2 + pi, ...]         conv_out[0, oh, ow] = ... (at row ph * 2 + oh)
                                                     for pw, pi, pj: ... conv_out[0, pi, pw * 2 + pj]
    """
    producer = _stage(func, stage)
    buffer = _written_workspace(func, producer)
    target = find_loop(func, at, "compute_at")
    if at in {loop.var.name for loop in ir.find_all(producer.body, ir.Loop)}:
        raise ScheduleError("compute_at", f"'{at}' is a loop of stage '{stage}' itself",
                            "choose a loop of the stage that reads it")
    reads = [load for load in ir.find_all(target.body, ir.Load) if load.buffer.name == buffer.name]
    elsewhere = sum(1 for load in ir.find_all(func.body, ir.Load) if load.buffer.name == buffer.name) - len(reads)
    if not reads or elsewhere:
        raise ScheduleError("compute_at", f"'{buffer.name}' (what stage '{stage}' writes) is read "
                                          f"{'outside' if reads else 'nowhere inside'} loop '{at}'",
                            "choose a loop that holds every read of it")
    inner, origin, spans, extents = bounded_region(reads, target, "compute_at", "region", "compute at an inner loop")
    others = [s for s in func.stages if s.name != producer.name]
    fused = ir.with_stages(replace(func, workspace=tuple(b for b in func.workspace if b != buffer)), others)
    region = ir.Buffer(fresh_buffer_name(fused, buffer.name), buffer.dtype, buffer.axes, extents,
                       ir.plain_layout(buffer.axes), scope="local")
    starts = tuple(ir.simplify(o + lo) for o, (lo, _) in zip(origin, spans))
    outer = {loop.var.name: (0, loop.extent - 1) for loop in enclosing_loops(func, at) + [target]}
    computed = _over_region(producer, buffer, region, starts, outer, stage)
    body = Reread(buffer.name, region, inner, spans).visit(target.body)
    return replace_loop(fused, at, lambda node: replace(node, body=ir.Allocate(region, ir.Seq((computed, body)))))


def _stage(func: ir.Func, name) -> ir.Stage:
    stages = {s.name: s for s in func.stages}
    if name not in stages:
        raise ScheduleError("compute_at", f"no stage named {name!r}", f"stages are {', '.join(stages)}")
    return stages[name]


def _written_workspace(func: ir.Func, producer: ir.Stage) -> ir.Buffer:
    written = {s.buffer for s in ir.find_all(producer.body, ir.Store) if s.buffer.scope != "local"}
    if len(written) != 1 or next(iter(written)) not in func.workspace:
        raise ScheduleError("compute_at", f"stage '{producer.name}' writes "
                                          f"{', '.join(sorted(b.name for b in written)) or 'nothing'}; "
                                          f"expected one workspace buffer, which a later stage reads")
    return next(iter(written))


def _over_region(producer: ir.Stage, buffer: ir.Buffer, region: ir.Buffer, starts, outer: ir.Ranges,
                 stage: str) -> ir.Stmt:
    """The producer's nest over the region that starts at `starts`, writing `region`:
    each outer loop storing along an axis runs over the region's extent on it,
    offset by the start, and skips what lies past the buffer's edge."""
    chain = [loop for loop in perfect_chain(producer.body)] if isinstance(producer.body, ir.Loop) else []
    stores = [s for s in ir.find_all(producer.body, ir.Store) if s.buffer.name == buffer.name]
    axis_of = {}
    for loop in chain:
        axes = {k for s in stores for k, index in enumerate(s.indices) if index == loop.var}
        if loop.role != "spatial" or len(axes) != 1 or loop.kind != "serial":
            break
        axis_of[loop.var.name] = axes.pop()
    covered = set(axis_of.values())
    fixed = {}   # axis -> the one index stored along it (lowering dropped its loop of one iteration)
    for k, index in enumerate(stores[0].indices if stores else ()):
        if k not in covered and not isinstance(index, ir.IntImm):
            raise ScheduleError("compute_at", f"stage '{stage}' stores along axis {buffer.axes[k]} of "
                                              f"'{buffer.name}' at {ir.format_expr(index)}, not at one of its "
                                              f"outer loops", "compute_at comes before steps on the stage's loops")
        if k not in covered:
            fixed[k] = index
    loops = chain[:len(axis_of)]
    shifted = {name: starts[k] + ir.Var(name) for name, k in axis_of.items()}
    body = ir.substitute(loops[-1].body if loops else producer.body, shifted)
    # computed: what lies within the buffer, and along a fixed axis, only where the region holds its index
    within = [ir.all_of(ir.le(0, shifted[name]), ir.lt(shifted[name], buffer.shape[k]))
              for name, k in axis_of.items()]
    within += [ir.all_of(ir.le(starts[k], index), ir.lt(index, starts[k] + region.shape[k]))
               for k, index in fixed.items()]
    ranges = dict(outer, **{loop.var.name: (0, region.shape[axis_of[loop.var.name]] - 1) for loop in loops})
    body = _Relocate(buffer.name, region, starts, axis_of).visit(body)
    guard = ir.simplify(ir.all_of(*within), ranges) if within else ir.BoolImm(True)
    if guard != ir.BoolImm(True):
        body = guard_stores(body, guard)   # at the leaves: the nest stays perfect for later steps
    for loop in reversed(loops):
        body = replace(loop, extent=region.shape[axis_of[loop.var.name]], body=body)
    return ir.simplify(body, outer, drop_unit_loops=True)


class _Relocate(ir.Rewriter):
    """Stores into the whole buffer pointed at the region: along an axis a loop
    runs over, at that loop's index; along another, the index less the start."""

    def __init__(self, name: str, region: ir.Buffer, starts, axis_of: dict[str, int]):
        self.name, self.region, self.starts = name, region, starts
        self.loop_on = {k: name for name, k in axis_of.items()}

    def visit_Store(self, node: ir.Store):
        node = self.generic_visit(node)
        if node.buffer.name != self.name:
            return node
        indices = tuple(ir.Var(self.loop_on[k]) if k in self.loop_on else ir.simplify(index - start)
                        for k, (index, start) in enumerate(zip(node.indices, self.starts)))
        return ir.Store(self.region, indices, node.value)
