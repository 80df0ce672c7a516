"""A kernel's signature, read from its program: what a caller passes.

Each argument is the caller's array exactly as the spec describes it (a
parameter's buffer: schedules never change one, they add workspace copies
and the stages that fill them). The workspace sizes come from the program's
split (ir/program.py). The Python Kernel, its call guard and the C header
are generated from this, not from the spec.
"""

from __future__ import annotations

from dataclasses import dataclass

from .nodes import Buffer, Func
from .program import split


@dataclass(frozen=True)
class Argument:
    name: str
    role: str                    # "input" or "output"
    dtype: str
    shape: tuple[int, ...]       # the caller's array, in its layout
    layout: str                  # the caller's layout, e.g. NCHW, OIHW
    buffer: Buffer               # the parameter
    weight: bool = False         # fixed when the kernel is bound

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes


@dataclass(frozen=True)
class Signature:
    name: str
    arguments: tuple[Argument, ...]
    workspace_bytes: int = 0     # scratch the caller provides: the prepared weights, then per-call scratch
    prepared_bytes: int = 0      # the first part, filled by the prepare step

    def __getitem__(self, name: str) -> Argument:
        return next(a for a in self.arguments if a.name == name)

    def __contains__(self, name: str) -> bool:
        return any(a.name == name for a in self.arguments)

    @property
    def outputs(self) -> tuple[Argument, ...]:
        return tuple(a for a in self.arguments if a.role == "output")


def signature(func: Func) -> Signature:
    """The kernel's arguments in call order, and its workspace."""
    written = func.written_buffers()
    arguments = tuple(
        Argument(p.name, "output" if p.name in written else "input", p.dtype, p.storage_shape, p.layout_name, p,
                 p.weight)
        for p in func.params)
    program = split(func)
    return Signature(func.name, arguments, program.workspace_bytes, program.prepared_bytes)
