"""Walkers over the IR: a read-only visitor, a rebuilding rewriter, and small
helpers built on them."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Iterator

from .nodes import Allocate, Buffer, Expr, Func, Load, Loop, Node, Stage, Store, Var


def children(node: Node) -> Iterator[Node]:
    for f in fields(node):
        value = getattr(node, f.name)
        if isinstance(value, Node):
            yield value
        elif isinstance(value, tuple):
            yield from (v for v in value if isinstance(v, Node))


class Visitor:
    """Read-only walk. Define visit_<NodeClass> to act on a node; call
    self.generic_visit(node) from it to keep descending."""

    def visit(self, node: Node) -> None:
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            self.generic_visit(node)
        else:
            method(node)

    def generic_visit(self, node: Node) -> None:
        for child in children(node):
            self.visit(child)


class Rewriter:
    """Rebuilds a tree bottom-up, sharing every subtree that does not change.
    Define visit_<NodeClass> returning the replacement node."""

    def visit(self, node: Node) -> Node:
        method = getattr(self, "visit_" + type(node).__name__, None)
        return self.generic_visit(node) if method is None else method(node)

    def generic_visit(self, node: Node) -> Node:
        changes = {}
        for f in fields(node):
            value = getattr(node, f.name)
            if isinstance(value, Node):
                new = self.visit(value)
            elif isinstance(value, tuple) and any(isinstance(v, Node) for v in value):
                new = tuple(self.visit(v) if isinstance(v, Node) else v for v in value)
            else:
                continue
            if new is not value and new != value:
                changes[f.name] = new
        return replace(node, **changes) if changes else node


class _Substitute(Rewriter):
    def __init__(self, mapping: dict[str, Expr]):
        self.mapping = mapping

    def visit_Var(self, node: Var) -> Expr:
        return self.mapping.get(node.name, node)


def substitute(node: Node, mapping: dict[str, Expr]) -> Node:
    """Replace variables by expressions."""
    return _Substitute(mapping).visit(node)


class _Collect(Visitor):
    def __init__(self, kind):
        self.kind, self.found = kind, []

    def visit(self, node):
        if isinstance(node, self.kind):
            self.found.append(node)
        super().visit(node)


def find_all(node: Node, kind: type) -> list:
    """Every node of a class in a tree, in walk order."""
    collector = _Collect(kind)
    collector.visit(node)
    return collector.found




class _FreeVars(Visitor):
    def __init__(self):
        self.names: set[str] = set()

    def visit_Var(self, node: Var) -> None:
        self.names.add(node.name)


def free_vars(node: Node) -> set[str]:
    """Names of the variables a node mentions."""
    walker = _FreeVars()
    walker.visit(node)
    return walker.names


def loops_by_name(node: Node) -> dict[str, Loop]:
    return {loop.var.name: loop for loop in find_all(node, Loop)}


def constant_buffers(node) -> list[Buffer]:
    """The constant tables a tree reads, each once, in first-use order."""
    found: dict[str, Buffer] = {}
    for load in find_all(node, Load):
        if load.buffer.scope == "constant":
            found.setdefault(load.buffer.name, load.buffer)
    return list(found.values())



class _Rename(Rewriter):
    """Every loop variable, stage and non-parameter buffer named `old`... renamed
    `new`..., and the axes of those buffers named after loops (a cache_write tile's)."""

    def __init__(self, old: str, new: str, loops: set[str]):
        self.old, self.new, self.loops = old, new, loops

    def name(self, name: str) -> str:
        return self.new + name[len(self.old):] if name.startswith(self.old) else name

    def buffer(self, buffer: Buffer) -> Buffer:
        if buffer.scope == "global":
            return buffer
        axis = {a: self.name(a) if a in self.loops else a for a in buffer.axes}
        layout = tuple(replace(d, axis=axis[d.axis]) for d in buffer.layout)
        return replace(buffer, name=self.name(buffer.name), axes=tuple(axis[a] for a in buffer.axes), layout=layout)

    def visit_Var(self, node: Var) -> Var:
        return Var(self.name(node.name))

    def visit_Stage(self, node: Stage) -> Stage:
        return Stage(self.name(node.name), self.visit(node.body))

    def visit_Load(self, node: Load) -> Load:
        return Load(self.buffer(node.buffer), tuple(self.visit(i) for i in node.indices))

    def visit_Store(self, node: Store) -> Store:
        return Store(self.buffer(node.buffer), tuple(self.visit(i) for i in node.indices), self.visit(node.value))

    def visit_Allocate(self, node: Allocate) -> Allocate:
        return Allocate(self.buffer(node.buffer), self.visit(node.body))


def with_prefix(func: Func, prefix: str) -> Func:
    """func with its name prefix replaced: every loop, stage and buffer but the
    parameters renamed from func.prefix + rest to prefix + rest."""
    if prefix == func.prefix:
        return func
    rename = _Rename(func.prefix, prefix, {loop.var.name for loop in find_all(func.body, Loop)})
    return replace(func, body=rename.visit(func.body), workspace=tuple(rename.buffer(b) for b in func.workspace),
                   prefix=prefix)


class _Rebind(Rewriter):
    def __init__(self, mapping: dict[str, Buffer]):
        self.mapping = mapping

    def buffer(self, buffer: Buffer) -> Buffer:
        return self.mapping.get(buffer.name, buffer) if buffer.scope == "global" else buffer

    def visit_Load(self, node: Load) -> Load:
        return Load(self.buffer(node.buffer), tuple(self.visit(i) for i in node.indices))

    def visit_Store(self, node: Store) -> Store:
        return Store(self.buffer(node.buffer), tuple(self.visit(i) for i in node.indices), self.visit(node.value))


def rebind(func: Func, mapping: dict[str, Buffer]) -> Func:
    """func with each parameter named in mapping replaced by the buffer given
    (same axes, shape and layout; another name or scope), in its parameters
    and in every access: how a layer's x, w, b and y become a network's
    tensors and weights."""
    for name, buffer in mapping.items():
        old = next(p for p in func.params if p.name == name)
        if (old.axes, old.shape, old.layout, old.dtype) != (buffer.axes, buffer.shape, buffer.layout, buffer.dtype):
            raise ValueError(f"rebind {name} -> {buffer.name}: another shape, layout or type")
    rewriter = _Rebind(mapping)
    params = tuple(mapping.get(p.name, p) for p in func.params)
    return replace(func, params=params, body=rewriter.visit(func.body))
