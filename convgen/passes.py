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


def epilogue_in_tile(func: ir.Func) -> ir.Func:
    """A register tile's epilogue (an activation on each accumulated output)
    applied to the tile in place, in the nest that initialised it (the
    tile's own vector layout), before the write-back, which then only
    copies. Applied in the write-back instead, the activation runs on the
    vectors the write-back makes, across the tile's rows (a register
    transpose), and LLVM kept the whole tile in memory across the reduction:
    resnet_3x3_64 with ReLU ran 1.7x slower than without.

    It applies to a tile allocated with an init, a reduction and a
    write-back nest (cache_write's three) whose write-back stores one value
    computed from one read of the tile, of the tile's type (not int8's
    requantize-and-narrow, whose result is narrower than the tile)."""
    return _EpilogueInTile().visit(func)


class _EpilogueInTile(ir.Rewriter):
    def visit_Allocate(self, node: ir.Allocate):
        node = self.generic_visit(node)
        tile = node.buffer
        parts = node.body.body if isinstance(node.body, ir.Seq) else ()
        if tile.scope != "local" or tile.size == 1 or len(parts) != 3:
            return node
        init, reduce, out = parts
        moved = _epilogue_moved(tile, init, out)
        return node if moved is None else replace(node, body=ir.Seq((init, reduce, *moved)))


def _epilogue_moved(tile: ir.Buffer, init: ir.Stmt, out: ir.Stmt):
    """(the epilogue nest, the write-back copying the tile), or None where it does not apply."""
    stores = ir.find_all(out, ir.Store)
    starts = [s for s in ir.find_all(init, ir.Store) if s.buffer.name == tile.name]
    if len(stores) != 1 or len(starts) != 1 or ir.find_all(init, ir.Store) != starts:
        return None
    store, start = stores[0], starts[0]
    reads = [load for load in ir.find_all(store.value, ir.Load) if load.buffer.name == tile.name]
    if len(reads) != 1 or store.value == reads[0] or store.value.dtype != tile.dtype:
        return None
    indices = reads[0].indices + start.indices
    if not all(isinstance(i, ir.Var) for i in indices) or len(set(indices)) != len(indices):
        return None
    epilogue_vars = {v.name: ir.Var(_epilogue_name(v.name)) for v in start.indices}
    at = tuple(epilogue_vars[v.name] for v in start.indices)
    # the write-back's value at the init's element: its read of the tile becomes tile[at]
    in_place = ir.Store(tile, at, ir.substitute(
        store.value, {o.name: epilogue_vars[i.name] for o, i in zip(reads[0].indices, start.indices)}))
    # substitute renames the loops over the tile's axes too; any other loop of the copy gets a new name
    epilogue = ir.substitute(_ReplaceStore(start, in_place).visit(init), epilogue_vars)
    epilogue = _RenameLoops({v.name for v in epilogue_vars.values()}).visit(epilogue)
    copy = _ReplaceStore(store, ir.Store(store.buffer, store.indices, reads[0])).visit(out)
    return epilogue, copy


def _epilogue_name(name: str) -> str:
    return name.replace(".init", ".epi") if ".init" in name else name + ".epi"


class _ReplaceStore(ir.Rewriter):
    def __init__(self, old: ir.Store, new: ir.Stmt):
        self.old, self.new = old, new

    def visit_Store(self, node: ir.Store):
        return self.new if node == self.old else node


class _RenameLoops(ir.Rewriter):
    """Loops not named yet (not in `named`) renamed with _epilogue_name, in their bodies too."""

    def __init__(self, named: set[str]):
        self.named = named

    def visit_Loop(self, node: ir.Loop):
        node = self.generic_visit(node)
        if node.var.name in self.named:
            return node
        new = ir.Var(_epilogue_name(node.var.name))
        return replace(node, var=new, body=ir.substitute(node.body, {node.var.name: new}))


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
    # with the two loops' ranges, a blocked layout's (c.o * 16 + c) % 16 is the lane c
    ranges = {lane: (0, inner.extent - 1), name: (0, node.extent - 1)}
    if ir.linear_coefficient(ir.simplify(ir.flat_index(store.buffer, store.indices), ranges), lane) != 1:
        return None
    reads = [load for load in ir.find_all(store.value, ir.Load)
             if lane in ir.free_vars(ir.flat_index(load.buffer, load.indices))]
    if len(reads) != 1:
        return None
    offset = ir.simplify(ir.flat_index(reads[0].buffer, reads[0].indices), ranges)
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
    Pass("epilogue-in-tile", epilogue_in_tile,
         "an activation runs on the register tile in its own layout before the write-back, not on the "
         "transposed vectors the write-back makes (which kept the tile in memory: ReLU cost 1.7x)"),
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
