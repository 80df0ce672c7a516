"""A program split for a backend: stage functions over one argument list.

A kernel (ir.Func) is an ordered list of stages over its parameters and
workspace buffers. `split` turns it into what a backend renders and a
caller runs: one function per stage (per top-level loop nest of a stage
made of several), each taking the same pointers (the arguments, then the
workspace buffers), run in order, in two steps:

- prepare: the leading stages that read only weights (parameters marked
  `weight`) and what earlier prepare stages wrote; they fill the *prepared*
  workspace buffers (packed or transformed weights), which stay valid while
  the weights do: `bind` runs this step once;
- run: every other stage, per call; the workspace buffers only they write
  are *scratch*.

The workspace is one area: the prepared buffers first, then the scratch
ones, each at an offset rounded up to a cache line (scratch buffers live
at different times may share bytes where a memory plan places them so).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .nodes import Buffer, Func, Load, Seq, Stage, Store
from .walk import find_all

ALIGNMENT = 64   # bytes: each workspace buffer starts on a cache line


@dataclass(frozen=True)
class Slot:
    buffer: Buffer
    offset: int      # bytes from the start of the workspace area


@dataclass(frozen=True)
class Program:
    name: str
    params: tuple[Buffer, ...]       # the caller's arrays, in call order
    prepared: tuple[Slot, ...]       # workspace the prepare step fills: kept while weights are bound
    scratch: tuple[Slot, ...]        # workspace the run step uses per call
    prepare: tuple[Func, ...]        # stage functions, in order
    run: tuple[Func, ...]
    doc: str = ""
    # facts a backend states beside the workspace size (a network's memory plan):
    # (name suffix, bytes, what it is), e.g. ("ARENA_BYTES", 65536, "...")
    sizes: tuple[tuple[str, int, str], ...] = ()

    @property
    def buffers(self) -> tuple[Buffer, ...]:
        """What every stage function takes, in order: arguments, prepared, scratch."""
        return self.params + tuple(s.buffer for s in self.prepared + self.scratch)

    @property
    def stages(self) -> tuple[Func, ...]:
        return self.prepare + self.run

    @property
    def outputs(self) -> set[str]:
        """Names of the parameters some stage writes."""
        return set().union(*(stage.written_buffers() for stage in self.stages))

    @property
    def prepared_bytes(self) -> int:
        return workspace_end(self.prepared)

    @property
    def workspace_bytes(self) -> int:
        """The whole workspace: the prepared buffers, then the scratch ones."""
        return workspace_end(self.prepared + self.scratch)


def workspace_end(slots) -> int:
    """Bytes from the start of the area to the end of its last buffer."""
    return max((s.offset + s.buffer.nbytes for s in slots), default=0)


def _round_up(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _reads(stage: Stage) -> set[str]:
    return {load.buffer.name for load in find_all(stage.body, Load)}


def stage_writes(stage: Stage) -> set[str]:
    return {store.buffer.name for store in find_all(stage.body, Store)}


def prepare_stages(func: Func) -> int:
    """How many of the leading stages form the prepare step: each reads only
    weights and what the stages before it wrote, and writes only workspace."""
    weights = {p.name for p in func.params if p.weight}
    workspace = {b.name for b in func.workspace}
    arguments = {p.name for p in func.params}
    known = set(weights)
    count = 0
    for stage in func.stages:
        reads = _reads(stage) & (arguments | workspace)
        if not reads <= known or not stage_writes(stage) <= workspace:
            break
        known |= stage_writes(stage)
        count += 1
    return count if count < len(func.stages) else 0   # something must run per call


def lay_out(buffers) -> tuple[Slot, ...]:
    """Workspace buffers placed one after another, each on a cache line."""
    slots, offset = [], 0
    for buffer in buffers:
        slots.append(Slot(buffer, offset))
        offset = _round_up(offset + buffer.nbytes)
    return tuple(slots)


def split(func: Func, place_scratch=None) -> Program:
    """The kernel as stage functions, its workspace laid out (see the module's
    doc). place_scratch: offsets for the scratch buffers, by name, from the
    start of the scratch part (which follows the prepared buffers), where a
    plan places them (buffers live at different times may share bytes: a
    network's arena); by default, one after another."""
    stages = func.stages
    first_run = prepare_stages(func)
    prepared_names = set().union(*(stage_writes(s) for s in stages[:first_run])) if first_run else set()
    slots = lay_out([b for b in func.workspace if b.name in prepared_names])
    scratch = [b for b in func.workspace if b.name not in prepared_names]
    if place_scratch is None:
        slots = lay_out([s.buffer for s in slots] + scratch)
    else:
        start = _round_up(workspace_end(slots))
        slots += tuple(Slot(b, start + place_scratch[b.name]) for b in scratch)
    prepared = tuple(s for s in slots if s.buffer.name in prepared_names)
    scratch = tuple(s for s in slots if s.buffer.name not in prepared_names)
    buffers = func.params + tuple(s.buffer for s in slots)

    def stage_funcs(group: tuple[Stage, ...]) -> tuple[Func, ...]:
        """A function per top-level nest of each stage: a parallel loop's region
        then covers its own nest, never a nest beside it."""
        funcs = []
        for stage in group:
            nests = stage.body.body if isinstance(stage.body, Seq) else (stage.body,)
            name = func.name if len(stages) == 1 else f"{func.name}_{stage.name}"
            for k, nest in enumerate(nests, 1):
                funcs.append(Func(name if len(nests) == 1 else f"{name}_{k}", buffers, nest, func.doc))
        return tuple(funcs)

    return Program(func.name, func.params, prepared, scratch, stage_funcs(stages[:first_run]),
                   stage_funcs(stages[first_run:]), func.doc)


def with_stages(func: Func, stages: list[Stage]) -> Func:
    """func with its body replaced by these stages (one stage: its body alone, as lowered)."""
    if len(stages) == 1 and stages[0].name == func.prefix + "compute":
        return replace(func, body=stages[0].body)
    return replace(func, body=Seq(tuple(stages)))
