"""A space of schedules for a layer, for `convgen explore` to search.

Candidates follow the direct-convolution recipe of TVM's conv2d_NCHWc and
oneDNN's JIT kernels: a register tile of R output columns by one vector of
output channels (or of output columns, where channels do not vectorize
well), the reduction outside the tile, the tile unrolled and vectorized,
weights blocked so a vector loads contiguously, the input padded once, and
an outer loop across threads. Widths come from the target, never literals.
"""

from __future__ import annotations

from itertools import product

from .. import ir
from ..errors import ScheduleError
from ..spec import Spec
from ..target import Target
from . import Schedule


def candidates(spec: Spec, target: Target) -> list[tuple[str, Schedule | ScheduleError]]:
    """(label, schedule) pairs; a candidate a primitive refused comes back as its error."""
    lanes = target.vector_lanes
    found: list[tuple[str, Schedule | ScheduleError]] = [("naive", Schedule.for_spec(spec))]
    axes = ["channels", "columns"] if spec.is_conv else ["columns"]
    tiles = [4, 6, 8] if spec.is_conv else [1]
    for axis, vector, tile, order, threads in product(axes, (lanes, lanes // 2), tiles, ("ic-outer", "kernel-outer"),
                                                      (True, False)):
        if not spec.is_conv and order == "kernel-outer":
            continue
        label = (f"vector {axis} x{vector}, tile {tile}, {order}" + (", parallel" if threads else "")
                 if spec.is_conv else f"vector {axis} x{vector}" + (", parallel" if threads else ""))
        try:
            found.append((label, _direct(spec, axis, vector, tile, order, threads)))
        except ScheduleError as err:
            found.append((label, err))
    return found


def _direct(spec: Spec, axis: str, lanes: int, tile: int, order: str, threads: bool) -> Schedule:
    s = Schedule.for_spec(spec)
    names = {l.var.name for l in ir.find_all(s.func.body, ir.Loop)}
    channel = "oc" if spec.is_conv else "c"
    if axis == "channels":
        s = s.split(channel, lanes, tail=_tail(spec.out_channels, lanes)).split("ow", tile)
        outer, vector_loop, tile_loop = [f"{channel}.o", "oh", "ow.o"], f"{channel}.i", "ow.i"
    else:
        s = s.split("ow", lanes * tile).split("ow.i", lanes, tail=_tail(lanes * tile, lanes))
        outer, vector_loop, tile_loop = [channel, "oh", "ow.o"], "ow.i.i", "ow.i.o"
    if "n" in names:
        outer = ["n"] + outer
    s = s.reorder(*outer, tile_loop, vector_loop).cache_write("ow.o")
    reduction = [n for n in ("ic", "kh", "kw") if n in names]
    if order == "kernel-outer" and "ic" in reduction:
        reduction = ["kh", "kw", "ic"]
    s = s.reorder(*reduction, tile_loop, vector_loop)
    if tile > 1:
        s = s.unroll(tile_loop)
    s = s.vectorize(vector_loop).reorder(tile_loop + ".init", vector_loop + ".init").vectorize(vector_loop + ".init")
    if axis == "channels" and spec.is_conv:
        s = s.layout("w", f"OIHW{lanes}o")
    if any(spec.padding):
        s = s.pad_input()
    if threads:
        s = s.fuse(outer[-3], outer[-2]).parallel(f"{outer[-3]}_{outer[-2]}")
    return s


def _tail(extent: int, factor: int) -> str:
    return "perfect" if extent % factor == 0 else "guard"


def default_schedule(spec: Spec, target: Target, threads: int = 1) -> tuple:
    """The steps convgen uses when a spec brings no schedule: the first of the
    preferred recipes that applies to the layer, else none (the naive nest).

    Output channels fill the vectors when they are many and (for grouped or
    depthwise layers) contiguous in NHWC; otherwise output columns do. The
    register tile leaves room for a weight vector and a broadcast input among
    the target's vector registers.
    """
    lanes = target.vector_lanes
    tile = 8 if target.vector_registers >= 32 else 4
    channels = spec.is_conv and spec.out_channels >= lanes and (spec.groups == 1 or spec.input_layout == "NHWC")
    recipes = [("channels", lanes, tile)] if channels else []
    recipes += [("columns", lanes, tile if spec.is_conv else 1), ("columns", max(lanes // 2, 2), 1)]
    for axis, vector, rows in recipes:
        try:
            return _direct(spec, axis, vector, rows, "ic-outer", threads > 1).steps
        except ScheduleError:
            continue
    return ()
