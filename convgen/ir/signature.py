"""A kernel's signature, read from its parameters: what a caller passes.

Each argument is the caller's array (its shape and layout as the spec
describes it) and the kernel's buffer for it, which schedules may have laid
out otherwise, padded or transformed; where they differ, whoever calls the
kernel converts (the Python Kernel does). The Python Kernel and the C header
are generated from this, not from the spec.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .nodes import Buffer, Func, parse_layout


def differs_from_caller(buffer: Buffer, caller_layout: str) -> bool:
    """Whether a buffer holds other than the caller's array laid out as caller_layout."""
    return bool(buffer.transform or buffer.pad) or buffer.layout != parse_layout(caller_layout, buffer.axes)


@dataclass(frozen=True)
class Argument:
    name: str
    role: str                    # "input" or "output"
    dtype: str
    shape: tuple[int, ...]       # the caller's array, in its layout
    layout: str                  # the caller's layout, e.g. NCHW, OIHW
    buffer: Buffer               # what the kernel reads or writes

    @property
    def converts(self) -> bool:
        """Whether the kernel's buffer differs from the caller's array (layout, padding, transform)."""
        return differs_from_caller(self.buffer, self.layout)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Signature:
    name: str
    arguments: tuple[Argument, ...]
    workspace_bytes: int = 0     # scratch the caller provides; none so far (tiles live on the stack)

    def __getitem__(self, name: str) -> Argument:
        return next(a for a in self.arguments if a.name == name)

    def __contains__(self, name: str) -> bool:
        return any(a.name == name for a in self.arguments)

    @property
    def outputs(self) -> tuple[Argument, ...]:
        return tuple(a for a in self.arguments if a.role == "output")


def signature(func: Func) -> Signature:
    """The kernel's arguments in call order. A parameter that records no caller's
    array (a hand-built kernel) is taken as the caller's as it is."""
    written = func.written_buffers()
    arguments = []
    for p in func.params:
        layout = p.caller_layout or "".join(d.axis for d in p.layout if not d.block)
        shape = p.caller_shape or tuple(p.user_shape[p.axes.index(a)] for a in layout)
        arguments.append(Argument(p.name, "output" if p.name in written else "input", p.dtype, shape, layout, p))
    return Signature(func.name, tuple(arguments))
