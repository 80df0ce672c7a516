"""The tuner's search space: every point of the recipes' space (`space.schedule_for`)
that may apply to a layer, each point's neighbours, and what a cost model reads of it.

A point is a recipe and a value for each of its knobs (space.Config). The
space is the recipes' own knobs over the values that make sense for the
layer and target: vector width (full or half), channel vectors and columns
of the register tile within the vector registers, the reduction's order,
how threads share the work, the pointwise GEMM's tile, the depthwise tile,
the one-pixel tile, Winograd's tile. Points are listed without building
them (a primitive may still refuse one: the tuner records that and moves on),
so listing a layer's space costs next to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, log

from ..spec import Spec
from ..target import Target
from .space import Config, _computed_layout, _is_pointwise, config, default_recipe

ORDERS = ("ic-outer", "kernel-outer")


def points(spec: Spec, target: Target, threads: int) -> list[Config]:
    """Every point of the space for this layer, target and thread count, in a
    fixed order: the default recipe's first, then the rest."""
    default = start(spec, target, threads)
    if target.vector_lanes == 1:
        return [default]   # a scalar target's recipe has no knobs
    return [default] + [p for p in _listed(spec, target, threads) if p != default]


def _listed(spec: Spec, target: Target, threads: int) -> list[Config]:
    found: list[Config] = []
    for lanes in _lane_choices(spec, target):
        found += _direct_points(spec, target, threads, "channels", lanes) if _channel_vectors_apply(spec) else []
        found += _direct_points(spec, target, threads, "columns", lanes)
    if _is_pointwise(spec):
        pixels = spec.output_size[0] * spec.output_size[1]
        found += [config(recipe="pointwise", rows=rows, vectors=vectors, threads=threads)
                  for rows in range(2, 13) for vectors in (1, 2, 3, 4)
                  if rows * vectors <= target.vector_registers - 4 and spec.out_channels % rows == 0
                  and pixels % (vectors * target.vector_lanes) == 0]
    if _channels_last_applies(spec):
        columns = spec.output_size[1]
        found += [config(recipe="channels-last", lanes=target.vector_lanes, tile=tile, threads=threads, split=split)
                  for tile in (4, 6, 7, 8, 12, 14, 16) if tile <= max(columns, 4)
                  for split in _splits(spec, threads, ("rows", "blocks"))]
    if spec.is_conv and spec.conv_output_size == (1, 1) and spec.groups == 1 and not spec.is_quantized:
        found += [config(recipe="one-pixel", lanes=target.vector_lanes, vectors=vectors, threads=t)
                  for vectors in (1, 2, 3, 4) for t in sorted({1, threads})]
    if _winograd_applies(spec):
        found += [config(recipe="winograd", tile=tile, threads=threads) for tile in (2, 4)]
    return found


def start(spec: Spec, target: Target, threads: int) -> Config:
    """Where a search starts: the default recipe's point, or the naive loop
    nest's where no recipe fits (what convgen.build then gives)."""
    recipe = default_recipe(spec, target, threads)
    return recipe.config if recipe is not None else config(recipe="naive")


def neighbours(point: Config, space: list[Config]) -> list[Config]:
    """The points of `space` that differ from `point` in one knob, by one step
    of that knob's values in the space (any other value, for a knob whose
    values have no order): coordinate descent's moves."""
    here = dict(point)
    found = []
    for other in space:
        there = dict(other)
        if there.get("recipe") != here.get("recipe") or there.keys() != here.keys():
            continue
        changed = [k for k in here if here[k] != there[k]]
        if len(changed) == 1 and _adjacent(changed[0], here[changed[0]], there[changed[0]], point, space):
            found.append(other)
    return found


def _adjacent(knob: str, value, other, point: Config, space: list[Config]) -> bool:
    if not isinstance(value, int) or isinstance(value, bool) or knob == "threads":
        return True
    values = sorted({dict(p)[knob] for p in space if _same_but(p, point, knob)})
    return abs(values.index(value) - values.index(other)) == 1


def _same_but(p: Config, point: Config, knob: str) -> bool:
    a, b = dict(p), dict(point)
    return a.keys() == b.keys() and all(a[k] == b[k] for k in a if k != knob)


@dataclass(frozen=True)
class Features:
    """What the analytical cost model reads of a point (all relative, so one
    model fits every layer): the work its vectors compute against the useful
    work, the accumulators of its register tile, loads per multiply-add, the
    registers it asks for beyond the target's, and the share of the busiest
    thread."""

    recipe: str
    waste: float          # computed multiply-adds / useful ones (masked lanes, guarded tails, Winograd's saving)
    accumulators: int
    loads_per_fma: float
    spill: int            # vector registers the tile needs beyond the target's
    balance: float        # work of the busiest thread / the average thread's
    kernel_outer: bool

    def vector(self) -> list[float]:
        """The features as numbers, for the model that learns from measurements (search.py)."""
        recipes = ("direct", "pointwise", "channels-last", "one-pixel", "winograd", "naive")
        return ([1.0] + [float(self.recipe == r) for r in recipes[1:]]
                + [log(self.waste), log(max(self.accumulators, 1)), min(self.accumulators, 12) / 12,
                   self.loads_per_fma, float(self.spill > 0), log(self.balance), float(self.kernel_outer)])


def features(spec: Spec, target: Target, point: Config) -> Features:
    knobs = dict(point)
    recipe, threads = knobs["recipe"], knobs.get("threads", 1)
    registers, columns = target.vector_registers, spec.conv_output_size[1]
    per_group = spec.out_channels // spec.groups
    if recipe == "direct" and knobs["axis"] == "channels":
        block = knobs["lanes"] * knobs["vectors"]
        waste = _rounded(per_group, block) * _rounded(columns, knobs["tile"]) * target.vector_lanes / knobs["lanes"]
        accumulators = knobs["vectors"] * knobs["tile"]
        loads = (knobs["vectors"] + knobs["tile"]) / accumulators
        need = accumulators + knobs["vectors"] + 1
        units = ceil(spec.out_channels / block) * (spec.conv_output_size[0] if knobs["split"] != "blocks" else 1)
    elif recipe == "direct":
        block = knobs["lanes"] * knobs["tile"]
        waste = _rounded(columns, block) * target.vector_lanes / knobs["lanes"]
        accumulators = knobs["tile"]
        loads = (knobs["tile"] + 1) / accumulators
        need = accumulators + 2
        units = spec.out_channels * (spec.conv_output_size[0] if knobs["split"] != "blocks" else 1)
    elif recipe == "pointwise":
        pixels = spec.output_size[0] * spec.output_size[1]
        block = knobs["vectors"] * target.vector_lanes
        waste = _rounded(pixels, block)
        accumulators = knobs["rows"] * knobs["vectors"]
        loads = (knobs["rows"] + knobs["vectors"]) / accumulators
        need = accumulators + knobs["vectors"] + 1
        units = ceil(pixels / block)
    elif recipe == "channels-last":
        waste = _rounded(per_group if per_group > 1 else spec.out_channels, knobs["lanes"]) * _rounded(
            columns, knobs["tile"])
        accumulators = knobs["tile"]
        loads = (knobs["tile"] + 1) / accumulators     # each tap: an input vector per column, a weight vector
        need = accumulators + 2
        units = ceil(spec.out_channels / knobs["lanes"]) * (spec.conv_output_size[0] if knobs["split"] == "rows" else 1)
    elif recipe == "one-pixel":
        waste = _rounded(spec.out_channels, knobs["lanes"] * knobs["vectors"])
        accumulators = knobs["vectors"]
        loads = 2.0
        need = accumulators + 2
        units = ceil(spec.out_channels / (knobs["lanes"] * knobs["vectors"]))
    elif recipe != "winograd":   # naive, scalar, inside-pool: one scalar chain, no knobs
        waste, accumulators, loads, need, units = float(target.vector_lanes), 1, 2.0, 2, 1
    else:   # winograd: F(m x m, 3x3) computes (m + 2)^2 products per m^2 outputs, not 9 m^2
        tile = knobs["tile"]
        waste = (tile + 2) ** 2 / (9 * tile * tile) * _rounded(columns, tile) * 1.5   # plus its transforms
        accumulators, loads, need = registers // 2, 0.5, registers // 2 + 4
        units = ceil(spec.conv_output_size[0] / tile)
    balance = ceil(units / threads) * threads / units if threads > 1 else 1.0
    return Features(recipe, waste, accumulators, loads, max(0, need - registers), balance,
                    knobs.get("order") == "kernel-outer")


def predicted_seconds(spec: Spec, target: Target, point: Config) -> float:
    """The analytical model's estimate, from the target's description alone:
    the multiply-adds the point computes, at a rate that falls where its
    register tile holds too few accumulators to hide the FMA latency (about
    eight in flight on two FMA ports), where it loads more than one operand
    per FMA, and where its tile spills; spread over the threads as evenly
    as its work divides. It ranks points; it does not promise times."""
    f = features(spec, target, point)
    rate = target.vector_lanes * 2 * 3e9 * max(1, dict(point).get("threads", 1))   # FMA/s at 3 GHz, two ports
    efficiency = min(1.0, f.accumulators / 8) * min(1.0, 1 / max(f.loads_per_fma, 1e-9)) / (1 + 0.5 * f.spill)
    if f.recipe == "channels-last":
        efficiency *= 0.5   # little reuse: bound by loads
    return spec.executed_macs * f.waste * f.balance / (rate * max(efficiency, 1e-3))


def _rounded(extent: int, block: int) -> float:
    """How much more than `extent` whole blocks of `block` cover."""
    return ceil(extent / block) * block / extent


def _lane_choices(spec: Spec, target: Target) -> list[int]:
    lanes = target.vector_lanes
    half = lanes // 2
    # half-width vectors only for float32: int8 layers were not measured with them
    return [lanes, half] if half >= 4 and not spec.is_quantized else [lanes]


def _direct_points(spec: Spec, target: Target, threads: int, axis: str, lanes: int) -> list[Config]:
    registers = target.vector_registers
    columns = spec.conv_output_size[1]
    per_group = spec.out_channels // spec.groups
    # the kernel's taps outside the input channels, or inside: the same loop nest where there is one tap
    orders = ORDERS if spec.is_conv and spec.kernel_size != (1, 1) else ("ic-outer",)
    found = []
    if axis == "channels":
        if per_group % lanes and (spec.groups > 1 or spec.is_quantized):
            return []   # a masked last block: float32 layers of one group only
        for vectors in (1, 2, 3, 4):
            if vectors > 1 and spec.groups > 1 and per_group % (lanes * vectors):
                continue   # a block of vectors would straddle two groups
            if vectors > 1 and ceil(spec.out_channels / lanes) < vectors:
                continue
            for tile in _tiles(columns, (registers - 2) // vectors - 1):
                for order in orders:
                    found += [config(recipe="direct", axis=axis, lanes=lanes, vectors=vectors, tile=tile,
                                     order=order, threads=threads, split=split)
                              for split in _splits(spec, threads, ("rows", "blocks", "fused"))]
        return found
    for tile in range(1, 9):
        if tile > 1 and tile * lanes > columns:
            break
        for order in orders:
            found += [config(recipe="direct", axis=axis, lanes=lanes, vectors=1, tile=tile, order=order,
                             threads=threads, split=split)
                      for split in _splits(spec, threads, ("rows", "blocks", "fused"))]
    return found


def _tiles(columns: int, limit: int) -> list[int]:
    """Register-tile widths to try: those the registers allow, no wider than
    the row: every width up to 16, and above that the row's divisors."""
    limit = min(limit, columns)
    return [t for t in range(1, limit + 1) if t <= 16 or columns % t == 0]


def _splits(spec: Spec, threads: int, ways: tuple[str, ...]) -> list[str]:
    if threads <= 1:
        return [""]
    has_rows = spec.conv_output_size[0] > 1
    return [w for w in ways if has_rows or w == "blocks"]


def _channel_vectors_apply(spec: Spec) -> bool:
    """Output channels in the vectors: a convolution, or a float32 pool in NHWC."""
    return spec.is_conv or (not spec.is_quantized and spec.input_layout == spec.output_layout == "NHWC")


def _channels_last_applies(spec: Spec) -> bool:
    """Grouped layers in NHWC, depthwise ones in NCHW too (as the default recipes)."""
    if not spec.is_conv or spec.groups == 1:
        return False
    if spec.input_layout == _computed_layout(spec) == "NHWC":
        return True
    return (spec.groups == spec.in_channels == spec.out_channels and spec.input_layout == _computed_layout(spec)
            == "NCHW" and spec.padding_mode == "zeros")


def _winograd_applies(spec: Spec) -> bool:
    """Winograd's F(m x m, 3x3): a float32 3x3 stride-1 convolution of one group."""
    return (spec.is_conv and spec.kernel_size == (3, 3) and spec.stride == (1, 1) and spec.dilation == (1, 1)
            and spec.groups == 1 and not spec.is_quantized and spec.pool is None)
