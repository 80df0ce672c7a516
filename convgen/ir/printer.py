"""The printer: kernels as readable pseudo-code, loop kinds and extents shown."""

from __future__ import annotations

import math

from .walk import constant_buffers
from .nodes import Allocate, Barrier, BinOp, BoolImm, Buffer, Call, Cast, Expr, FloatImm, Func, If, IntImm, Load, Loop, Select, Seq, Stage, Stmt, Store, Var

_PRECEDENCE = {"||": 1, "&&": 2, "<": 3, "<=": 3, "==": 3, "!=": 3, "+": 4, "-": 4,
               "*": 5, "/": 5, "//": 5, "%": 5}


def format_expr(expr: Expr, parent: int = 0) -> str:
    if isinstance(expr, IntImm):
        return str(expr.value)
    if isinstance(expr, BoolImm):
        return "true" if expr.value else "false"
    if isinstance(expr, FloatImm):
        return repr(expr.value) if math.isfinite(expr.value) else ("-inf" if expr.value < 0 else "inf")
    if isinstance(expr, Var):
        return expr.name
    if isinstance(expr, Load):
        return f"{expr.buffer.name}[{', '.join(format_expr(i) for i in expr.indices)}]"
    if isinstance(expr, Cast):
        return f"{expr.type}({format_expr(expr.value)})"
    if isinstance(expr, Call):
        return f"{expr.name}({', '.join(format_expr(a) for a in expr.args)})"
    if isinstance(expr, Select):
        return f"select({format_expr(expr.cond)}, {format_expr(expr.true_value)}, {format_expr(expr.false_value)})"
    if isinstance(expr, BinOp):
        if expr.op in ("min", "max"):
            return f"{expr.op}({format_expr(expr.a)}, {format_expr(expr.b)})"
        op, b = expr.op, expr.b
        if op == "+" and isinstance(b, IntImm) and b.value < 0:
            op, b = "-", IntImm(-b.value)
        prec = _PRECEDENCE[op]
        text = f"{format_expr(expr.a, prec)} {op} {format_expr(b, prec + 1)}"
        return f"({text})" if prec < parent else text
    raise TypeError(f"cannot print {type(expr).__name__}")


def format_buffer(buffer: Buffer) -> str:
    """name: dtype[AXIS=extent, ...] LAYOUT; indices follow the axes as listed."""
    dims = ", ".join(f"{axis}={extent}" for axis, extent in zip(buffer.axes, buffer.shape))
    text = f"{buffer.name}: {buffer.dtype}[{dims}]"
    if len(buffer.axes) > 1:
        text += f" {buffer.layout_name}"
    if buffer.values is not None:
        text += f" = {{{', '.join(str(v) for v in buffer.values)}}}"
    if buffer.pad:
        fill = buffer.pad_mode if buffer.pad_mode != "constant" else format_expr(FloatImm(buffer.pad_value))
        text += f", padded ({', '.join(f'{axis} {lo}+{hi}' for axis, (lo, hi) in zip(buffer.axes, buffer.pad) if lo or hi)}; {fill})"
    if buffer.transform:
        text += f", {buffer.transform}"
    return text


def format_stmt(stmt: Stmt, indent: int = 0) -> list[str]:
    pad = "  " * indent
    if isinstance(stmt, Seq):
        return [line for s in stmt.body for line in format_stmt(s, indent)]
    if isinstance(stmt, Loop):
        kind = "" if stmt.kind == "serial" else stmt.kind + (f".{stmt.axis} " if stmt.axis else " ")
        return [f"{pad}{kind}for {stmt.var.name} in 0..{stmt.extent}:"] + format_stmt(stmt.body, indent + 1)
    if isinstance(stmt, Store):
        target = f"{stmt.buffer.name}[{', '.join(format_expr(i) for i in stmt.indices)}]"
        return [f"{pad}{target} = {format_expr(stmt.value)}"]
    if isinstance(stmt, If):
        lines = [f"{pad}if {format_expr(stmt.cond)}:"] + format_stmt(stmt.then, indent + 1)
        if stmt.orelse is not None:
            lines += [f"{pad}else:"] + format_stmt(stmt.orelse, indent + 1)
        return lines
    if isinstance(stmt, Allocate):
        return [f"{pad}{stmt.buffer.scope} {format_buffer(stmt.buffer)}"] + format_stmt(stmt.body, indent)
    if isinstance(stmt, Barrier):
        return [f"{pad}barrier"]
    if isinstance(stmt, Stage):
        return [f"{pad}stage {stmt.name}:"] + format_stmt(stmt.body, indent + 1)
    raise TypeError(f"cannot print {type(stmt).__name__}")


def format_func(func: Func) -> str:
    params = ",\n    ".join(format_buffer(p) for p in func.params)
    header = f"func {func.name}(\n    {params}):"
    workspace = [f"  workspace {format_buffer(b)}" for b in func.workspace]
    tables = [f"  const {format_buffer(b)}" for b in constant_buffers(func.body)]
    return "\n".join([header] + workspace + tables + format_stmt(func.body, 1)) + "\n"

