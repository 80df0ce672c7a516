"""`convgen show SPEC --html FILE`: one page that joins a layer's schedule
steps, the loop nest after each (and after each pass) and the code the
backends emit, the way Halide's HTML view joins its stages. Plain HTML and
CSS (templates/html/schedule.html.j2), no script, so it opens anywhere."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from . import ir
from .driver import Plan, emit
from .errors import ConvgenError
from .codegen import CPU_BACKENDS
from .target import GPUTarget
from .codegen.render import render


@dataclass(frozen=True)
class Section:
    title: str
    changes: tuple[tuple[str, str], ...]   # (kind: "add", "remove", "context", "hunk"; line)
    nest: str                               # the loop nest after it, in full


def schedule_page(chosen: Plan) -> str:
    """The page for a plan: its schedule, each step and pass, and the emitted code."""
    sections, previous = [], None
    for index, (step, func) in enumerate(chosen.history):
        text = ir.format_func(func)
        title = "lowered" if step is None else f"step {index - 1}: {step.describe()}"
        sections.append(Section(title, _changes(previous, text) if previous is not None else (), text))
        previous = text
    passes = []
    for name, func in chosen.passes:
        text = ir.format_func(func)
        passes.append(Section(f"pass {name}", _changes(previous, text), text))
        previous = text
    return render("html/schedule.html.j2", spec=chosen.spec, schedule=chosen.describe_schedule(),
                  recipe=chosen.recipe.describe() if chosen.recipe else "", steps=sections, passes=passes,
                  code=_emitted(chosen))


def nest_diff(before: str, after: str) -> list[str]:
    """The lines of a unified diff between two loop nests, one line of context, without its file header."""
    return list(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=1))[2:]


def _changes(before: str, after: str) -> tuple[tuple[str, str], ...]:
    kinds = {"+": "add", "-": "remove", "@": "hunk"}
    return tuple((kinds.get(line[:1], "context"), line) for line in nest_diff(before, after))


def _emitted(chosen: Plan) -> list[tuple[str, str]]:
    """(file name, text) of each backend's main file, or (backend, why it cannot render this plan)."""
    found = []
    for backend in ("cuda",) if isinstance(chosen.target, GPUTarget) else CPU_BACKENDS:
        try:
            emitted = emit(chosen, backend)
        except ConvgenError as err:
            found.append((backend, f"not rendered: {err}"))
            continue
        found += [(name, text) for name, text in emitted.files.items() if not name.endswith(".h")]
    return found
