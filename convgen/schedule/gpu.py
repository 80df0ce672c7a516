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
- "depthwise column tile": each thread computes 4 neighbouring output
  columns of one channel in registers; their windows overlap, so an input
  value loaded once serves up to 4 of them. For depthwise convolutions.
- "shared tile" (implicit GEMM): a block computes 64 output channels by 4
  rows by 4 x `columns` columns, its 256 threads 4 channels by `columns`
  columns each in registers (4, or fewer where the grid would have fewer
  blocks than the GPU has multiprocessors); the reduction runs over chunks of input channels, each chunk's
  inputs and weights staged in shared memory by all the block's threads
  together (cache_read, barriers), so that a value loaded from global memory
  feeds 16 or 64 multiply-adds. For dense convolutions (one group) of 32
  output channels or more, where the chunks' tiles fit shared memory.

Block sizes come from the GPU's description (target.GPUTarget): a multiple of
the warp size, at most the threads a block may hold. None of these has been
timed on a GPU yet; they are the standard shapes of such kernels, chosen by
rule.
"""

from __future__ import annotations

import math

from .. import ir
from ..spec import Spec
from ..target import GPUTarget
from ..errors import ScheduleError
from . import Schedule
from .space import Recipe

BLOCK_THREADS = 256   # 8 warps: enough to hide latency, small enough for 8 blocks an SM
CHANNEL_TILE = 4
COLUMN_TILE = 4
MAX_UNROLLED_TAPS = 7


def gpu_recipe(spec: Spec, gpu: GPUTarget) -> Recipe:
    """The default GPU schedule for a layer: the first of shared tile,
    depthwise column tile, channel tile and direct that applies and builds
    (a refusal is named in `why`). A pool fused after a convolution is a
    stage of its own, and a kernel of its own: direct."""
    start = Schedule.for_spec(spec)
    first = first_loops(start)
    refused = []
    for name, params, why, make in _candidates(spec, gpu, start, first[0]):
        try:
            s = make()
        except ScheduleError as err:
            refused.append(f"{name} refused ({err.message})")
            continue
        if spec.is_conv and spec.pool is not None:
            s = direct(s, first[1], _block_threads(spec, gpu, 1))
            params += (("pool", "a kernel of its own, direct"),)
        return Recipe(name, params, why + "".join(f"; {reason}" for reason in refused), s.steps, (), s.history)
    raise AssertionError("direct builds for every layer")


def _candidates(spec: Spec, gpu: GPUTarget, start: Schedule, first: str | None):
    """(name, params, why, make the schedule from the lowered `start`) of each
    GPU recipe that applies, in order of preference."""
    per_group = spec.out_channels // spec.groups if spec.is_conv else 0
    columns, chunk = _shared_shape(spec, gpu)
    if spec.is_conv and spec.groups == 1 and spec.out_channels >= 32 and chunk:
        x = SHARED_THREADS["x"]
        yield ("shared tile", (("block tile", f"64 output channels x 4 rows x {x * columns} columns"),
                               ("thread tile", f"4 output channels x {columns} columns"),
                               ("input channels a stage", str(chunk))),
               f"a dense convolution of {spec.out_channels} output channels: a block's inputs and weights go "
               f"through shared memory, {chunk} input channels at a time",
               lambda: shared_tile(start, spec, chunk, columns))
    out_w = spec.conv_output_size[1] if spec.is_conv else 0
    if spec.is_conv and per_group == 1 and spec.in_channels == spec.groups and out_w >= 2 * COLUMN_TILE:
        threads = _block_threads(spec, gpu, COLUMN_TILE)
        yield ("depthwise column tile", (("tile", f"{COLUMN_TILE} output columns a thread"),
                                         ("block", f"{threads} threads")),
               f"depthwise: {COLUMN_TILE} neighbouring columns a thread share the inputs of their overlapping "
               f"windows", lambda: column_tile(start, first, COLUMN_TILE, threads))
    tile = _channel_tile(spec)
    if tile:
        threads = _block_threads(spec, gpu, tile)
        yield ("channel tile", (("tile", f"{tile} output channels a thread"), ("block", f"{threads} threads")),
               f"{per_group} output channels a group, a multiple of {tile}: each input value a thread loads "
               f"feeds {tile} multiply-adds", lambda: channel_tile(start, first, tile, threads))
    threads = _block_threads(spec, gpu, 1)
    yield ("direct", (("block", f"{threads} threads"),),
           ("pooling" if not spec.is_conv else f"{per_group} output channels a group") +
           ": one output element a thread, in the order the output is stored", lambda: direct(start, first, threads))


def direct(s: Schedule, first: str, threads: int) -> Schedule:
    """One output element a thread: the output loops of the nest that starts
    at loop `first`, fused in storage order and split into blocks of `threads`."""
    loops = _output_loops_in_storage_order(s, first)
    return _fused_and_bound(s.reorder(*loops) if len(loops) > 1 else s, loops, threads)


def channel_tile(s: Schedule, first: str, tile: int, threads: int) -> Schedule:
    """`tile` output channels of one output pixel a thread, in registers, in
    the nest that starts at loop `first`."""
    return _register_tile(s, first, "oc", tile, "perfect", threads)


def column_tile(s: Schedule, first: str, tile: int, threads: int) -> Schedule:
    """`tile` neighbouring output columns of one channel a thread, in
    registers, in the nest that starts at loop `first`: the columns' windows
    overlap, so the inputs a thread loads for one column serve the next."""
    s = _register_tile(s, first, "ow", tile, "guard", threads)
    # the taps of a row written out, so that the compiler sees the loads the columns share
    kw = next((loop for loop in ir.find_all(s.func.body, ir.Loop) if loop.var.name == "kw"), None)
    return s.unroll("kw") if kw is not None and kw.extent <= MAX_UNROLLED_TAPS else s


def _register_tile(s: Schedule, first: str, along: str, tile: int, tail: str, threads: int) -> Schedule:
    """`tile` iterations of output loop `along` a thread, accumulated in
    registers (cache_write, the tile loops innermost and unrolled); the other
    output loops fused in storage order and bound to blocks and threads."""
    s = s.split(along, tile, tail=tail)
    inner = f"{along}.i"
    loops = [name for name in _output_loops_in_storage_order(s, f"{along}.o" if first == along else first)
             if name != inner]
    s = s.reorder(*loops, inner).cache_write(loops[-1])
    reduction = _reduction_loops(s, inner)
    if reduction:
        s = s.reorder(*reduction, inner)
    s = s.unroll(f"{inner}.init").unroll(inner).unroll(f"{inner}.out")
    return _fused_and_bound(s, loops, threads)


# the shared tile: threads along z (output channels), y (rows), x (column groups), and each thread's part
SHARED_THREADS = {"z": 16, "y": 4, "x": 4}
SHARED_CHANNELS = 4   # output channels a thread


def shared_tile(s: Schedule, spec: Spec, chunk: int, columns: int = 4) -> Schedule:
    """The "shared tile" schedule (module docstring), `chunk` input channels a
    stage, `columns` output columns a thread."""
    z, y, x = SHARED_THREADS["z"], SHARED_THREADS["y"], SHARED_THREADS["x"]
    channels = SHARED_CHANNELS
    s = (s.split("oc", z * channels).split("oc.i", channels, tail="perfect").split("oh", y)
         .split("ow", x * columns).split("ow.i", columns, tail="perfect"))
    batch = ["n"] if spec.batch > 1 else []
    s = s.reorder(*batch, "oc.o", "oh.o", "ow.o", "oc.i.o", "oh.i", "ow.i.o", "oc.i.i", "ow.i.i").cache_write("ow.o")
    reduction = ["ic.o", "ic.i", "kh", "kw"] if chunk < spec.in_channels else ["ic", "kh", "kw"]
    if chunk < spec.in_channels:
        s = s.split("ic", chunk)
    reduction = [name for name in reduction if name in _loop_names(s)]
    s = s.reorder(reduction[0], "oc.i.o", "oh.i", "ow.i.o", *reduction[1:], "oc.i.i", "ow.i.i")
    s = s.cache_read("w", reduction[0], scope="shared").cache_read("x", reduction[0], scope="shared")
    for copy in ("w_shared", "x_shared"):
        s = _spread_over_threads(s, [n for n in _loop_names(s) if n.startswith(copy + "_")], (z, y, x),
                                 copy.replace("_shared", "_copy"))
    for suffix in (".init", "", ".out"):
        s = (s.unroll(f"oc.i.i{suffix}").unroll(f"ow.i.i{suffix}").bind(f"oc.i.o{suffix}", "thread.z")
             .bind(f"oh.i{suffix}", "thread.y").bind(f"ow.i.o{suffix}", "thread.x"))
    s = s.fuse("oh.o", "ow.o").bind("oh.o_ow.o", "block.x").bind("oc.o", "block.y")
    return s.bind("n", "block.z") if batch else s


def _spread_over_threads(s: Schedule, loops: list[str], threads: tuple[int, int, int], name: str) -> Schedule:
    """A copy nest fused into one loop, called `name`, whose iterations the block's threads share, x fastest."""
    fused = loops[0]
    for k, inner in enumerate(loops[1:], start=2):
        last = k == len(loops)
        s = s.fuse(fused, inner, name if last else "")
        fused = name if last else f"{fused}_{inner}"
    z, y, x = threads
    s = s.split(fused, x).split(f"{fused}.o", y).split(f"{fused}.o.o", z)
    return (s.bind(f"{fused}.i", "thread.x").bind(f"{fused}.o.i", "thread.y")
            .bind(f"{fused}.o.o.i", "thread.z"))


def _shared_shape(spec: Spec, gpu: GPUTarget) -> tuple[int, int]:
    """(columns a thread, input channels a stage) of the shared tile: the most
    columns (4, 2, 1) whose grid has as many blocks as the GPU has
    multiprocessors (else 1), and for those the most input channels (8, 4, 2,
    1, or all where there are fewer) whose weight and input tiles each fit a
    copy (4096 elements) and together the GPU's shared memory; (0, 0) where
    not even one does."""
    if not spec.is_conv:
        return 0, 0
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    out_h, out_w = spec.conv_output_size
    z, y, x = SHARED_THREADS["z"], SHARED_THREADS["y"], SHARED_THREADS["x"]

    def blocks(columns: int) -> int:
        tiles = -(-spec.out_channels // (z * SHARED_CHANNELS)) * -(-out_h // y) * -(-out_w // (x * columns))
        return spec.batch * tiles
    columns = next((c for c in (4, 2) if blocks(c) >= gpu.multiprocessors), 1)
    rows = (y - 1) * sh + (kh - 1) * dh + 1
    cols = (x * columns - 1) * sw + (kw - 1) * dw + 1
    for chunk in sorted({min(spec.in_channels, c) for c in (8, 4, 2, 1)}, reverse=True):
        weights, inputs = z * SHARED_CHANNELS * chunk * kh * kw, chunk * rows * cols
        if max(weights, inputs) <= 4096 and 4 * (weights + inputs) <= gpu.shared_bytes_per_block:
            return columns, chunk
    return 0, 0


def _loop_names(s: Schedule) -> list[str]:
    return [loop.var.name for loop in ir.find_all(s.func.body, ir.Loop)]


def first_loops(s: Schedule) -> list[str | None]:
    """The outermost loop of each nest of a lowered kernel (the convolution's,
    then a fused pool's); None for a nest with no loop (lowering leaves out loops
    of one iteration: one output element of a 1x1 kernel)."""
    func = s.func
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

