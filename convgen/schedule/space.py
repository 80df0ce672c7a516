"""The default schedule of a layer, and the recipes' space it is a point of.

A recipe is a function of knobs (`schedule_for` builds a point of the
space; schedule/knobs.py lists the points `convgen tune` searches). The
default picks one point per layer by rules measured on real layers
(`default_recipe`). Recipes follow the direct-convolution recipe of TVM's conv2d_NCHWc and
oneDNN's JIT kernels: a register tile of R output columns by one vector of
output channels (or of output columns, where channels do not vectorize
well), the reduction outside the tile, the tile unrolled and vectorized,
weights blocked so a vector loads contiguously, the input padded once, and
an outer loop across threads. Widths come from the target, never literals.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from math import prod

from .. import ir
from ..errors import ScheduleError
from ..spec import Spec
from ..target import Target
from . import Schedule
from .steps import Step
from .nest import loop_names


def _direct(spec: Spec, target: Target, axis: str, lanes: int, tile: int, order: str, threads: int,
            vectors: int = 1, split: str | None = None) -> Schedule:
    """A register tile of `tile` output columns by `vectors` vectors of output
    channels (axis "channels"), or by one vector of output columns per tile
    step (axis "columns"), the reduction outside the tile; on `threads` threads,
    shared as `split` says (by default as `_thread_split` chooses)."""
    s = Schedule.for_spec(spec)
    names = set(loop_names(s.func))
    channel = "oc" if spec.is_conv else "c"
    if axis == "channels":
        s = (s.split(channel, lanes * vectors, tail=_tail(spec.out_channels, lanes * vectors))
             .split(f"{channel}.i", lanes, tail="perfect")
             .split("ow", tile, tail=_tail(spec.conv_output_size[1], tile)))
        blocks, vector_loop = f"{channel}.o", f"{channel}.i.i"
        tile_loops, extents = ["ow.i", f"{channel}.i.o"], [tile, vectors]
    else:
        s = s.split("ow", lanes * tile).split("ow.i", lanes, tail=_tail(lanes * tile, lanes))
        blocks, vector_loop, tile_loops, extents = channel, "ow.i.i", ["ow.i.o"], [tile]
    # lowering leaves out loops of one iteration: batch 1, and a single output row
    has_rows = "oh" in names
    block_count = -(-spec.out_channels // (lanes * vectors)) if axis == "channels" else spec.out_channels
    split = _thread_split(spec, target, has_rows, threads, block_count) if split is None else split
    if split not in _DIRECT_SPLITS or (split == "") != (threads <= 1) or (split in ("rows", "fused") and not has_rows):
        raise ScheduleError("parallel", f"threads: {threads} threads cannot be shared as {split!r} "
                                        f"(rows: {'yes' if has_rows else 'none'})")
    rows = ["oh"] if has_rows else []
    outer = (["n"] if "n" in names else []) + (rows + [blocks] if split == "rows" else [blocks] + rows) + ["ow.o"]
    s = s.reorder(*outer, *tile_loops, vector_loop).cache_write("ow.o")
    reduction = [n for n in ("ic", "kh", "kw") if n in names]
    if order == "kernel-outer" and "ic" in reduction:
        reduction = [n for n in ("kh", "kw", "ic") if n in names]
    s = s.reorder(*reduction, *tile_loops, vector_loop)
    for loop, extent in zip(tile_loops, extents):
        if extent > 1:
            s = s.unroll(loop)
    s = (s.vectorize(vector_loop).reorder(*(f"{loop}.init" for loop in tile_loops), vector_loop + ".init")
         .vectorize(vector_loop + ".init"))
    if axis == "channels" and spec.is_conv:
        s = s.layout("w", f"OIHW{lanes}o")
        if _columns_alias(spec):
            s = _nchw_input(s, spec, lanes, threads)
        if _computed_layout(spec) == "NCHW":
            # write the tile back a vector of columns at a time: each channel's row is contiguous in y
            s = (s.reorder(*(f"{loop}.out" for loop in tile_loops[1:]), f"{vector_loop}.out", "ow.i.out")
                 .vectorize("ow.i.out"))
        else:
            s = s.vectorize(f"{vector_loop}.out")   # a pixel's channels are contiguous in y
    elif axis == "columns" and _computed_layout(spec) == "NCHW":
        s = s.vectorize(f"{vector_loop}.out")   # the tile's columns are contiguous in y too
    # Zero padding left to in-range checks, with the border tiles peeled so the rest runs without
    # them: no padded copy of x per call (3x3 64: 0.96 -> 0.90 ms at one thread, 0.64 -> 0.47 ms at
    # two, where the copy was serial). A row's check does not depend on the columns, so the backends
    # hoist it out of the tile (ir.hoist_conditions) and rows need no peeling.
    peel_borders = axis == "channels" and spec.is_conv and spec.padding_mode == "zeros"
    if any(spec.padding) and not peel_borders:
        s = s.pad_input()
    if split == "rows":
        s = s.parallel("oh")
    elif split == "blocks":
        s = s.parallel(blocks)
    elif split == "fused":
        s = s.fuse(blocks, "oh").parallel(f"{blocks}_oh")
    if axis == "channels":
        s = _peel_border(s, spec, "ow.o", tile, axis=1, padding=peel_borders and any(spec.padding))
    else:
        # the masked last tile in a copy of its own, so the others' vectors carry no mask (NCHW maxpool
        # 2x2 of 64 channels at 112x112, one thread: 404 -> 133 us a call)
        s = _peel_border(s, spec, "ow.o", lanes * tile, axis=1, padding=False)
    if any(spec.padding) and peel_borders and order == "ic-outer" and has_rows and split != "fused":
        # Border rows too, where rows are a loop of their own and the input channels run outside the
        # taps: with the row's check inside the channels' loop, LLVM spilled the tile when it starts
        # from zero, a layer without bias (NCHW 3x3 128->32 at 56x56: 46 -> 113 GFLOP/s; with a bias
        # 118 either way). With the taps outside (ResNet's conv1) the check runs outside the
        # channels, and peeling rows made it 5% slower.
        s = _peel_border(s, spec, "oh", 1, axis=0)
    if axis == "channels" and spec.out_channels % lanes and vectors == 1 and block_count > 1 and split != "fused":
        # the masked last block in a copy of its own, so the others run without masks (one thread, ReLU,
        # GFLOP/s: NCHW 3x3 48->40 at 28x28 37 -> 64, 1x1 232->232 at 7x7 96 -> 100). Not with two vectors
        # a block, where LLVM spilled the copy's tile (NCHW 1x1 58->58 at 28x28: 88 -> 56)
        s = s.peel(blocks, 0, 1)
    return s


_DIRECT_SPLITS = ("", "rows", "blocks", "fused")   # how `_direct` shares work among threads


def _columns_alias(spec: Spec) -> bool:
    """Whether the input columns a channel tile reads lie a multiple of 4 KiB
    apart (NHWC, 1024 float32 channels, or 512 at stride 2): they then fall in
    one set of the L1 cache (a way is 4 KiB on x86 cores: 32 KiB 8-way, 48 KiB
    12-way), which holds fewer lines than the tile reads. The input then goes
    to NCHW first, a stage of the kernel (U-Net's 3x3 1024->1024 at 10x10,
    NHWC: 52 -> 110 GFLOP/s; at 512 channels it makes no difference)."""
    columns_apart = spec.stride[1] * spec.in_channels * spec.array_dtypes["x"].itemsize
    return spec.input_layout == "NHWC" and columns_apart % 4096 == 0


def _nchw_input(s: Schedule, spec: Spec, lanes: int, threads: int) -> Schedule:
    """An NHWC input copied to NCHW by a stage of the kernel, a block of
    `lanes` channels by 8 columns at a time, transposed in registers
    (mark-transposes), its rows across threads: copied element by element,
    each read a page apart, the copy took a quarter of the 1x1 1024->512 at
    14x14 (87 -> 112 GFLOP/s)."""
    columns = 8
    s = (s.layout("x", "NCHW").split("x_packed.c", lanes, tail=_tail(spec.in_channels, lanes))
         .split("x_packed.w", columns, tail=_tail(spec.input_size[1], columns))
         .reorder("x_packed.h", "x_packed.c.o", "x_packed.w.o", "x_packed.c.i", "x_packed.w.i")
         .vectorize("x_packed.w.i"))
    return s.parallel("x_packed.h") if threads > 1 else s


def _thread_split(spec: Spec, target: Target, has_rows: bool, threads: int, count: int) -> str:
    """How the direct recipe shares its work among threads: "" (one thread),
    "blocks" (the `count` output-channel blocks), "rows" (output rows, each
    over every block) or "fused" (rows of each block, fused into one loop).

    A thread runs its own share, then takes what is left of the others'
    (the runtime's OpenMP entry), so a thread that loses its CPU for a while
    hands work on, if there is work in small enough pieces: rows where the
    blocks are fewer than four per thread or do not share evenly, as long as
    all the weights, which each row reads, fit in half the L2 cache. Against
    whole blocks split statically (paired medians, kernel alone): at two
    threads 0.99x-1.06x on the suite's 1x1 256->64, 3x3 64, conv1, dilated
    and grouped layers; with three threads on two CPUs 1x1 256->64 1.16x
    (406 against 347 GFLOP/s), 3x3 64 1.02x, conv1 1.06x, grouped 1.08x.
    Elsewhere each block's rows, fused: a share is then still a run of
    whole blocks where they divide evenly, but what is taken is a row (3x3
    256 at two threads: 1.00x quiet, 1.03x with three threads on two CPUs,
    against whole blocks taken). Grouped layers keep whole blocks or rows
    (fusing would hide from the simplifier that a grouped channel vector
    stays in one group)."""
    if threads <= 1:
        return ""
    if not has_rows:
        return "blocks"
    weights = prod(spec.weight_shape) * spec.array_dtypes["w"].itemsize if spec.is_conv else 0
    few_or_uneven = count < 4 * threads or count % threads
    if few_or_uneven and weights <= _l2_bytes(target) // 2:
        return "rows"
    if spec.is_conv and spec.groups > 1:
        return "blocks"
    return "fused"


def _peel_border(s: Schedule, spec: Spec, loop: str, tile: int, axis: int, padding: bool = True) -> Schedule:
    """Peel the leading and trailing iterations of `loop` (tiles of `tile` outputs
    along `axis`) whose input windows reach into the padding (with `padding`),
    and a last tile that `tile` does not fill: its guard then folds away in the
    tiles before it, where it checked each column inside the reduction (NCHW
    3x3 128->256 at 58x58 in tiles of 14 columns: 50 -> 113 GFLOP/s)."""
    out = spec.conv_output_size[axis]
    extent = -(-out // tile)
    front, back = _border_tiles(spec, tile, axis) if padding else (0, 0)
    if out % tile:
        back = max(back, 1)
    front = min(front, extent - 1)
    back = min(back, extent - 1 - front)
    return s.peel(loop, front, back) if front or back else s


def _border_tiles(spec: Spec, tile: int, axis: int) -> tuple[int, int]:
    """(leading, trailing) tiles of `tile` outputs along `axis` that read padding."""
    size, out = spec.input_size[axis], spec.conv_output_size[axis]
    stride, dilation, kernel = spec.stride[axis], spec.dilation[axis], spec.kernel_size[axis]
    before = spec.padding[2 * axis]
    starts = [t * stride - before for t in range(0, out, tile)]
    ends = [(min(t + tile, out) - 1) * stride - before + dilation * (kernel - 1) for t in range(0, out, tile)]
    front = next((k for k, first in enumerate(starts) if first >= 0), len(starts))
    back = next((k for k, last in enumerate(reversed(ends)) if last < size), len(ends))
    return front, back


def _channel_tile(spec: Spec, target: Target) -> tuple[int, int]:
    """(output-channel vectors, output columns) of a direct convolution's
    register tile. With 32 vector registers: 28 accumulators, two channel
    vectors by up to 14 columns (8 on wide NCHW rows) where a group's channels make pairs of
    vectors (each broadcast input then feeds two FMAs, each weight vector 14;
    measured 10-25% faster than one vector by 8 columns on the 3x3 and 7x7
    suite layers), leaving registers for two weight vectors and broadcasts.
    With 16, one vector by 4 columns."""
    if target.vector_registers < 32:
        return 1, 4
    accumulators = target.vector_registers - 4
    vectors = 2 if (spec.out_channels // spec.groups) % (2 * target.vector_lanes) == 0 else 1
    columns = spec.conv_output_size[1]
    if columns >= 96 and spec.input_layout == "NCHW":
        # rows this wide: 8 columns, the last tile peeled where they do not divide the row (one
        # thread, GFLOP/s, 8 against the widest divisor up to 14: 3x3 128->128 at 122x122 112 against
        # 98 (12), 64->64 at 250x250 112 against 94 (12), ResNet's conv1 114 against 112 (14); one
        # vector, MobileNetV3's stem 3->16 stride 2 at 224x224: 107 against 76 (28); at 56 to 74
        # columns both within 1%; in NHWC 1-3% either way)
        return vectors, 8
    limit = accumulators // vectors
    if vectors == 1 and spec.input_layout == "NCHW":
        # one vector by up to 14 columns, not 28: in NCHW, one thread, GFLOP/s, 28 against 14:
        # 1x1 40->240 at 28x28 84 against 104, 64->16 at 55x55 83 against 101, 64->48 at 56x56 83
        # against 103; 3x3 32->48 at 56x56 107 against 117 (in NHWC 28 ran as fast or faster)
        limit = 14
    across = _tile_across(columns, limit)
    if vectors == 1 and across == columns >= 8 and spec.padding[2] and spec.padding[3]:
        # one vector by a whole padded row: LLVM turned the tile's column checks at both ends into a
        # vector built from the row (NCHW 3x3 64->16 at 14x14: 48 GFLOP/s); two tiles of half the row
        # ran 123
        across = _tile_across(columns, -(-columns // 2))
    return vectors, across


def _masked_channel_tile(spec: Spec, target: Target) -> tuple[int, int]:
    """`_channel_tile` for channels that fill no whole number of vectors: one or
    two vectors, whichever computes fewer channels past the end (two where
    equal, for the reuse), by as many columns as accumulators allow."""
    lanes, channels = target.vector_lanes, spec.out_channels
    vectors = min((2, 1), key=lambda v: -(-channels // (v * lanes)) * v * lanes - channels)
    return vectors, _tile_across(spec.conv_output_size[1], (target.vector_registers - 4) // vectors)


def _tile_across(extent: int, limit: int) -> int:
    """A register tile's width along a loop: the largest divisor of its extent
    from limit down to half of it, else limit (with a guarded tail)."""
    limit = max(1, min(extent, limit))
    return next((d for d in range(limit, (limit + 1) // 2 - 1, -1) if extent % d == 0), limit)


def _l2_bytes(target: Target) -> int:
    """The target's L2 cache per core, or 256 KiB where the OS does not say."""
    return target.cache("L2") or 256 * 1024


def _computed_layout(spec: Spec) -> str:
    """The layout the computation writes: the output's, or with a fused pool
    that of the convolution's own output (conv_out, NCHW), which the pool reads."""
    return "NCHW" if spec.pool is not None else spec.output_layout


def _tail(extent: int, factor: int) -> str:
    return "perfect" if extent % factor == 0 else "guard"


# One point of the recipes' space: a recipe and the value of each of its knobs, as sorted (knob, value)
# pairs (hashable, and JSON as a mapping). `schedule_for` builds it; the tuner's space
# (schedule/knobs.py) varies the knobs.
Config = tuple[tuple[str, object], ...]


def config(**knobs) -> Config:
    return tuple(sorted(knobs.items()))


def schedule_for(spec: Spec, target: Target, point: Config) -> Schedule:
    """The schedule a point of the recipes' space names (ScheduleError where a
    primitive refuses it). Knobs: recipe, one of
    - "direct": axis ("channels" or "columns"), lanes, vectors, tile (columns), order
      ("ic-outer" or "kernel-outer"), threads, split ("", "rows", "blocks", "fused");
    - "pointwise": rows, vectors (the GEMM's register tile), threads;
    - "channels-last": lanes, tile, threads, split ("", "rows", "blocks");
    - "one-pixel": lanes, vectors, threads;
    - "winograd": tile (2 or 4), threads;
    - "scalar": none (a target without vector registers);
    - "dot": rows, columns (the register tile), width (elements a dot loop takes: 4, 8 or 16),
      fold (the zero point folded into the bias), for int8 on a target with packed dot
      products (Arm's DSP extension or Helium);
    - "lanes": columns, for an int8 layer on Helium (output channels as vector lanes);
    - "inside-pool": none (the convolution computed per pool window, without vector registers);
    - "naive": none (the loop nest as lowered: the default where no recipe fits).
    A layer with a fused pool gets the pool's steps after the convolution's."""
    knobs = dict(point)
    recipe, threads = knobs.get("recipe"), knobs.get("threads", 1)
    if recipe == "direct":
        s = _direct(spec, target, knobs["axis"], knobs["lanes"], knobs["tile"], knobs["order"], threads,
                    knobs.get("vectors", 1), knobs.get("split"))
    elif recipe == "pointwise":
        tile = (knobs["rows"], knobs["vectors"]) if "rows" in knobs else None
        s = _pointwise(spec, target, threads, tile)
    elif recipe == "channels-last":
        s = _channels_last(spec, knobs["lanes"], threads, knobs.get("tile"), knobs.get("split"))
    elif recipe == "one-pixel":
        s = _one_pixel(spec, knobs["lanes"], knobs["vectors"], threads)
    elif recipe == "winograd":
        s = winograd_schedule(spec, target, threads, knobs["tile"])
    elif recipe == "scalar":
        return _scalar_tile(spec, target)
    elif recipe == "dot":
        return _dot_tile(spec, knobs["rows"], knobs["columns"], knobs["width"], knobs.get("fold", False))
    elif recipe == "lanes":
        return _lanes_tile(spec, knobs["columns"])
    elif recipe == "inside-pool":
        return Schedule.for_spec(spec).compute_at("conv", "pw")
    elif recipe == "naive":
        return Schedule.for_spec(spec)
    else:
        raise ScheduleError("recipe", f"expected one of direct, pointwise, channels-last, one-pixel, winograd, "
                                      f"scalar, dot, lanes, inside-pool, naive; got {recipe!r}")
    return s.parallel(_pool_across(spec)) if spec.pool is not None and threads > 1 and _pool_across(spec) else s


def _pool_across(spec: Spec) -> str | None:
    """The fused pool's loop to share among threads (lowering leaves out loops of one iteration)."""
    return "pc" if spec.out_channels > 1 else "ph" if spec.output_size[0] > 1 else None


def _direct_config(spec: Spec, target: Target, axis: str, lanes: int, tile: int, order: str, threads: int,
                   vectors: int = 1) -> Config:
    """`_direct`'s point of the space, with its split among threads stated."""
    blocks = -(-spec.out_channels // (lanes * vectors)) if axis == "channels" else spec.out_channels
    split = _thread_split(spec, target, spec.conv_output_size[0] > 1, threads, blocks)
    return config(recipe="direct", axis=axis, lanes=lanes, vectors=vectors, tile=tile, order=order,
                  threads=threads, split=split)


def _pointwise_config(spec: Spec, target: Target, threads: int) -> Config:
    try:
        rows, vectors = _pointwise_tile(spec, target)
    except ScheduleError:
        return config(recipe="pointwise", threads=threads)   # refused when built, with this reason
    return config(recipe="pointwise", rows=rows, vectors=vectors, threads=threads)


def _channels_last_config(spec: Spec, lanes: int, threads: int) -> Config:
    return config(recipe="channels-last", lanes=lanes, tile=_channels_last_tile(spec), threads=threads,
                  split=_depthwise_split(spec, lanes, threads))


@dataclass(frozen=True)
class Recipe:
    """The default schedule convgen chose for a layer: the recipe's name, its
    parameters (tile, vectors, layout, threads), the rule that picked it, and
    its point of the recipes' space (where the tuner starts)."""

    name: str
    params: tuple[tuple[str, str], ...]
    why: str
    steps: tuple
    config: Config = ()
    # the nest after lowering and after each step, as the search for a recipe applied them
    # (Schedule.history), so that a plan need not apply them again; () where not kept
    history: tuple = field(default=(), compare=False, repr=False)

    def describe(self) -> str:
        params = ", ".join(f"{key} {value}" for key, value in self.params)
        return f"{self.name} ({params}): {self.why}" if params else f"{self.name}: {self.why}"


@dataclass(frozen=True)
class _Candidate:
    name: str
    params: tuple[tuple[str, str], ...]
    why: str
    config: Config


def default_schedule(spec: Spec, target: Target, threads: int = 1) -> tuple:
    """The steps of `default_recipe`, or none (the naive loop nest)."""
    recipe = default_recipe(spec, target, threads)
    return recipe.steps if recipe else ()


@lru_cache(maxsize=64)   # a layer built for a second backend, or again, reuses the search
def default_recipe(spec: Spec, target: Target, threads: int = 1) -> Recipe | None:
    """The schedule convgen uses when a spec brings none: the first recipe of
    the layer's family that applies, else None (the naive loop nest).

    Families, tried in this order:
    - channels-last grouped and depthwise: channel vectors innermost, `_channels_last`
      (depthwise channels that fill no whole number of vectors: the last block masked);
    - depthwise in NCHW: the same, on a copy of the input in channel blocks
      that a stage of the kernel makes;
    - one output pixel (a fully connected layer as a conv): `_one_pixel`;
    - a float32 pool in NHWC: `_direct` over channel vectors;
    - direct over channel vectors: a register tile of output columns by one
      or two vectors of output channels, when each group's channels fill
      whole vectors (`_channel_tile`);
    - pointwise (1x1, stride 1, no padding, NCHW, one group) whose channels
      do not fill vectors: a GEMM over output pixels, `_pointwise`, where its
      register tile holds 8 accumulators or more (else after the masked
      block below). Where they do, the direct tile above is faster (kernel
      alone, 64-byte-aligned arrays, 1 / 2 threads: 256->64 at 56x56 0.43 / 0.24 ms as a GEMM,
      0.41 / 0.21 direct; 128->512 at 28x28 0.48 / 0.42 against 0.42 / 0.22;
      32->192 at 56x56 0.26 / 0.14 against 0.20 / 0.10): each broadcast
      input feeds two FMAs and 28 accumulators fit, where the GEMM's tile
      has 16, and threads split channel blocks, not a few pixel groups;
    - direct over half-width channel vectors, where a float32 group's
      channels fill only those (24 with 16 lanes);
    - direct over channel vectors with the last block masked, for float32
      layers of one group whose channels fill no whole number of vectors
      (before the half-width vectors where their tile would hold fewer than
      12 accumulators);
    - direct over output columns, the last resort.
    The register tile leaves room for weight vectors and broadcast inputs
    among the target's vector registers. A target without vector registers
    (a Cortex-M) gets, for int8 layers where its packed instructions apply,
    the packed dot tile (`_dot_tile`: the DSP extension's SMLAD or Helium's
    VMLADAV) or, for other int8 layers on Helium, output channels as vector
    lanes (`_lanes_tile`); else a scalar register tile (`_scalar_tile`). A
    recipe that applies but is refused by a step (a guarded tail it cannot
    take, say) passes the layer on to the next; the refusal is named in `why`.
    """
    if spec.pool is not None:
        return _with_pool(spec, target, threads)
    return _first_that_builds(spec, target, _candidates(spec, target, threads))


def _first_that_builds(spec: Spec, target: Target, candidates: list[_Candidate]) -> Recipe | None:
    refused = []
    for candidate in candidates:
        try:
            schedule = schedule_for(spec, target, candidate.config)
        except ScheduleError as err:
            refused.append(f"{candidate.name} refused ({err.message})")
            continue
        why = candidate.why + "".join(f"; {reason}" for reason in refused)
        return Recipe(candidate.name, candidate.params, why, schedule.steps, candidate.config, schedule.history)
    return None


def _with_pool(spec: Spec, target: Target, threads: int) -> Recipe | None:
    """A convolution with a fused pool. With vectors: the convolution's
    recipe into its own output (conv_out, a workspace buffer), then the pool
    over it, its channels across threads; the pool costs a pass over conv_out,
    a fraction of the convolution's time, where computing the convolution
    inside the pool's loops would leave its tile no room. Without (a
    Cortex-M): the convolution computed inside the pool's column loop
    (compute_at), for one window at a time, so that no intermediate takes
    RAM."""
    if target.vector_lanes == 1:
        return Recipe("convolution inside the pool", (("compute_at", "conv at pw"),),
                      "no vector registers: one pool window's convolution at a time keeps no intermediate in RAM",
                      (Step("compute_at", ("conv", "pw")),), config(recipe="inside-pool"))
    recipe = _first_that_builds(spec, target, _candidates(spec, target, threads))   # with the pool's steps
    if recipe is None:
        return None
    params = recipe.params + (("pool", "after the convolution, over conv_out"),)
    across = _pool_across(spec)
    if dict(recipe.config).get("threads", 1) > 1 and across:
        params += (("pool threads", across),)
    return replace(recipe, params=params)


def _candidates(spec: Spec, target: Target, threads: int) -> list[_Candidate]:
    """The recipes that apply to the layer, in the order they are tried."""
    lanes = target.vector_lanes
    if lanes == 1:
        scalar = _Candidate("scalar register tile", (), "no vector registers on " + target.name, config(recipe="scalar"))
        packed = ([_dot_candidate(spec, target)] if _dot_applies(spec, target) else []) + (
            [_lanes_candidate(spec)] if _lanes_apply(spec, target) else [])
        return packed + [scalar]
    per_group = spec.out_channels // spec.groups
    found = []
    if spec.is_conv and spec.groups > 1 and spec.input_layout == _computed_layout(spec) == "NHWC":
        params = (("vector", f"{lanes} channels"), ("tile", f"{_channels_last_tile(spec)} columns"),
                  ("weights", f"OIHW{lanes}o")) + ((("threads", "channel blocks"),) if threads > 1 else ())
        found.append(_Candidate("channels-last grouped", params, f"a grouped layer in NHWC ({spec.groups} groups)",
                                _channels_last_config(spec, lanes, threads)))
    if (spec.is_conv and spec.groups == spec.in_channels == spec.out_channels
            and spec.input_layout == _computed_layout(spec) == "NCHW" and spec.padding_mode == "zeros"):
        # one thread, GFLOP/s against the column vectors: 3x3 144 at 56x56 11-13 against 6-8; channels
        # that fill no whole number of vectors (the last block masked), with the bound call's guard
        # running both stages: 3x3 116 at 14x14 34 against 10.5, 5x5 120 at 28x28 54 against 17
        params = (("input", f"NCHW{lanes}c, copied by a stage"), ("vector", f"{lanes} channels"),
                  ("tile", f"{_channels_last_tile(spec)} columns"), ("weights", f"OIHW{lanes}o"))
        split = {"rows": "output rows", "blocks": "channel blocks"}.get(_depthwise_split(spec, lanes, threads))
        found.append(_Candidate("channel-blocked depthwise", params + ((("threads", split),) if split else ()),
                                "a depthwise layer in NCHW: its input copied into channel blocks",
                                _channels_last_config(spec, lanes, threads)))
    if spec.is_conv and spec.conv_output_size == (1, 1) and spec.groups == 1 and not spec.is_quantized:
        pixel_vectors, pixel_threads = _one_pixel_tile(spec, lanes, threads)   # `vectors` is rebound below
        params = (("vector", f"{pixel_vectors} x {lanes} output channels"), ("weights", f"OIHW{lanes}o"))
        found.append(_Candidate(
            "one output pixel", params + ((("threads", "channel blocks"),) if pixel_threads > 1 else ()),
            "the output is one pixel (a squeeze-excite's or a classifier's fully connected layer): "
            "channel vectors, each its own chain of FMAs",
            config(recipe="one-pixel", lanes=lanes, vectors=pixel_vectors, threads=pixel_threads)))
    columns = spec.conv_output_size[1]
    if not spec.is_conv and not spec.is_quantized and spec.input_layout == spec.output_layout == "NHWC":
        # a pool in NHWC: a vector of channels, a pixel's window at a time, 4 columns a tile (avgpool 2x2
        # 64 channels at 56x56, one thread: 1.3 -> 12.8 GFLOP/s against the column vectors)
        found.append(_Candidate(
            "channels-last pool", _direct_params(spec, target, f"{lanes} channels", 4, "ic-outer", threads,
                                                 -(-spec.out_channels // lanes)),
            "a pool in NHWC: a pixel's channels are contiguous",
            _direct_config(spec, target, "channels", lanes, 4, "ic-outer", threads)))
    if spec.is_conv and per_group % lanes == 0:
        vectors, across = _channel_tile(spec, target)
        found.append(_channel_candidate(spec, target, threads, "direct, channel vectors", lanes, vectors, across,
                                        f"each group's {per_group} output channels fill {lanes}-lane vectors"))
    gemm = []
    if _is_pointwise(spec):
        gemm.append(_Candidate("pointwise GEMM", _pointwise_params(spec, target, threads),
                               f"a 1x1 stride-1 NCHW layer whose {per_group} output channels do not fill "
                               f"{lanes}-lane vectors", _pointwise_config(spec, target, threads)))
    tile = 8 if target.vector_registers >= 32 else 4
    column_recipes = []
    for vector in (lanes, max(lanes // 2, 2)):
        rows = max(1, min(tile if spec.is_conv else 1, columns // vector))
        column_recipes.append(_Candidate(
            "direct, column vectors", _direct_params(spec, target, f"{vector} output columns", rows, "ic-outer",
                                                     threads, spec.out_channels),
            "output columns fill the vectors where channels do not",
            _direct_config(spec, target, "columns", vector, rows, "ic-outer", threads)))
    half = lanes // 2
    half_recipes, small_half = [], False
    # float32 only: not measured on int8 layers, whose lanes are not the float32 count
    if spec.is_conv and not spec.is_quantized and half >= 4 and per_group % half == 0:
        # a group's channels fill half-width vectors only (24, 40, 56 with 16 lanes): a tile of up to
        # four half vectors of channels. In NHWC it comes before the column vectors, which write y
        # across channels (pointwise 144->24 at 56x56, one thread: 3.6 -> 56 GFLOP/s, 0.03x -> 0.8x torch)
        count = next(v for v in (4, 3, 2, 1) if (per_group // half) % v == 0)
        width = _tile_across(columns, max(1, (target.vector_registers - 4) // count))
        # a masked block first where the half-width tile is small, or is one vector wide (an odd
        # number of half vectors) while the masked block's 8 padding lanes are under 1/16 of what
        # it computes (more than 128 channels): one vector of 16 at full FMA rate beats two of 8
        small_half = count * width < 12 or (count == 1 and per_group > 8 * lanes)
        half_recipes.append(_channel_candidate(
            spec, target, threads, "direct, half-width channel vectors", half, count, width,
            f"each group's {per_group} output channels fill {half}-lane vectors, not {lanes}-lane ones"))
    masked = []
    if spec.is_conv and spec.groups == 1 and per_group % lanes and not spec.is_quantized:   # float32: as half-width
        # channels that fill no whole number of vectors: the last block's vector is masked, the weights
        # padded with zeros in their blocked layout (NHWC 116->116 1x1 at 14x14: 5 -> 58 GFLOP/s)
        vectors, across = _masked_channel_tile(spec, target)
        masked.append(_channel_candidate(
            spec, target, threads, "direct, channel vectors, masked last block", lanes, vectors, across,
            f"{spec.out_channels} output channels fill {lanes}-lane vectors but for the last"))
    # Measured one thread, ReLU (GFLOP/s, this recipe against the next that applies): half-width vectors
    # before a masked block (NCHW 3x3 48->40 at 28x28: 110 against 64; NHWC 1x1 80->200 at 14x14: 101
    # both, before the masked block's blend was dropped), unless the half-width tile holds fewer than 12
    # accumulators (NCHW 1x1 232->232 at 7x7, one vector by 7 columns: 67 against 100) or is one vector
    # by more than 128 channels (1x1 at one thread, NCHW / NHWC: 512->1000 at 13x13 97 / 100 against
    # 113 / 114, 80->200 at 14x14 103 / 100 against 105 / 111, 232->232 at 14x14 104 / 102 against
    # 110 / 113; 80->184 101 / 100 against 98 / 109); a masked block before column vectors (NCHW 3x3 17->23: 27
    # against 13; NHWC 1x1 24->58 at 56x56: 92 against 5). The pointwise GEMM comes first where its tile
    # holds 8 accumulators or more (1x1 64->20 at 56x56: 106 against 24 masked), else after a masked
    # block (58->58 at 28x28, a tile of 2: 60 against 86)
    partial = masked + half_recipes if small_half else half_recipes + masked
    if gemm and _pointwise_accumulators(spec, target) < 8:
        return found + partial + gemm + column_recipes
    return found + gemm + partial + column_recipes


def _channel_candidate(spec: Spec, target: Target, threads: int, name: str, lanes: int, vectors: int,
                       across: int, why: str) -> _Candidate:
    """`_direct` over channel vectors of `lanes`: a tile of `across` columns by `vectors` vectors."""
    # with few input channels the kernel loops outside them run faster (measured on ResNet's conv1)
    order = "kernel-outer" if spec.in_channels // spec.groups < lanes else "ic-outer"
    blocks = -(-spec.out_channels // (lanes * vectors))
    params = _direct_params(spec, target, f"{vectors} x {lanes} output channels", across, order, threads, blocks,
                            lanes)
    return _Candidate(name, params, why, _direct_config(spec, target, "channels", lanes, across, order, threads, vectors))


def _pointwise_params(spec: Spec, target: Target, threads: int) -> tuple[tuple[str, str], ...]:
    try:
        rows, vectors = _pointwise_tile(spec, target)
    except ScheduleError:
        return ()   # the recipe is refused when built, with this reason
    params = (("tile", f"{rows} output channels x {vectors} vectors of {target.vector_lanes} pixels"),
              ("weights", f"OIHW{rows}o"))
    return params + ((("threads", "pixel groups"),) if threads > 1 else ())


def _direct_params(spec: Spec, target: Target, vector: str, tile: int, order: str, threads: int,
                   blocks: int, lanes: int = 0) -> tuple[tuple[str, str], ...]:
    """`_direct`'s choices, as `Recipe.params`; lanes: of a channel vector (the weights' blocking)."""
    has_rows = spec.conv_output_size[0] > 1
    split = _thread_split(spec, target, has_rows, threads, blocks)
    params = [("vector", vector), ("tile", f"{tile} columns"), ("reduction", order)]
    if lanes:
        params.append(("weights", f"OIHW{lanes}o"))
        if _columns_alias(spec):
            params.append(("input", "NCHW, copied by a stage (NHWC columns 4 KiB apart)"))
    if split:
        params.append(("threads", {"rows": "output rows", "blocks": "channel blocks",
                                   "fused": "rows of channel blocks"}[split]))
    return tuple(params)


# The multiply-adds the scalar tile writes out at most: unrolling the kernel's
# columns (then rows) under the tile folds the padding's column tests away, and
# 48 keeps a layer's code under 2 KB (person_detect_conv1_int8: 1.9 KB).
_UNROLLED_STATEMENTS = 48


def _scalar_tile(spec: Spec, target: Target) -> Schedule:
    """For a target without vector registers (Cortex-M): a register tile of
    `rows` output channels by `columns` output columns, half the target's
    registers as accumulators, the reduction outside the tile and the tile
    unrolled, so each input value loaded feeds `rows` multiply-adds and each
    weight `columns`. Rows divide a group's channels (4, 2, else 1).
    The kernel's column loop, and then its row loop, are unrolled under the
    tile while it writes at most _UNROLLED_STATEMENTS multiply-adds, so that
    the padding's tests fold into constants and the weights stay in
    registers. Under QEMU (cortex-m4, int8, benchmarks/mcu.py) the depthwise
    ds_cnn_dw_int8 (tile and kernel unrolled) executed 3.8 instructions per
    MAC against 7.9 with the tile alone and 18 in the naive nest. Pooling
    reuses nothing across a tile, so it is refused (maxpool 2x2 int8: 1.5x
    the naive nest's instructions)."""
    if not spec.is_conv:
        raise ScheduleError("split", f"{spec.op}: a register tile reuses no input across outputs of a window")
    channel = "oc"
    per_group = spec.out_channels // spec.groups
    rows = next((r for r in (4, 2) if per_group % r == 0), 1)
    accumulators = max(2, target.vector_registers // 2)
    columns = _tile_across(spec.conv_output_size[1], max(1, accumulators // rows))
    s = Schedule.for_spec(spec)
    names = set(loop_names(s.func))
    tile_loops = []
    if rows > 1:
        s = s.split(channel, rows, tail="perfect")
        tile_loops.append(f"{channel}.i")
    if columns > 1:
        s = s.split("ow", columns, tail=_tail(spec.conv_output_size[1], columns))
        tile_loops.append("ow.i")
    if not tile_loops:
        raise ScheduleError("split", "a tile of one channel by one column is the naive nest")
    blocks = f"{channel}.o" if rows > 1 else channel
    columns_loop = "ow.o" if columns > 1 else "ow"
    outer = [n for n in ("n", blocks, "oh", columns_loop) if n in loop_names(s.func)]
    s = s.reorder(*outer, *tile_loops).cache_write(columns_loop)
    reduction = [n for n in ("ic", "kh", "kw") if n in names]
    if reduction:
        s = s.reorder(*reduction, *tile_loops)
    return _unroll_taps(_unroll_tile(s, tile_loops), spec, names, rows * columns)


def _unroll_tile(s: Schedule, loops) -> Schedule:
    """A register tile's loops written out: the accumulators' start, the multiply-adds, the results."""
    for loop in loops:
        s = s.unroll(loop).unroll(f"{loop}.init").unroll(f"{loop}.out")
    return s


def _unroll_taps(s: Schedule, spec: Spec, names, statements: int) -> Schedule:
    """The kernel's column loop, then its row loop, written out around a tile
    of `statements` multiply-adds while they stay within _UNROLLED_STATEMENTS."""
    for loop, extent in (("kw", spec.kernel_size[1]), ("kh", spec.kernel_size[0])):
        statements *= extent
        if loop not in names or extent == 1 or statements > _UNROLLED_STATEMENTS:
            break
        s = s.unroll(loop)
    return s


def _dot_applies(spec: Spec, target: Target) -> bool:
    """An int8 convolution of one group whose input channels lie contiguous
    (NHWC) in fours, on a target with packed int8 dot products."""
    return (spec.is_conv and spec.is_quantized and spec.groups == 1 and spec.input_layout == "NHWC"
            and spec.in_channels % ir.DOT_WIDTH == 0 and (target.has("dsp") or _has_helium(target)))


def _has_helium(target: Target) -> bool:
    return target.has("mve") or target.has("mve.fp")


def _dot_candidate(spec: Spec, target: Target) -> "_Candidate":
    """The dot tile's size. Both kinds of dot product accumulate in general
    registers, 13 on a Cortex-M, so the tile is four output channels by one
    column, each input word feeding four dot products; wider tiles left gcc
    spilling. Helium takes eight channels a dot loop (sixteen int8 lanes
    where the zero point is folded), the DSP extension four (eight spilled).
    Under QEMU, ds_cnn_pw_int8 executed 1.99 instructions per MAC on an M4
    with this tile against 2.24-3.24 with 2x1, 2x2, 1x5 and 4x2, and 0.80 on
    an M55 against 0.87-0.95 (4x2, 2x1, sixteen int16 channels); folding its
    zero point made these 1.96 and 0.59."""
    helium = _has_helium(target)
    fold = not any(spec.padding) and spec.bias and spec.quantization.input_zero_point != 0
    width = next(w for w in ((16, 8, 4) if helium and fold else (8, 4) if helium else (4,))
                 if spec.in_channels % w == 0)
    rows = next(r for r in (4, 2, 1) if spec.out_channels % r == 0)
    params = (("tile", f"{rows} channels x 1 column"), ("dot", f"{width} input channels"),
              ("products", "Helium VMLADAV" if helium else "SMLAD pairs")) + (
              (("zero point", "folded into the bias"),) if fold else ())
    return _Candidate("packed dot tile", params, f"int8 with packed dot products on {target.name}",
                      config(recipe="dot", rows=rows, columns=1, width=width, fold=fold))


def _dot_tile(spec: Spec, rows: int, columns: int, width: int, fold: bool = False) -> Schedule:
    """A register tile of `rows` output channels by `columns` output columns
    around a dot loop over `width` contiguous input channels, innermost: each
    input word feeds `rows` dot products and each weight word `columns`.
    Weights of a kernel larger than 1x1 are laid out OHWI, input channels
    innermost as in the NHWC input (prepared once, or baked so at build time).
    fold: the input's zero point folded into the bias first (a layer without
    padding), so that the products take the input as stored."""
    s = Schedule.for_spec(spec)
    if fold:
        s = s.fold_zero_point()
    if spec.kernel_size != (1, 1):
        s = s.layout("w", "OHWI")
    s = s.split("ic", width, tail="perfect")
    tile_loops = []
    if rows > 1:
        s = s.split("oc", rows, tail="perfect")
        tile_loops.append("oc.i")
    if columns > 1:
        s = s.split("ow", columns, tail=_tail(spec.conv_output_size[1], columns))
        tile_loops.append("ow.i")
    names = loop_names(s.func)
    outer = [n for n in ("n", "oc.o" if rows > 1 else "oc", "oh", "ow.o" if columns > 1 else "ow") if n in names]
    s = s.reorder(*outer, *tile_loops).cache_write(outer[-1])
    reduction = [n for n in ("kh", "kw", "ic.o") if n in names]
    s = s.reorder(*reduction, *tile_loops, "ic.i")
    return _unroll_tile(s, tile_loops).dot("ic.i")


def _lanes_apply(spec: Spec, target: Target) -> bool:
    """An int8 layer in NHWC, depthwise or of one group that the dot tile
    does not take (input channels not in fours), its output channels in
    fours and its output columns in threes, fours or fives, on Helium."""
    depthwise = spec.groups == spec.in_channels == spec.out_channels
    return (spec.is_conv and spec.is_quantized and (depthwise or (spec.groups == 1 and not _dot_applies(spec, target)))
            and spec.input_layout == spec.output_layout == "NHWC" and spec.out_channels % ir.MAC_LANES == 0
            and spec.padding_mode == "zeros" and spec.pool is None and _has_helium(target)
            and _lanes_columns(spec) is not None)


def _lanes_columns(spec: Spec) -> int | None:
    """The fewest output columns from 3 to 5 that divide the output's width.
    Under QEMU on the M55, with the accumulators kept in memory (gcc holds
    few of a tile's vectors in registers), a guarded tail or a tile under
    3 columns executed more instructions than the scalar tile, and wider
    tiles than these took over 2 KB of code (person_detect_dw_s2_int8: 3
    columns 413,344 instructions, 4 columns 434,312 and 2.2 KB, the scalar
    tile 683,156; ds_cnn_dw_int8: 5 columns 301,562, the scalar tile 303,875)."""
    width = spec.conv_output_size[1]
    return next((c for c in (3, 4, 5) if width % c == 0), None)


def _lanes_candidate(spec: Spec) -> "_Candidate":
    """Four channels a Helium vector of int32 by a few output columns."""
    columns = _lanes_columns(spec)
    params = (("tile", f"4 channels x {columns} columns"), ("products", "Helium, four int32 lanes"),
              ("weights", "IHWO"))
    kind = "depthwise" if spec.groups > 1 else "with input channels not in fours"
    return _Candidate("channel lanes", params, f"an int8 layer in NHWC, {kind}, on Helium",
                      config(recipe="lanes", columns=columns))


def _lanes_tile(spec: Spec, columns: int) -> Schedule:
    """int8 on Helium: a tile of `columns` output columns by four output
    channels, the channels innermost as the four int32 lanes of a vector (C
    renders their multiply-accumulate as Helium's: for a depthwise layer
    input by weight lane by lane, else the weights by one input element),
    the kernel's taps unrolled around them as in the scalar tile; weights
    laid out IHWO, so that a tap's four channels lie side by side, as they
    do in NHWC."""
    s = Schedule.for_spec(spec).layout("w", "IHWO").split("oc", ir.MAC_LANES, tail="perfect")
    width = spec.conv_output_size[1]
    if columns > 1:
        s = s.split("ow", columns, tail=_tail(width, columns))
    names = loop_names(s.func)
    column, tile = ("ow.o", ["ow.i"]) if columns > 1 else ("ow", [])
    outer = [n for n in ("n", "oc.o", "oh", column) if n in names]
    s = s.reorder(*outer, *tile, "oc.i").cache_write(column)
    s = s.reorder(*[n for n in ("ic", "kh", "kw") if n in names], *tile, "oc.i")
    return _unroll_taps(_unroll_tile(s, tile), spec, names, columns).vectorize("oc.i")


def _is_pointwise(spec: Spec) -> bool:
    return (spec.is_conv and spec.kernel_size == (1, 1) and spec.stride == (1, 1) and not any(spec.padding)
            and spec.groups == 1 and spec.input_layout == spec.output_layout == "NCHW" and spec.pool is None)


def _pointwise(spec: Spec, target: Target, threads: int, tile: tuple[int, int] | None = None) -> Schedule:
    """1x1 convolution as a GEMM, y[oc, p] = sum_ic w[oc, ic] x[ic, p], over the
    output pixels p (rows and columns fused): a register tile of `rows` output
    channels by `vectors` pixel vectors, weights blocked by `rows` so each
    broadcast reads contiguous memory. Pixel blocks are grouped so that a
    group's input fits in a quarter of the L2 cache; the channel blocks run
    inside a group, so its input is read from memory once and each channel
    block's weights stay in L1 across the group's pixel blocks. Groups run
    in parallel. tile: (output channels, pixel vectors) of the register
    tile; by default `_pointwise_tile`'s."""
    lanes = target.vector_lanes
    pixels = spec.output_size[0] * spec.output_size[1]
    rows, vectors = tile or _pointwise_tile(spec, target)
    blocks = pixels // (vectors * lanes)
    block_bytes = vectors * lanes * spec.in_channels * spec.array_dtypes["x"].itemsize
    fits = max(1, _l2_bytes(target) // 4 // block_bytes)
    # at least one group per thread where there are blocks enough, and as many groups for each thread
    # where a size allows (144->24 at 56x56, two threads: 14 groups of 7 blocks run 1.03x-1.09x faster
    # than 7 of 14, where one thread has four; paired medians of four runs)
    most = max(1, min(fits, blocks // threads))
    sizes = [d for d in range(1, most + 1) if blocks % d == 0]
    group = max((d for d in sizes if blocks // d % threads == 0), default=max(sizes))
    s = (Schedule.for_spec(spec).fuse("oh", "ow").split("oh_ow", vectors * lanes, tail="perfect")
         .split("oh_ow.i", lanes, tail="perfect").split("oc", rows, tail="perfect")
         .split("oh_ow.o", group, tail="perfect"))
    outer = (["n"] if "n" in loop_names(s.func) else []) + ["oh_ow.o.o", "oc.o", "oh_ow.o.i"]
    s = (s.reorder(*outer, "oc.i", "oh_ow.i.o", "oh_ow.i.i").cache_write("oh_ow.o.i")
         .reorder("ic", "oc.i", "oh_ow.i.o", "oh_ow.i.i")
         .unroll("oc.i").unroll("oh_ow.i.o").vectorize("oh_ow.i.i")
         .reorder("oc.i.init", "oh_ow.i.o.init", "oh_ow.i.i.init").vectorize("oh_ow.i.i.init")
         # the tile goes back to y a pixel vector at a time, not element by element (144->24: 1.09x at
         # one thread, 1.14x at two)
         .vectorize("oh_ow.i.i.out")
         .layout("w", f"OIHW{rows}o"))
    return s.parallel("oh_ow.o.o") if threads > 1 else s


def _pointwise_accumulators(spec: Spec, target: Target) -> int:
    """The pointwise GEMM's register tile size, or 0 where no tile fits."""
    try:
        rows, vectors = _pointwise_tile(spec, target)
    except ScheduleError:
        return 0
    return rows * vectors


def _pointwise_tile(spec: Spec, target: Target) -> tuple[int, int]:
    """(output channels, pixel vectors) of the pointwise GEMM's register tile."""
    lanes = target.vector_lanes
    pixels = spec.output_size[0] * spec.output_size[1]
    budget = target.vector_registers - 8   # left for pixel vectors and a broadcast weight
    shapes = [(rows, vectors) for rows in range(2, 13) for vectors in (4, 3, 2, 1)
              if rows * vectors <= budget and spec.out_channels % rows == 0 and pixels % (vectors * lanes) == 0]
    if not shapes:
        raise ScheduleError("split", f"no register tile divides {spec.out_channels} channels and {pixels} pixels")
    return max(shapes, key=lambda shape: (shape[0] * shape[1], shape[0]))


def _channels_last(spec: Spec, lanes: int, threads: int, tile: int | None = None,
                   split: str | None = None) -> Schedule:
    """Grouped and depthwise layers in NHWC (depthwise in NCHW too, on a copy
    of the input in channel blocks, `_channel_blocked_input`, with the tile
    written back to NCHW a vector of columns at a time): output channels fill the vectors
    (a group's channels fill whole vectors, or each channel is its own group,
    so a vector's input channels are contiguous too) and a tile of output
    columns is unrolled. The channel blocks run outermost, each over the whole
    image: a block's three input rows stay in L1 between output rows, and with
    64-byte-aligned arrays each pixel's block is one cache line (measured on
    five depthwise shapes, 1.25-1.5x faster than the blocks innermost; with
    arrays 16 bytes off a line, as NumPy's, each line is read twice and it is
    up to 2x slower). Threads take whole channel blocks, or output rows
    (`_depthwise_split`). Padding is left to
    the in-range checks (with so little arithmetic per input element, a
    per-call padded copy of the input costs more than the checks), with the
    border tiles and rows peeled so that only they check, and a masked last
    channel block (depthwise channels that fill no whole number of vectors)
    peeled so that only it is masked. tile and split: the columns of the
    register tile and the share of work among threads; by default
    `_channels_last_tile`'s and `_depthwise_split`'s."""
    if (spec.out_channels // spec.groups) % lanes and spec.out_channels // spec.groups != 1:
        raise ScheduleError("split", f"{spec.out_channels // spec.groups} channels per group do not fill "
                                     f"{lanes}-lane vectors")
    columns = spec.output_size[1]
    tile = tile or _channels_last_tile(spec)
    s = Schedule.for_spec(spec)
    if spec.input_layout == "NCHW":
        s = _channel_blocked_input(s, spec, lanes, threads)
    # depthwise channels that fill no whole number of vectors: the last block masked
    s = (s.split("oc", lanes, tail=_tail(spec.out_channels, lanes))
         .split("ow", tile, tail="perfect" if columns % tile == 0 else "guard"))
    names = loop_names(s.func)
    # lowering leaves out loops of one iteration: batch 1, and a single output row
    outer = [loop for loop in ("n", "oc.o", "oh", "ow.o") if loop in names]
    reduction = [n for n in ("ic", "kh", "kw") if n in names]
    s = (s.reorder(*outer, "ow.i", "oc.i").cache_write("ow.o").reorder(*reduction, "ow.i", "oc.i")
         .unroll("ow.i").vectorize("oc.i").reorder("ow.i.init", "oc.i.init").vectorize("oc.i.init")
         .layout("w", f"OIHW{lanes}o"))
    if _computed_layout(spec) == "NCHW":
        # the tile goes back a vector of columns at a time, transposed in registers (mark-transposes)
        s = s.reorder("oc.i.out", "ow.i.out").vectorize("ow.i.out")
    else:
        # a vector of channels at a time (LLVM's SLP vectorizer did that, but not for a masked block:
        # NHWC 116 channels at 28x28, 3x3: 65 -> 75 GFLOP/s)
        s = s.vectorize("oc.i.out")
    split = _depthwise_split(spec, lanes, threads) if split is None else split
    if split not in ("", "rows", "blocks") or (split == "") != (threads <= 1) or (split == "rows" and "oh" not in names):
        raise ScheduleError("parallel", f"threads: {threads} threads cannot be shared as {split!r}")
    s = s.parallel({"rows": "oh", "blocks": "oc.o"}[split]) if split else s
    # Border tiles and rows in copies of their own, so the rest runs without padding checks.
    s = _peel_border(s, spec, "ow.o", tile, axis=1)
    s = _peel_border(s, spec, "oh", 1, axis=0) if "oh" in names else s
    if spec.out_channels % lanes and spec.out_channels > lanes:
        # the masked last block in a copy of its own, so the others run without masks
        # (116 channels at 28x28, 3x3, one thread: NHWC 17 -> 40 GFLOP/s; NCHW, stride 2: 6.7 -> 7.9)
        s = s.peel("oc.o", 0, 1)
    return s


def _depthwise_split(spec: Spec, lanes: int, threads: int) -> str:
    """How `_channels_last` shares its work among threads: "" (one thread),
    "blocks" (whole channel blocks, each over the whole image) or "rows"
    (output rows, each over every block). Rows, for a depthwise layer in
    NCHW whose input copy (split by rows too) is large against the work:
    strided, or fewer channel blocks than two a thread; a thread then
    reads the rows it copied, from its own L2. Not under 14 output rows,
    where a share is a few rows beside the peeled border ones. Two threads,
    GFLOP/s, blocks -> rows: 24 channels 3x3 stride 2 at 56x56 11 -> 14,
    58 18 -> 26, 240 at 28x28 22 -> 29, 16 at 112x112 46 -> 65; stride 1
    left to blocks: 120 at 28x28 93 against 85, 116 at 14x14 38 against 35;
    stride 2 to 7x7: 232 14.5 against 10.4."""
    if threads <= 1:
        return ""
    blocks = -(-spec.out_channels // lanes)
    copied = spec.input_layout == "NCHW" and spec.groups == spec.in_channels
    rows = spec.conv_output_size[0]
    if copied and rows >= 14 and (max(spec.stride) > 1 or blocks < 2 * threads):
        return "rows"
    return "blocks"


# weights from which a one-pixel layer's call runs across threads: read from L2 they take over a
# microsecond, more than waking a second thread costs (MobileNetV3's squeeze-excites, two threads,
# GFLOP/s serial -> parallel: 672->168 (441 KiB) 44 -> 61, 960->240 41 -> 76, 480->120 (225 KiB)
# 44 -> 48; 72->24 (7 KiB) 6.5 -> 2.9)
_ONE_PIXEL_PARALLEL_BYTES = 128 * 1024


def _one_pixel_tile(spec: Spec, lanes: int, threads: int) -> tuple[int, int]:
    """`_one_pixel`'s vectors per tile and threads: 4 vectors (3 where that
    shares the channel blocks more evenly among threads), on one thread
    unless the weights are large enough to be worth a second."""
    blocks = -(-spec.out_channels // lanes)
    if threads == 1 or prod(spec.weight_shape) * spec.array_dtypes["w"].itemsize < _ONE_PIXEL_PARALLEL_BYTES:
        return min(4, blocks), 1

    def vectors_per_thread(vectors: int) -> int:
        tiles = -(-blocks // vectors)
        return -(-tiles // threads) * vectors

    return min(min((4, 3), key=lambda v: (vectors_per_thread(v), -v)), blocks), threads


def _one_pixel(spec: Spec, lanes: int, vectors: int, threads: int = 1) -> Schedule:
    """A layer whose output is one pixel: a tile of `vectors` vectors of output
    channels (the last block masked where they do not fill it), the reduction
    outside it, tiles across threads where `threads` > 1. Lowering leaves out
    the loops of one iteration, so only the channel and reduction loops are
    there; with the naive nest, MobileNetV3's 480->120 squeeze-excite ran at
    50 us a call, with this 6.6 (ONNX Runtime 17.7, torch 25, one thread)."""
    block = lanes * vectors
    s = (Schedule.for_spec(spec).split("oc", block, tail=_tail(spec.out_channels, block))
         .split("oc.i", lanes, tail="perfect").cache_write("oc.o"))
    reduction = [n for n in ("ic", "kh", "kw") if n in loop_names(s.func)]
    s = (s.reorder(*reduction, "oc.i.o", "oc.i.i").unroll("oc.i.o").vectorize("oc.i.i")
         .reorder("oc.i.o.init", "oc.i.i.init").vectorize("oc.i.i.init").vectorize("oc.i.i.out")
         .layout("w", f"OIHW{lanes}o"))
    return s.parallel("oc.o") if threads > 1 else s


def _channel_blocked_input(s: Schedule, spec: Spec, lanes: int, threads: int) -> Schedule:
    """An NCHW input copied into channel blocks (NCHW16c) by a stage of the
    kernel, a block of 8 columns by a vector of channels at a time,
    transposed in registers, so that `_channels_last` reads a vector of
    channels contiguously; channels past the last whole block are copied
    one by one (tail `peel`, inside the rows' loop), and rows run across
    threads."""
    columns = 8
    width = spec.input_size[1]
    s = (s.layout("x", f"NCHW{lanes}c").reorder("x_packed.h", "x_packed.c").split("x_packed.c", lanes, tail="peel")
         .split("x_packed.w", columns, tail=_tail(width, columns))
         .reorder("x_packed.c.o", "x_packed.w.o", "x_packed.w.i", "x_packed.c.i")
         .vectorize("x_packed.c.i"))
    return s.parallel("x_packed.h") if threads > 1 else s


def _channels_last_tile(spec: Spec) -> int:
    """Output columns in `_channels_last`'s register tile: a divisor of the row where one fits."""
    return next((t for t in (14, 12, 8, 7, 6, 4) if spec.output_size[1] % t == 0), 8)


def winograd_schedule(spec: Spec, target: Target, threads: int = 1, tile: int = 4) -> Schedule:
    """Winograd's F(tile x tile, 3x3) for a 3x3 stride-1 layer (refused otherwise,
    with the reason). The input transform runs on input-channel vectors; the
    products are a GEMM per transform point with a register tile of output-
    channel vectors by tiles (as the direct channel tile), weights laid out T, I, O so a
    vector of output channels loads contiguously; the output transform runs on
    output-channel vectors.

    Blocks: when the transformed weights outweigh the transformed input and
    products of the whole layer (deep layers at small sizes), one block of all
    tile rows, so the weights are read once; else blocks of one tile row,
    which stay in cache between the stages. With threads, the blocks of rows
    run in parallel, or, where there are fewer of them than threads, blocks of
    output channels (each recomputing the cheap input transform)."""
    lanes = target.vector_lanes
    points = (tile + 2) ** 2
    rows, cols = spec.output_size
    tile_rows, tile_cols = -(-rows // tile), -(-cols // tile)
    weights = points * spec.out_channels * spec.in_channels
    transformed = points * tile_rows * tile_cols * (spec.in_channels + spec.out_channels)
    row_block = tile_rows if weights > transformed else 1
    channel_block = spec.out_channels
    if threads > 1 and tile_rows // row_block < threads and spec.out_channels % (threads * lanes) == 0:
        channel_block = spec.out_channels // threads
    s = Schedule.for_spec(spec).winograd(tile, rows=row_block, channels=channel_block)
    if channel_block % lanes:
        raise ScheduleError("split", f"{channel_block} output channels per block do not fill {lanes}-lane vectors")
    s = s.split("in_c", lanes, tail=_tail(spec.in_channels, lanes)).vectorize("in_c.i")
    # half the vector registers hold accumulators; the rest weight vectors, broadcasts and spills.
    # A tile that divides the tile columns first: a guarded last tile costs more than the work it
    # skips (3x3 256 in F(2x2), 7 tile columns, two threads: 2 x 7 tiles 1.2x faster than 4 x 4)
    budget = max(2, target.vector_registers // 2)
    vectors, across = max(((v, _tile_across(tile_cols, budget // v)) for v in (4, 2, 1)
                           if (channel_block // lanes) % v == 0),
                          key=lambda va: (tile_cols % va[1] == 0, va[0] * va[1]))
    s = (s.split("mm_oc", lanes * vectors, tail="perfect").split("mm_oc.i", lanes, tail="perfect")
         .split("mm_tw", across, tail=_tail(tile_cols, across))
         .reorder("mm_t", "mm_th", "mm_tw.o", "mm_oc.o", "mm_oc.i.o", "mm_tw.i", "mm_oc.i.i").cache_write("mm_oc.o")
         .reorder("mm_ic", "mm_oc.i.o", "mm_tw.i", "mm_oc.i.i").unroll("mm_oc.i.o").unroll("mm_tw.i")
         .vectorize("mm_oc.i.i")
         .reorder("mm_oc.i.o.init", "mm_tw.i.init", "mm_oc.i.i.init").vectorize("mm_oc.i.i.init")
         .layout("w_winograd", "TIO")
         .split("out_oc", lanes, tail="perfect").vectorize("out_oc.i"))
    if threads > 1:
        s = s.fuse("ob", "tb").parallel("ob_tb")
    return s
