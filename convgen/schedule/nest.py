"""Finding and replacing loops by name: what every primitive needs first."""

from __future__ import annotations

import difflib
from dataclasses import replace

from .. import ir
from ..errors import ScheduleError


def loop_names(func: ir.Func) -> list[str]:
    return [loop.var.name for loop in ir.find_all(func.body, ir.Loop)]


def find_loop(func: ir.Func, name, primitive: str) -> ir.Loop:
    """The loop called `name`, or a refusal listing the loops there are."""
    if not isinstance(name, str):
        raise ScheduleError(primitive, f"expected a loop name; got {name!r}")
    loops = ir.loops_by_name(func.body)
    if name in loops:
        return loops[name]
    close = difflib.get_close_matches(name, list(loops), n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ScheduleError(primitive, f"no loop named '{name}'", f"{hint}loops are: {', '.join(loops) or 'none'}")


def ancestors(func: ir.Func, name: str) -> list[ir.Stmt]:
    """Statements enclosing the named loop, outermost first (the loop itself excluded)."""
    path: list[ir.Stmt] = []

    def walk(node: ir.Stmt, trail: list[ir.Stmt]) -> bool:
        if isinstance(node, ir.Loop) and node.var.name == name:
            path.extend(trail)
            return True
        children = [c for c in ir.children(node) if isinstance(c, ir.Stmt)]
        return any(walk(child, trail + [node]) for child in children)

    walk(func.body, [])
    return path


def enclosing_loops(func: ir.Func, name: str) -> list[ir.Loop]:
    return [s for s in ancestors(func, name) if isinstance(s, ir.Loop)]


def perfect_chain(loop: ir.Loop) -> list[ir.Loop]:
    """The loop and the loops directly nested in it, while each body is exactly one loop."""
    chain = [loop]
    while isinstance(chain[-1].body, ir.Loop):
        chain.append(chain[-1].body)
    return chain


class _ReplaceLoop(ir.Rewriter):
    def __init__(self, name: str, make):
        self.name, self.make = name, make

    def visit_Loop(self, node: ir.Loop):
        if node.var.name == self.name:
            return self.make(node)
        return self.generic_visit(node)


def replace_loop(func: ir.Func, name: str, make) -> ir.Func:
    """The kernel with loop `name` replaced by make(loop), then simplified."""
    return ir.simplify(replace(func, body=_ReplaceLoop(name, make).visit(func.body)))


def require_serial(loop: ir.Loop, primitive: str) -> None:
    if loop.kind != "serial":
        raise ScheduleError(primitive, f"loop '{loop.var.name}' is already {loop.kind}",
                            "apply loop-shaping steps (split, reorder, fuse) before vectorize, unroll and parallel")


def require_new_names(func: ir.Func, names, primitive: str) -> None:
    taken = set(loop_names(func))
    clash = [n for n in names if n in taken]
    if clash:
        raise ScheduleError(primitive, f"a loop named '{clash[0]}' exists already")


class _GuardStores(ir.Rewriter):
    def __init__(self, cond: ir.Expr):
        self.cond = cond

    def visit_Store(self, node: ir.Store):
        return ir.If(self.cond, node)


def guard_stores(stmt: ir.Stmt, cond: ir.Expr) -> ir.Stmt:
    """Put a condition on every store: guards sit at the leaves, so nests stay perfect."""
    return _GuardStores(cond).visit(stmt)


def stores_not_indexed_by(stmt: ir.Stmt, var: str, skip_local: set[str] = frozenset()) -> list[ir.Store]:
    """Stores in stmt whose address does not involve var (a reduction over var writes them)."""
    return [s for s in ir.find_all(stmt, ir.Store)
            if s.buffer.name not in skip_local and var not in ir.free_vars(ir.flat_index(s.buffer, s.indices))]


def describe_stmt(stmt: ir.Stmt) -> str:
    """A statement in words, for refusals."""
    if isinstance(stmt, ir.Loop):
        return f"loop '{stmt.var.name}'"
    if isinstance(stmt, ir.Allocate):
        return f"the allocation of '{stmt.buffer.name}'"
    if isinstance(stmt, ir.Seq):
        return f"a sequence of {len(stmt.body)} statements"
    return f"a {type(stmt).__name__.lower()} statement"
