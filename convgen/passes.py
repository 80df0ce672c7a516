"""Passes: the rewrites that run between scheduling and codegen.

Every pass is named and listed in PASSES, in the order the driver runs them
on each scheduled kernel; backends render what comes out and decide
nothing. `convgen show -v` prints the kernel after each pass.

To add one: write a function ir.Func -> ir.Func that keeps the kernel's
meaning (the property tests check every backend against the reference
after all passes), and add it to PASSES with a line saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import ir


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[ir.Func], ir.Func]
    why: str


def hoist_conditions(func: ir.Func) -> ir.Func:
    return ir.hoist_conditions(func)


PASSES: tuple[Pass, ...] = (
    Pass("hoist-conditions", hoist_conditions,
         "a check that does not depend on a loop runs once outside it, not once per iteration "
         "(a padding row's check leaves the register tile)"),
)


def run_passes(func: ir.Func) -> tuple[ir.Func, tuple[tuple[str, ir.Func], ...]]:
    """The kernel after every pass, and (name, kernel after it) for each."""
    history = []
    for step in PASSES:
        func = ir.verify(step.run(func), f"after pass {step.name}")
        history.append((step.name, func))
    return func, tuple(history)
