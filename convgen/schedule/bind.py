"""Binding loops to hardware: vector lanes, packed dot products, CPU threads, GPU blocks and threads."""

from __future__ import annotations

from dataclasses import replace

from .. import ir
from ..errors import ScheduleError
from .nest import ancestors, describe_stmt, find_loop, replace_loop, require_serial, stores_not_indexed_by

MAX_LANES = 64


def vectorize(func: ir.Func, loop: str) -> ir.Func:
    """Run the iterations of an innermost loop as the lanes of SIMD vectors (Halide, TVM: vectorize).

    LLVM emits vector types of that many lanes with fma; C marks the loop
    `omp simd`. Lanes whose guard fails are masked.

    It requires: the loop is serial, innermost (no loop or allocation
    inside), has 2 to 64 iterations, and is not a reduction loop (by role,
    and every store in it writes an address that depends on it).

    rewrite:
        for oc.i in 0..16:          vectorized for oc.i in 0..16:
          S(oc.i)           ->        S(oc.i)
    """
    target = find_loop(func, loop, "vectorize")
    require_serial(target, "vectorize")
    if not 2 <= target.extent <= MAX_LANES:
        raise ScheduleError("vectorize", f"'{loop}' has {target.extent} iterations; expected 2 to {MAX_LANES} lanes",
                            f"split it, e.g. split({loop}, 8) and vectorize {loop}.i" if target.extent > MAX_LANES else "")
    inner = ir.find_all(target.body, ir.Loop)
    if inner:
        raise ScheduleError("vectorize", f"'{loop}' is not innermost: '{inner[0].var.name}' is inside it",
                            f"reorder so that '{loop}' is innermost")
    if ir.find_all(target.body, ir.Allocate):
        raise ScheduleError("vectorize", f"'{loop}' allocates a buffer inside", "cache_write at an outer loop first")
    if target.role == "reduction":
        raise ScheduleError("vectorize", f"'{loop}' is a reduction loop: its iterations add into the same "
                                         f"outputs, so lanes would collide",
                            "vectorize a loop the output varies along (after cache_write, e.g. an output-channel "
                            "or output-column loop moved innermost)")
    reductions = stores_not_indexed_by(target.body, loop)
    if reductions:
        raise ScheduleError("vectorize", f"'{loop}' is a reduction loop: the store to "
                                         f"'{reductions[0].buffer.name}' does not depend on it",
                            "vectorize a loop the output varies along (after cache_write, e.g. an output-channel "
                            "or output-column loop moved innermost)")
    return replace_loop(func, loop, lambda node: replace(node, kind="vectorized"))


def dot(func: ir.Func, loop: str) -> ir.Func:
    """Run an innermost int8 multiply-accumulate loop as packed dot products
    (TVM: tensorize with a dot-product intrinsic).

    C runs each four elements as two SMLADs over pairs of int16 (Arm's DSP
    extension: Cortex-M4, M7, M33) and each eight as one VMLADAV over a
    Helium vector (Cortex-M55) where the compiler targets them, and as a
    plain loop elsewhere; the other backends run a plain loop. The result
    is the same everywhere: the products and their sum are exact in int32.

    It requires: the loop is serial, innermost, a multiple of 4 iterations
    (64 at most), and its one statement (under a guard that does not depend on it) is
    `acc[..] = acc[..] + (int32(a[..]) + c) * (int32(b[..]) + d)`: an int32
    accumulator that does not move along the loop, a and b int8 buffers
    whose elements are contiguous along it, c and d constants (zero points)
    that keep each factor within int16.

    rewrite:
        for ic.i in 0..8:                     dot for ic.i in 0..8:
          acc[k] = acc[k] + a(ic.i) * b(ic.i)   ->   acc[k] = acc[k] + a(ic.i) * b(ic.i)
    """
    target = find_loop(func, loop, "dot")
    require_serial(target, "dot")
    if target.extent > MAX_LANES:
        raise ScheduleError("dot", f"'{loop}' has {target.extent} iterations; expected at most {MAX_LANES}",
                            f"split it, e.g. split({loop}, 8) and dot {loop}.i")
    inner = ir.find_all(target.body, ir.Loop)
    if inner:
        raise ScheduleError("dot", f"'{loop}' is not innermost: '{inner[0].var.name}' is inside it",
                            f"reorder so that '{loop}' is innermost")
    found = ir.match_dot(target)
    if isinstance(found, str):
        raise ScheduleError("dot", f"'{loop}' is not an int8 multiply-accumulate over contiguous elements: {found}",
                            "split the reduction over contiguous input channels (e.g. split(ic, 8)) and move "
                            "the inner loop innermost, under the register tile")
    return replace_loop(func, loop, lambda node: replace(node, kind="dot"))


def parallel(func: ir.Func, loop: str) -> ir.Func:
    """Run the iterations of a loop on several CPU threads (Halide, TVM: parallel).

    LLVM kernels take the loop's range as (lo, hi) and the runtime hands
    disjoint ranges to threads; C marks the loop `omp parallel for`.

    It requires: the loop is serial; no loop around it or inside it is
    parallel (loops side by side, e.g. two stages, may both be); it belongs
    to an outermost loop nest (everything around it is a loop whose whole
    body is the next loop, or the kernel's top-level sequence of stages, so
    no work outside it is repeated per thread); and it is not a reduction
    loop (by role, and every store in it, except to buffers allocated inside
    it, writes an address that depends on it). The LLVM backend runs one
    parallel loop per kernel and refuses more; C runs each.

    rewrite:
        for oc in 0..64: S(oc)   ->   parallel for oc in 0..64: S(oc)
    """
    target = find_loop(func, loop, "parallel")
    require_serial(target, "parallel")
    path = ancestors(func, loop)
    nested = [l.var.name for l in path + ir.find_all(target.body, ir.Loop)
              if isinstance(l, ir.Loop) and l.kind == "parallel"]
    if nested:
        raise ScheduleError("parallel", f"'{nested[0]}' is parallel already and nested with '{loop}'; threads "
                                        f"do not start threads", "fuse the loops first and parallelize the fused loop")
    stages = _stage_holders(func, path)
    for outer, inner in zip(path, path[1:] + [target]):
        if any(outer is holder for holder in stages):
            continue
        if not isinstance(outer, ir.Loop) or outer.body != inner:
            raise ScheduleError("parallel", f"'{loop}' is not in the outermost loop nest: "
                                            f"{describe_stmt(outer)} holds it with other statements, "
                                            f"which would run in every thread",
                                "parallelize an outer loop, or reorder this one outwards")
    if target.role == "reduction":
        raise ScheduleError("parallel", f"'{loop}' is a reduction loop: its iterations add into the same "
                                        f"outputs, so threads would race", "parallelize a loop over output elements")
    local = {a.buffer.name for a in ir.find_all(target.body, ir.Allocate)}
    reductions = stores_not_indexed_by(target.body, loop, local)
    if reductions:
        raise ScheduleError("parallel", f"'{loop}' is a reduction loop: the store to "
                                        f"'{reductions[0].buffer.name}' does not depend on it, so threads "
                                        f"would race", "parallelize a loop over output elements")
    return replace_loop(func, loop, lambda node: replace(node, kind="parallel"))


def _stage_holders(func: ir.Func, path: list[ir.Stmt]) -> list[ir.Stmt]:
    """The statements at the top of `path` that only hold stages side by side:
    the program's sequence of stages, the stage, and a stage's own top-level
    sequence of loop nests (nothing in them runs per iteration of the loop)."""
    holders: list[ir.Stmt] = []
    for k, node in enumerate(path):
        top = node is func.body or (k > 0 and isinstance(path[k - 1], ir.Stage) and path[k - 1] in holders)
        if isinstance(node, ir.Stage) or (isinstance(node, ir.Seq) and top):
            holders.append(node)
        else:
            break
    return holders


GPU_INDICES = tuple(f"{level}.{axis}" for level in ("block", "thread") for axis in ir.GPU_AXES)


def bind(func: ir.Func, loop: str, index: str) -> ir.Func:
    """Run a loop's iterations as GPU blocks or as the threads of a block,
    one per iteration (TVM: bind; Halide: gpu_blocks, gpu_threads). index:
    block.x, block.y, block.z, thread.x, thread.y or thread.z.

    Only a GPU backend renders such a loop; the CPU backends refuse it.

    It requires: the loop is serial and spatial (every store in it, except
    to buffers allocated inside it, writes an address that depends on it);
    no loop around it or inside it is parallel or bound to the same index;
    a block loop is not inside a thread loop.

    rewrite bind(oc.o, block.x):
        for oc.o in 0..4: S(oc.o)   ->   gpu_block.x for oc.o in 0..4: S(oc.o)
    """
    if index not in GPU_INDICES:
        raise ScheduleError("bind", f"index: expected one of {', '.join(GPU_INDICES)}; got {index!r}")
    target = find_loop(func, loop, "bind")
    require_serial(target, "bind")
    kind, axis = ("gpu_block" if index.startswith("block") else "gpu_thread"), index[-1]
    around = [l for l in ancestors(func, loop) if isinstance(l, ir.Loop)] + ir.find_all(target.body, ir.Loop)
    for other in around:
        if other.kind == "parallel" or (other.kind, other.axis) == (kind, axis):
            raise ScheduleError("bind", f"'{other.var.name}' is {other.kind}{'.' + other.axis if other.axis else ''} "
                                        f"and nested with '{loop}'")
    if kind == "gpu_block" and any(l.kind == "gpu_thread" for l in ancestors(func, loop) if isinstance(l, ir.Loop)):
        raise ScheduleError("bind", f"'{loop}' is inside a loop bound to GPU threads; blocks hold threads, "
                                    f"not the other way round", "bind an outer loop to the block index")
    local = {a.buffer.name for a in ir.find_all(target.body, ir.Allocate)}
    reductions = stores_not_indexed_by(target.body, loop, local)
    if target.role == "reduction" or reductions:
        raise ScheduleError("bind", f"'{loop}' is a reduction loop: its iterations add into the same outputs, "
                                    f"so GPU threads would race", "bind a loop over output elements")
    return replace_loop(func, loop, lambda node: replace(node, kind=kind, axis=axis))
