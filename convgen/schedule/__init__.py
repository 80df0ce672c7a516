"""Schedules: sequences of checked IR rewrites.

A schedule is a list of Steps (primitive name and arguments). It can be
written in YAML (a `schedule:` list in a spec, or a --schedule file) or in
Python by chaining on a Schedule; both produce the same Steps and so the
same rewrites. Each primitive checks its own requirements and refuses with a
ScheduleError naming the step, the reason and, where one exists, a legal
alternative; nothing is silently ignored.

    s = (Schedule.for_spec(spec)
         .split("ow", 8).cache_write("ow.o")
         .reorder("ow.i", "ic", "kh", "kw") ...)
    kernel = convgen.build(spec, schedule=s)
"""

from __future__ import annotations

import difflib
import inspect
from typing import Iterable

from .. import ir
from ..errors import ScheduleError
from .bind import bind, dot, parallel, vectorize
from .fusion import compute_at
from .loops import TAILS, fuse, peel, reorder, split, tile, unroll
from .memory import cache_read, cache_write, layout, pad_input
from .nest import loop_names
from .offsets import fold_zero_point
from .steps import Step, load_steps, parse_steps
from .winograd import winograd

PRIMITIVES = {
    "split": split, "tile": tile, "reorder": reorder, "fuse": fuse, "unroll": unroll, "peel": peel,
    "vectorize": vectorize, "dot": dot, "parallel": parallel, "bind": bind,
    "cache_write": cache_write, "cache_read": cache_read, "pad_input": pad_input, "layout": layout,
    "winograd": winograd, "compute_at": compute_at, "fold_zero_point": fold_zero_point,
}

__all__ = ["Schedule", "Step", "PRIMITIVES", "TAILS", "apply_step", "apply_schedule", "trace", "as_steps",
           "load_steps", "parse_steps", "loop_names", *PRIMITIVES]


def apply_step(func: ir.Func, step: Step) -> ir.Func:
    """One rewrite; a refusal names the step and carries the nest it met."""
    try:
        primitive = PRIMITIVES.get(step.primitive)
        if primitive is None:
            close = difflib.get_close_matches(step.primitive, list(PRIMITIVES), n=1)
            raise ScheduleError(step.primitive, "unknown primitive",
                                (f"did you mean '{close[0]}'? " if close else "") + f"primitives are {', '.join(PRIMITIVES)}")
        try:
            bound = inspect.signature(primitive).bind(func, *step.args, **dict(step.kwargs))
        except TypeError as err:
            raise ScheduleError(step.primitive, f"arguments: {err}",
                                f"expected {step.primitive}{_signature(primitive)}") from None
        result = primitive(*_with_prefix(func, bound).args, **bound.kwargs)
    except ScheduleError as err:
        raise err.located(step.where, ir.format_func(func)) from None
    # a primitive that leaves a malformed kernel is a bug in convgen, not in the schedule
    return ir.verify(result, f"after {step.where + ': ' if step.where else ''}{step.describe()}")


# a primitive's arguments that name loops, and the one that names a buffer
_LOOP_ARGUMENTS = ("loop", "loops", "a", "b", "at")
_BUFFER_ARGUMENTS = ("buffer",)
_STAGE_ARGUMENTS = ("stage",)


def _with_prefix(func: ir.Func, bound: inspect.BoundArguments) -> inspect.BoundArguments:
    """The step's loop and buffer names resolved in a kernel lowered with a name
    prefix: a name the kernel lacks is taken as prefix + name where that
    exists, so that one schedule serves a layer whatever its prefix."""
    if not func.prefix:
        return bound
    loops = set(loop_names(func))
    buffers = {b.name for b in func.workspace} | {a.buffer.name for a in ir.find_all(func.body, ir.Allocate)}
    stages = {s.name for s in func.stages}

    def resolve(name, known):
        if isinstance(name, str) and name not in known and func.prefix + name in known:
            return func.prefix + name
        return name

    for key, value in list(bound.arguments.items()):
        known = loops if key in _LOOP_ARGUMENTS else buffers if key in _BUFFER_ARGUMENTS \
            else stages if key in _STAGE_ARGUMENTS else None
        if known is not None:
            bound.arguments[key] = tuple(resolve(v, known) for v in value) if isinstance(value, tuple) \
                else resolve(value, known)
    return bound


def _signature(primitive) -> str:
    parameters = list(inspect.signature(primitive).parameters.values())[1:]
    return "(" + ", ".join(str(p.replace(annotation=inspect.Parameter.empty)) for p in parameters) + ")"


def apply_schedule(func: ir.Func, steps: Iterable[Step]) -> ir.Func:
    for step in steps:
        func = apply_step(func, step)
    return func


def trace(func: ir.Func, steps: Iterable[Step]) -> list[tuple[Step | None, ir.Func]]:
    """The kernel after lowering (step None) and after every step."""
    history: list[tuple[Step | None, ir.Func]] = [(None, func)]
    for step in steps:
        history.append((step, apply_step(history[-1][1], step)))
    return history


def as_steps(schedule) -> tuple[Step, ...]:
    """Steps from a Schedule, a sequence of Steps, or YAML data."""
    if schedule is None:
        return ()
    if isinstance(schedule, Schedule):
        return schedule.steps
    if isinstance(schedule, (list, tuple)) and all(isinstance(s, Step) for s in schedule):
        return tuple(schedule)
    return parse_steps(list(schedule), "schedule")


class Schedule:
    """An immutable chain of steps. Bound to a spec (Schedule.for_spec), each
    step is applied at once, so a refusal is raised where it is written, and
    `.func` shows the loop nest so far."""

    def __init__(self, steps: tuple[Step, ...] = (), func: ir.Func | None = None, history: tuple = ()):
        self.steps = tuple(steps)
        self.func = func
        self.history = history   # bound: `trace`'s list, the nest after lowering and after each step

    @classmethod
    def for_spec(cls, spec) -> "Schedule":
        from ..lower import lower
        lowered = lower(spec)
        return cls((), lowered, ((None, lowered),))

    def then(self, primitive: str, *args, **kwargs) -> "Schedule":
        """Append any primitive by name (the methods below are shorthands)."""
        step = Step(primitive, args, tuple(kwargs.items()), where=f"step {len(self.steps)}")
        if self.func is None:
            return Schedule(self.steps + (step,))
        func = apply_step(self.func, step)
        return Schedule(self.steps + (step,), func, self.history + ((step, func),))

    def split(self, loop: str, factor: int, tail: str = "guard") -> "Schedule":
        return self.then("split", loop, factor, tail=tail)

    def tile(self, a: str, b: str, fa: int, fb: int, tail: str = "guard") -> "Schedule":
        return self.then("tile", a, b, fa, fb, tail=tail)

    def reorder(self, *loops: str) -> "Schedule":
        return self.then("reorder", *loops)

    def fuse(self, a: str, b: str, name: str = "") -> "Schedule":
        return self.then("fuse", a, b, **({"name": name} if name else {}))

    def unroll(self, loop: str) -> "Schedule":
        return self.then("unroll", loop)

    def peel(self, loop: str, front: int, back: int) -> "Schedule":
        return self.then("peel", loop, front, back)

    def vectorize(self, loop: str) -> "Schedule":
        return self.then("vectorize", loop)

    def dot(self, loop: str) -> "Schedule":
        return self.then("dot", loop)

    def parallel(self, loop: str) -> "Schedule":
        return self.then("parallel", loop)

    def bind(self, loop: str, index: str) -> "Schedule":
        return self.then("bind", loop, index)

    def cache_write(self, at: str) -> "Schedule":
        return self.then("cache_write", at)

    def cache_read(self, buffer: str, at: str, scope: str = "local") -> "Schedule":
        return self.then("cache_read", buffer, at, scope=scope)

    def pad_input(self, buffer: str = "x") -> "Schedule":
        return self.then("pad_input", buffer)

    def fold_zero_point(self, buffer: str = "x") -> "Schedule":
        return self.then("fold_zero_point", buffer)

    def layout(self, buffer: str, layout: str) -> "Schedule":
        return self.then("layout", buffer, layout)

    def compute_at(self, stage: str, at: str) -> "Schedule":
        return self.then("compute_at", stage, at)

    def winograd(self, tile: int = 4, rows: int = 1, channels: int = 0) -> "Schedule":
        return self.then("winograd", tile, rows=rows, channels=channels)

    def to_data(self) -> list:
        """The steps as YAML data, e.g. for a --schedule file."""
        return [step.to_data() for step in self.steps]

    def __repr__(self) -> str:
        return "Schedule()" + "".join(f".{s.describe()}" for s in self.steps)
