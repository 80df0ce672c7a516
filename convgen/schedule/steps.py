"""Schedule steps as data: what a YAML `schedule:` list, a --schedule file and
the Python chain all turn into, so that the three produce the same rewrites.

YAML forms of one step:
    - vectorize: ow.i                    # one argument
    - split: [ow, 8]                     # arguments in order
    - split: {loop: ow, factor: 8, tail: peel}
    - split: [ow, 8, {tail: peel}]       # in order, then by name
    - pad_input                          # no arguments
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError


@dataclass(frozen=True)
class Step:
    primitive: str
    args: tuple = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    where: str = ""          # e.g. "specs/x.yaml: schedule[2]", for messages

    def describe(self) -> str:
        """The step as it would be written in Python: split('ow', 8, tail='peel')."""
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        return f"{self.primitive}({', '.join(parts)})"

    def to_data(self):
        """The step as YAML data."""
        if not self.args and not self.kwargs:
            return self.primitive
        if not self.args:
            return {self.primitive: dict(self.kwargs)}
        args = [list(a) if isinstance(a, tuple) else a for a in self.args]
        return {self.primitive: args + ([dict(self.kwargs)] if self.kwargs else [])}


def _freeze(value):
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        raise TypeError("nested mapping")
    return value


def parse_steps(data: Any, where: str) -> tuple[Step, ...]:
    """Turn a YAML schedule list into Steps; SpecError names the item that is malformed.
    Whether a primitive exists and takes these arguments is checked when it is applied."""
    if not isinstance(data, list):
        raise SpecError([f"{where}: expected a list of steps, e.g. [{{split: [ow, 8]}}, {{vectorize: ow.i}}]; "
                         f"got {data!r}"])
    steps, problems = [], []
    for i, item in enumerate(data):
        label = f"{where}[{i}]"
        try:
            steps.append(_parse_step(item, label))
        except (ValueError, TypeError) as err:
            problems.append(f"{label}: {err}")
    if problems:
        raise SpecError(problems)
    return tuple(steps)


def _parse_step(item: Any, label: str) -> Step:
    if isinstance(item, str):
        return Step(item, where=label)
    if not (isinstance(item, dict) and len(item) == 1):
        raise ValueError(f"expected a primitive name or a one-key mapping {{primitive: arguments}}; got {item!r}")
    (primitive, args), = item.items()
    if not isinstance(primitive, str):
        raise ValueError(f"expected a primitive name; got {primitive!r}")
    try:
        if isinstance(args, dict):
            return Step(primitive, kwargs=tuple((str(k), _freeze(v)) for k, v in args.items()), where=label)
        if isinstance(args, list):
            kwargs = args.pop() if args and isinstance(args[-1], dict) else {}
            return Step(primitive, args=tuple(_freeze(a) for a in args),
                        kwargs=tuple((str(k), _freeze(v)) for k, v in kwargs.items()), where=label)
        if args is None:
            return Step(primitive, where=label)
        return Step(primitive, args=(args,), where=label)
    except TypeError:
        raise ValueError(f"{primitive}: arguments must be numbers, names or lists of them; got {args!r}") from None


# A schedule may be a word instead of steps: the loop nest as lowered, or the target's default.
NAIVE, DEFAULT = "naive", "default"
SCHEDULE_WORDS = (NAIVE, DEFAULT)


def parse_schedule(data: Any, where: str) -> tuple[Step, ...] | str:
    """A schedule as written: 'naive', 'default', or a list of steps."""
    if isinstance(data, str):
        if data in SCHEDULE_WORDS:
            return data
        raise SpecError([f"{where}: expected {' or '.join(map(repr, SCHEDULE_WORDS))} or a list of steps; "
                         f"got {data!r}"])
    return parse_steps(data, where)


def load_steps(path: str | Path) -> tuple[Step, ...] | str:
    """A --schedule file: a YAML list of steps, or a mapping with a `schedule:`
    entry (a spec file with its schedule, say); the entry may also be a word of
    SCHEDULE_WORDS."""
    label = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise SpecError([f"{label}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError([f"{label}: cannot read it: {err}"]) from None
    except yaml.YAMLError as err:
        raise SpecError([f"{label}: not valid YAML: {getattr(err, 'problem', None) or err}"]) from None
    if isinstance(data, dict):
        if "schedule" not in data:
            raise SpecError([f"{label}: expected a list of steps or a mapping with a `schedule:` list; "
                             f"found the keys {', '.join(map(str, data))}"])
        data = data["schedule"]
    return parse_schedule(data, f"{label}: schedule")
