"""Default schedules for GPUs: each a chain of the same primitives the CPU
recipes use, with the output loops bound to CUDA blocks and threads.

- "direct": one output element per thread. The output loops are fused in the
  order the output is stored, so that neighbouring threads of a warp write
  neighbouring addresses (coalesced), and the fused loop is split into
  blocks. It fits every layer: convolution of any kind, pooling, int8.
- "channel tile": each thread computes `tile` output channels of one output
  pixel, in registers (cache_write, the tile loops unrolled), so that each
  input value it loads feeds `tile` multiply-adds. For convolutions whose
  output channels per group are a multiple of the tile.

Block sizes come from the GPU's description (target.GPUTarget): a multiple of
the warp size, at most the threads a block may hold.
"""

from __future__ import annotations

import math

from .. import ir
from ..spec import Spec
from ..target import GPUTarget
from . import Schedule
from .space import Recipe

BLOCK_THREADS = 256   # 8 warps: enough to hide latency, small enough for 8 blocks an SM
CHANNEL_TILE = 4


def gpu_recipe(spec: Spec, gpu: GPUTarget) -> Recipe:
    """The default GPU schedule for a layer: a channel tile where the channels
    allow, else direct. A pool fused after a convolution is a stage of its
    own, and a kernel of its own: direct."""
    tile = _channel_tile(spec)
    threads = _block_threads(spec, gpu, max(tile, 1))
    if tile:
        name, params = "channel tile", (("tile", f"{tile} output channels a thread"), ("block", f"{threads} threads"))
        why = (f"{spec.out_channels // spec.groups} output channels a group, a multiple of {tile}: each input "
               f"value a thread loads feeds {tile} multiply-adds")
        s = channel_tile(Schedule.for_spec(spec), _first_loops(spec)[0], tile, threads)
    else:
        name, params = "direct", (("block", f"{threads} threads"),)
        why = ("pooling" if not spec.is_conv else f"{spec.out_channels // spec.groups} output channels a group") + \
            ": one output element a thread, in the order the output is stored"
        s = direct(Schedule.for_spec(spec), _first_loops(spec)[0], threads)
    if spec.is_conv and spec.pool is not None:
        s = direct(s, _first_loops(spec)[1], _block_threads(spec, gpu, 1))
        params += (("pool", "a kernel of its own, direct"),)
    return Recipe(name, params, why, s.steps)


def direct(s: Schedule, first: str, threads: int) -> Schedule:
    """One output element a thread: the output loops of the nest that starts
    at loop `first`, fused in storage order and split into blocks of `threads`."""
    loops = _output_loops_in_storage_order(s, first)
    return _fused_and_bound(s.reorder(*loops) if len(loops) > 1 else s, loops, threads)


def channel_tile(s: Schedule, first: str, tile: int, threads: int) -> Schedule:
    """`tile` output channels of one output pixel a thread, accumulated in
    registers, in the nest that starts at loop `first` (the output channels')."""
    s = s.split("oc", tile, tail="perfect")
    loops = [name for name in _output_loops_in_storage_order(s, "oc.o") if name != "oc.i"]
    s = s.reorder(*loops, "oc.i").cache_write(loops[-1])
    reduction = _reduction_loops(s, "oc.i")
    if reduction:
        s = s.reorder(*reduction, "oc.i")
    s = s.unroll("oc.i.init").unroll("oc.i").unroll("oc.i.out")
    return _fused_and_bound(s, loops, threads)


def _first_loops(spec: Spec) -> list[str | None]:
    """The outermost loop of each nest of the lowered kernel (the convolution's,
    then a fused pool's); None for a nest with no loop (lowering leaves out loops
    of one iteration: one output element of a 1x1 kernel)."""
    func = Schedule.for_spec(spec).func
    stages = ir.find_all(func.body, ir.Stage)
    nests = [stage.body for stage in stages] if stages else [func.body]
    return [nest.var.name if isinstance(nest, ir.Loop) else None for nest in nests]


def _channel_tile(spec: Spec) -> int:
    if not spec.is_conv:
        return 0
    per_group = spec.out_channels // spec.groups
    return next((t for t in (CHANNEL_TILE, 2) if per_group % t == 0 and spec.out_channels > t), 0)


def _block_threads(spec: Spec, gpu: GPUTarget, tile: int) -> int:
    """Threads a block: BLOCK_THREADS, or the warps that cover a small layer's threads."""
    outputs = math.prod(spec.output_shape) // tile
    warps = -(-min(outputs, BLOCK_THREADS) // gpu.warp_size)
    return min(warps * gpu.warp_size, gpu.max_threads_per_block)


def _output_loops_in_storage_order(s: Schedule, first: str | None) -> list[str]:
    """The output loops of the nest that starts at loop `first` (the perfect
    chain of spatial loops above its accumulator), ordered as the axes of
    what it writes are stored, outermost first."""
    if first is None:
        return []
    chain = []
    node = next(loop for loop in ir.find_all(s.func.body, ir.Loop) if loop.var.name == first)
    while isinstance(node, ir.Loop) and node.role == "spatial":
        chain.append(node.var.name)
        node = node.body
    store = next(st for st in ir.find_all(node, ir.Store) if st.buffer.scope in ("global", "workspace"))
    output = store.buffer
    axis_of = {}
    for axis, index in zip(output.axes, store.indices):
        for name in chain:
            if name in ir.free_vars(index):
                axis_of.setdefault(name, axis)
    order = [d.axis for d in output.layout]
    return sorted(chain, key=lambda name: order.index(axis_of[name]))


def _reduction_loops(s: Schedule, inner: str) -> list[str]:
    """The reduction loops around `inner` after cache_write, outermost first (reorder moves `inner` below them)."""
    holder = next(loop for loop in ir.find_all(s.func.body, ir.Loop) if loop.var.name == inner)
    return [loop.var.name for loop in ir.find_all(holder.body, ir.Loop) if loop.role == "reduction"]


def _fused_and_bound(s: Schedule, loops: list[str], threads: int) -> Schedule:
    """The loops fused into one, split into blocks of `threads` threads, bound.
    No loops (lowering leaves out loops of one iteration: a single output) is one thread."""
    if not loops:
        return s
    fused = loops[0]
    for name in loops[1:]:
        s = s.fuse(fused, name)
        fused = f"{fused}_{name}"
    return s.split(fused, threads).bind(f"{fused}.o", "block.x").bind(f"{fused}.i", "thread.x")

