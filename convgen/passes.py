"""Passes: the rewrites that run between scheduling and codegen.

Every pass is named and listed in PASSES, in the order the driver runs them
on each scheduled kernel; backends render what comes out and decide
nothing. `convgen show -v` prints the kernel after each pass.

To add one: write a function ir.Func -> ir.Func that keeps the kernel's
meaning (the property tests check every backend against the reference
after all passes), and add it to PASSES with a line saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from . import ir


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[ir.Func], ir.Func]
    why: str


def hoist_conditions(func: ir.Func) -> ir.Func:
    return ir.hoist_conditions(func)


def share_parallel_work(func: ir.Func) -> ir.Func:
    """Each top-level nest of a stage (a stage function, ir.split) with parallel
    loops, made one parallel loop around the whole nest: what the threads
    share is that loop's range, each thread running the nest for its part of
    it. The serial loops around a parallel loop (the batch) move inside it,
    and the copies of one parallel loop that cache_write makes for a tile's
    init and write-back become one loop: a thread runs all three for its part.
    That is legal because the parallel step admits only a loop over outputs
    below a perfect nest of loops over outputs, and copies of it run over
    the same outputs. Parallel loops of different extents in one nest are
    left as they are (C runs each; LLVM refuses them)."""
    stages = [ir.Stage(stage.name, _per_nest(stage.body, _one_parallel_range)) for stage in func.stages]
    return ir.with_stages(func, stages)


def _per_nest(body: ir.Stmt, rewrite) -> ir.Stmt:
    if isinstance(body, ir.Seq):
        return ir.Seq(tuple(rewrite(nest) for nest in body.body))
    return rewrite(body)


def _one_parallel_range(nest: ir.Stmt) -> ir.Stmt:
    loops = [loop for loop in ir.find_all(nest, ir.Loop) if loop.kind == "parallel"]
    nested = any(inner.kind == "parallel" for loop in loops for inner in ir.find_all(loop.body, ir.Loop))
    if not loops or (len(loops) == 1 and nest is loops[0]) or len({loop.extent for loop in loops}) > 1 or nested:
        return nest
    shared = loops[0]
    return replace(shared, body=_InlineParallel(shared.var).visit(nest))


class _InlineParallel(ir.Rewriter):
    """Each parallel loop replaced by its body at the shared loop's index."""

    def __init__(self, index: ir.Var):
        self.index = index

    def visit_Loop(self, node: ir.Loop):
        node = self.generic_visit(node)
        if node.kind != "parallel":
            return node
        return ir.substitute(node.body, {node.var.name: self.index})


def next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def transposable_read(node: ir.Loop) -> ir.Load | None:
    """The one lane-dependent read of a copy that can be done as a transpose, else None:
    node's body is a vectorized loop (lanes c) whose body is a single unmasked store,
    contiguous in c, of a value with one read that depends on c, at
    base + c * stride + node's index (a row of the block per lane, a column per iteration),
    and the block is at most 16 x 16."""
    inner = node.body
    if not isinstance(inner, ir.Loop) or inner.kind != "vectorized" or not isinstance(inner.body, ir.Store):
        return None
    if min(node.extent, inner.extent) < 2 or next_power_of_two(max(node.extent, inner.extent)) > 16:
        return None
    store, lane, name = inner.body, inner.var.name, node.var.name
    if ir.linear_coefficient(ir.flat_index(store.buffer, store.indices), lane) != 1:
        return None
    reads = [load for load in ir.find_all(store.value, ir.Load)
             if lane in ir.free_vars(ir.flat_index(load.buffer, load.indices))]
    if len(reads) != 1:
        return None
    offset = ir.flat_index(reads[0].buffer, reads[0].indices)
    stride = ir.linear_coefficient(offset, lane)
    if ir.linear_coefficient(offset, name) != 1 or stride is None:
        return None
    return reads[0]


class _MarkTransposes(ir.Rewriter):
    def visit_Loop(self, node: ir.Loop):
        node = self.generic_visit(node)
        if node.kind in ("serial", "unrolled") and transposable_read(node) is not None:
            return replace(node, kind="transposed")
        return node


def mark_transposes(func: ir.Func) -> ir.Func:
    return _MarkTransposes().visit(func)


PASSES: tuple[Pass, ...] = (
    Pass("share-parallel-work", share_parallel_work,
         "threads start once per stage function and share one loop's range: a parallel loop moves "
         "outside the serial loops around it, and a tile's parallel copies become one loop"),
    Pass("hoist-conditions", hoist_conditions,
         "a check that does not depend on a loop runs once outside it, not once per iteration "
         "(a padding row's check leaves the register tile)"),
    Pass("mark-transposes", mark_transposes,
         "a register tile written back across the rows of a block (channel vectors to columns) is "
         "loaded a row at a time and transposed in registers, not gathered element by element"),
)


def run_passes(func: ir.Func) -> tuple[ir.Func, tuple[tuple[str, ir.Func], ...]]:
    """The kernel after every pass, and (name, kernel after it) for each."""
    history = []
    for step in PASSES:
        func = ir.verify(step.run(func), f"after pass {step.name}")
        history.append((step.name, func))
    return func, tuple(history)
