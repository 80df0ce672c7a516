"""Static memory planning: where each of a network's intermediate buffers
lives in one arena, decided at build time.

Each buffer has a size and a live range (the first and last step of the
program that touch it: a tensor from the layer that writes it to the last
layer that reads it; a layer's own scratch for that layer alone). Two
buffers may share bytes only when their live ranges do not meet. Buffers
that must share one place (an elementwise layer's output in place of an
input it is the last reader of) are given as groups, planned as one buffer
over the union of their ranges.

Two placements are tried and the smaller arena kept (ties: the first):
- greedy by size: the largest buffer first, each at the lowest offset where
  it overlaps no placed buffer live at the same time;
- greedy by breadth: the steps with the most bytes live first, each step's
  buffers largest first, placed the same way (TFLite's "greedy by breadth",
  Pisarchyk and Lee, 2020).
Beside the arena the plan reports the naive sum (every buffer its own bytes)
and the lower bound: the most bytes live at one step, which no placement of
these buffers can beat (in-place groups count once).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

ALIGNMENT = 64   # bytes: every buffer starts on a cache line


@dataclass(frozen=True)
class Live:
    """A buffer to place: its name, bytes, and first and last step (inclusive)."""

    name: str
    size: int
    first: int
    last: int

    def meets(self, other: "Live") -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class Placement:
    name: str
    size: int
    offset: int
    first: int
    last: int


@dataclass(frozen=True)
class MemoryPlan:
    placements: tuple[Placement, ...]     # every buffer, in the order given
    arena_bytes: int
    naive_bytes: int                      # each buffer its own bytes, rounded to ALIGNMENT
    lower_bound: int                      # the most bytes live at one step, before in-place sharing
    strategy: str                         # which placement gave the arena

    @property
    def offset(self) -> dict[str, int]:
        return {p.name: p.offset for p in self.placements}

    def table(self, step_names: list[str] | None = None) -> list[str]:
        """The plan as text: a row per buffer, then the totals."""
        def step(i: int) -> str:
            return step_names[i] if step_names else str(i)
        rows = [("buffer", "bytes", "offset", "live")]
        rows += [(p.name, f"{p.size:,}", f"{p.offset:,}", step(p.first) if p.first == p.last else
                  f"{step(p.first)} .. {step(p.last)}") for p in self.placements]
        widths = [max(len(row[k]) for row in rows) for k in range(4)]
        lines = ["  ".join(cell.ljust(width) if k in (0, 3) else cell.rjust(width)
                           for k, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
        return lines + [f"arena {self.arena_bytes:,} B ({self.strategy}); naive sum {self.naive_bytes:,} B; "
                        f"lower bound {self.lower_bound:,} B"]


def round_up(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


def plan_memory(buffers: list[Live], groups: list[list[str]] = ()) -> MemoryPlan:
    """Offsets for the buffers (see the module's doc). groups: names of buffers
    that must share one offset (each name in one group at most)."""
    buffers = [Live(b.name, round_up(b.size), b.first, b.last) for b in buffers]
    by_name = {b.name: b for b in buffers}
    leader = {name: group[0] for group in groups for name in group}
    merged: dict[str, Live] = {}
    for b in buffers:
        key = leader.get(b.name, b.name)
        old = merged.get(key)
        merged[key] = b if old is None else Live(key, max(old.size, b.size), min(old.first, b.first),
                                                 max(old.last, b.last))
    units = list(merged.values())
    tried = [(_place(sorted(units, key=lambda u: (-u.size, u.first))), "greedy by size"),
             (_place(_by_breadth(units)), "greedy by breadth")]
    offsets, strategy = min(tried, key=lambda t: _end(t[0], units))
    placements = tuple(Placement(b.name, by_name[b.name].size, offsets[leader.get(b.name, b.name)], b.first, b.last)
                       for b in buffers)
    return MemoryPlan(placements, _end(offsets, units), sum(b.size for b in buffers), peak_bytes(buffers), strategy)


def _place(order: list[Live]) -> dict[str, int]:
    """Offsets, each buffer in turn at the lowest offset free of the placed
    buffers whose live ranges meet its own."""
    placed: list[tuple[Live, int]] = []
    offsets = {}
    for unit in order:
        busy = sorted((offset, offset + other.size) for other, offset in placed if other.meets(unit))
        offset = 0
        for start, end in busy:
            if offset + unit.size <= start:
                break
            offset = max(offset, end)
        offsets[unit.name] = offset
        placed.append((unit, offset))
    return offsets


def _by_breadth(units: list[Live]) -> list[Live]:
    """The units ordered by the steps they are live in, the step with the most
    bytes live first, each step's units largest first."""
    steps = sorted({s for u in units for s in range(u.first, u.last + 1)},
                   key=lambda s: -sum(u.size for u in units if u.first <= s <= u.last))
    order: dict[str, Live] = {}
    for step in steps:
        for unit in sorted((u for u in units if u.first <= step <= u.last), key=lambda u: -u.size):
            order.setdefault(unit.name, unit)
    return list(order.values())


def _end(offsets: dict[str, int], units: list[Live]) -> int:
    return max((offsets[u.name] + u.size for u in units), default=0)


def peak_bytes(buffers: list[Live]) -> int:
    """The most bytes live at one step (each buffer rounded up to ALIGNMENT)."""
    buffers = [replace(b, size=round_up(b.size)) for b in buffers]
    steps = {s for b in buffers for s in (b.first, b.last)}
    return max((sum(b.size for b in buffers if b.first <= s <= b.last) for s in steps), default=0)
