"""The loop-nest IR: immutable nodes, walkers, a simplifier and a printer.

Expressions compute indices (int64) and values (float32, and later int8/int32);
statements are loops, stores, conditionals and local allocations. Nodes are
frozen dataclasses compared structurally; a pass rebuilds only what it changes.

Buffers carry their logical axes (e.g. N, C, H, W) and a storage order (the
layout, e.g. NHWC). Loads and stores index buffers by logical axis; the one
helper `flat_index` turns that into an address, so a layout change is a change
of the buffer's `order`, not new code in a backend.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields, replace
from typing import Iterator

INDEX = "int64"
BOOL = "bool"
FLOAT32 = "float32"

LOOP_KINDS = ("serial", "vectorized", "unrolled", "parallel")
SCOPES = ("global", "local")

ARITH_OPS = ("+", "-", "*", "/", "//", "%", "min", "max")
COMPARE_OPS = ("<", "<=", "==", "!=")
LOGIC_OPS = ("&&", "||")


class Node:
    """Base of all IR nodes."""


# ---------------------------------------------------------------------------
# Buffers
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Buffer:
    """A named array. `axes` are the logical dimensions that indices follow;
    `order` is the storage order, outermost first (the layout)."""

    name: str
    dtype: str
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    order: tuple[str, ...]
    scope: str = "global"

    def __post_init__(self):
        if len(self.axes) != len(self.shape) or sorted(self.axes) != sorted(self.order):
            raise ValueError(f"buffer {self.name}: order {self.order} is not a permutation of axes {self.axes}")
        if self.scope not in SCOPES:
            raise ValueError(f"buffer {self.name}: scope {self.scope!r} is not one of {SCOPES}")

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def layout(self) -> str:
        return "".join(self.order) if all(len(a) == 1 for a in self.order) else "/".join(self.order)

    @property
    def storage_shape(self) -> tuple[int, ...]:
        """The shape in storage order (what a C or NumPy caller allocates)."""
        return tuple(self.extent(axis) for axis in self.order)

    def extent(self, axis: str) -> int:
        return self.shape[self.axes.index(axis)]

    def strides(self) -> dict[str, int]:
        """Elements between neighbours along each logical axis, row-major over `order`."""
        result, step = {}, 1
        for axis in reversed(self.order):
            result[axis] = step
            step *= self.extent(axis)
        return result


# ---------------------------------------------------------------------------
# Expressions
# ---------------------------------------------------------------------------

class Expr(Node):
    """Base of expressions; arithmetic operators build BinOp nodes."""

    def __add__(self, other): return BinOp("+", self, as_expr(other, self))
    def __radd__(self, other): return BinOp("+", as_expr(other, self), self)
    def __sub__(self, other): return BinOp("-", self, as_expr(other, self))
    def __rsub__(self, other): return BinOp("-", as_expr(other, self), self)
    def __mul__(self, other): return BinOp("*", self, as_expr(other, self))
    def __rmul__(self, other): return BinOp("*", as_expr(other, self), self)
    def __truediv__(self, other): return BinOp("/", self, as_expr(other, self))
    def __floordiv__(self, other): return BinOp("//", self, as_expr(other, self))
    def __mod__(self, other): return BinOp("%", self, as_expr(other, self))
    def __neg__(self): return BinOp("-", as_expr(0, self), self)

    @property
    def dtype(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, eq=True)
class IntImm(Expr):
    value: int

    @property
    def dtype(self) -> str:
        return INDEX


@dataclass(frozen=True, eq=True)
class BoolImm(Expr):
    value: bool

    @property
    def dtype(self) -> str:
        return BOOL


@dataclass(frozen=True, eq=True)
class FloatImm(Expr):
    value: float
    type: str = FLOAT32

    @property
    def dtype(self) -> str:
        return self.type


@dataclass(frozen=True, eq=True)
class Var(Expr):
    """A loop variable (int64)."""

    name: str

    @property
    def dtype(self) -> str:
        return INDEX


@dataclass(frozen=True, eq=True)
class BinOp(Expr):
    """Binary operation. `//` and `%` are floor division and modulo on ints;
    `/` is float division; comparisons and `&&`/`||` give bool."""

    op: str
    a: Expr
    b: Expr

    def __post_init__(self):
        if self.op not in ARITH_OPS + COMPARE_OPS + LOGIC_OPS:
            raise ValueError(f"unknown operator {self.op!r}")
        if self.a.dtype != self.b.dtype:
            raise TypeError(f"operands of {self.op!r} differ in type: {self.a.dtype} and {self.b.dtype}")
        if self.op in LOGIC_OPS and self.a.dtype != BOOL:
            raise TypeError(f"operands of {self.op!r} must be bool; got {self.a.dtype}")
        if self.op in ("//", "%") and self.a.dtype != INDEX:
            raise TypeError(f"{self.op!r} is for integer indices; got {self.a.dtype}")
        if self.op == "/" and self.a.dtype == INDEX:
            raise TypeError("'/' is float division; use '//' for indices")

    @property
    def dtype(self) -> str:
        return BOOL if self.op in COMPARE_OPS + LOGIC_OPS else self.a.dtype


@dataclass(frozen=True, eq=True)
class Select(Expr):
    cond: Expr
    true_value: Expr
    false_value: Expr

    def __post_init__(self):
        if self.cond.dtype != BOOL or self.true_value.dtype != self.false_value.dtype:
            raise TypeError("select needs a bool condition and two values of one type")

    @property
    def dtype(self) -> str:
        return self.true_value.dtype


@dataclass(frozen=True, eq=True)
class Load(Expr):
    buffer: Buffer
    indices: tuple[Expr, ...]

    def __post_init__(self):
        _check_indices(self.buffer, self.indices)

    @property
    def dtype(self) -> str:
        return self.buffer.dtype


def as_expr(value, like: Expr | None = None) -> Expr:
    """Wrap a Python number as an immediate of the kind `like` needs."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, bool):
        return BoolImm(value)
    if isinstance(value, int) and (like is None or like.dtype == INDEX):
        return IntImm(value)
    if isinstance(value, (int, float)):
        return FloatImm(float(value), like.dtype if like is not None and like.dtype != INDEX else FLOAT32)
    raise TypeError(f"cannot make an IR expression of {value!r}")


def binop(op: str, a, b) -> BinOp:
    a = as_expr(a, b if isinstance(b, Expr) else None)
    return BinOp(op, a, as_expr(b, a))


def lt(a, b): return binop("<", a, b)
def le(a, b): return binop("<=", a, b)
def minimum(a, b): return binop("min", a, b)
def maximum(a, b): return binop("max", a, b)


def all_of(*conds: Expr) -> Expr:
    result: Expr = BoolImm(True)
    for cond in conds:
        result = cond if result == BoolImm(True) else BinOp("&&", result, cond)
    return result


def _check_indices(buffer: Buffer, indices: tuple) -> None:
    if len(indices) != len(buffer.axes):
        raise ValueError(f"{buffer.name} has {len(buffer.axes)} axes; got {len(indices)} indices")
    for index in indices:
        if index.dtype != INDEX:
            raise TypeError(f"index of {buffer.name} must be {INDEX}; got {index.dtype}")


def flat_index(buffer: Buffer, indices: tuple[Expr, ...]) -> Expr:
    """The element offset of buffer[indices], from the buffer's layout."""
    strides = buffer.strides()
    offset: Expr = IntImm(0)
    for axis, index in zip(buffer.axes, indices):
        offset = offset + index * strides[axis]
    return simplify(offset)


# ---------------------------------------------------------------------------
# Statements
# ---------------------------------------------------------------------------

class Stmt(Node):
    """Base of statements."""


@dataclass(frozen=True, eq=True)
class Store(Stmt):
    buffer: Buffer
    indices: tuple[Expr, ...]
    value: Expr

    def __post_init__(self):
        _check_indices(self.buffer, self.indices)
        if self.value.dtype != self.buffer.dtype:
            raise TypeError(f"storing {self.value.dtype} into {self.buffer.name} of {self.buffer.dtype}")


@dataclass(frozen=True, eq=True)
class Loop(Stmt):
    """for var in 0 .. extent-1, run body. `kind` says how the loop is to run."""

    var: Var
    extent: int
    body: Stmt
    kind: str = "serial"

    def __post_init__(self):
        if self.kind not in LOOP_KINDS:
            raise ValueError(f"loop {self.var.name}: kind {self.kind!r} is not one of {LOOP_KINDS}")


@dataclass(frozen=True, eq=True)
class Seq(Stmt):
    body: tuple[Stmt, ...]


@dataclass(frozen=True, eq=True)
class If(Stmt):
    cond: Expr
    then: Stmt
    orelse: Stmt | None = None


@dataclass(frozen=True, eq=True)
class Allocate(Stmt):
    """A local buffer that lives for the duration of body."""

    buffer: Buffer
    body: Stmt


@dataclass(frozen=True, eq=True)
class Func(Node):
    """A kernel: parameters (global buffers, in call order) and a body.
    `doc` says in words what it computes; backends put it in comments."""

    name: str
    params: tuple[Buffer, ...]
    body: Stmt
    doc: str = ""

    def written_buffers(self) -> set[str]:
        """Names of the parameters the body stores to (the outputs)."""
        return {s.buffer.name for s in find_all(self.body, Store) if s.buffer.scope == "global"}


# ---------------------------------------------------------------------------
# Walkers
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# Bounds and simplification
# ---------------------------------------------------------------------------

Ranges = dict[str, tuple[int, int]]


def bounds(expr: Expr, ranges: Ranges) -> tuple[float, float] | None:
    """Inclusive integer interval of an index expression given variable ranges, or None if unknown."""
    if isinstance(expr, IntImm):
        return (expr.value, expr.value)
    if isinstance(expr, Var):
        return ranges.get(expr.name)
    if isinstance(expr, Select):
        t, f = bounds(expr.true_value, ranges), bounds(expr.false_value, ranges)
        return (min(t[0], f[0]), max(t[1], f[1])) if t and f else None
    if not isinstance(expr, BinOp) or expr.dtype != INDEX:
        return None
    a, b = bounds(expr.a, ranges), bounds(expr.b, ranges)
    if a is None or b is None:
        return None
    if expr.op == "+":
        return (a[0] + b[0], a[1] + b[1])
    if expr.op == "-":
        return (a[0] - b[1], a[1] - b[0])
    if expr.op == "*":
        corners = [x * y for x in a for y in b]
        return (min(corners), max(corners))
    if expr.op == "min":
        return (min(a[0], b[0]), min(a[1], b[1]))
    if expr.op == "max":
        return (max(a[0], b[0]), max(a[1], b[1]))
    if expr.op in ("//", "%") and b[0] == b[1] and b[0] > 0:
        c = b[0]
        if expr.op == "//":
            return (a[0] // c, a[1] // c)
        return (a[0], a[1]) if a[0] >= 0 and a[1] < c else (0, c - 1)
    return None


_INT_FOLDS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv,
              "%": operator.mod, "min": min, "max": max, "<": operator.lt, "<=": operator.le,
              "==": operator.eq, "!=": operator.ne}


def truncation_is_floor(node: BinOp, ranges: Ranges) -> bool:
    """Whether C's / and % (LLVM's sdiv/srem), which truncate, give the IR's floor
    `//` and `%` here: true when the dividend is provably >= 0 and the divisor > 0."""
    a, b = bounds(node.a, ranges), bounds(node.b, ranges)
    return a is not None and b is not None and a[0] >= 0 and b[0] > 0


def _fold_ints(op: str, x: int, y: int) -> Expr:
    result = _INT_FOLDS[op](x, y)
    return BoolImm(result) if op in COMPARE_OPS else IntImm(result)


def _decide(op: str, a, b) -> bool | None:
    """Decide a comparison from operand intervals, if they settle it."""
    if a is None or b is None:
        return None
    if op == "<":
        return True if a[1] < b[0] else False if a[0] >= b[1] else None
    if op == "<=":
        return True if a[1] <= b[0] else False if a[0] > b[1] else None
    if op == "==":
        return True if a[0] == a[1] == b[0] == b[1] else False if a[1] < b[0] or b[1] < a[0] else None
    if op == "!=":
        decided = _decide("==", a, b)
        return None if decided is None else not decided
    return None


class _Simplifier(Rewriter):
    def __init__(self, ranges: Ranges | None = None):
        self.ranges: Ranges = dict(ranges or {})

    def visit_Loop(self, node: Loop) -> Stmt:
        if node.extent <= 0:
            return Seq(())
        if node.extent == 1 and node.kind == "serial":
            return self.visit(substitute(node.body, {node.var.name: IntImm(0)}))
        saved = self.ranges.get(node.var.name)
        self.ranges[node.var.name] = (0, node.extent - 1)
        body = self.visit(node.body)
        if saved is None:
            del self.ranges[node.var.name]
        else:
            self.ranges[node.var.name] = saved
        return node if body is node.body else replace(node, body=body)

    def visit_Seq(self, node: Seq) -> Stmt:
        flat = []
        for stmt in (self.visit(s) for s in node.body):
            flat.extend(stmt.body if isinstance(stmt, Seq) else (stmt,))
        return flat[0] if len(flat) == 1 else Seq(tuple(flat))

    def visit_If(self, node: If) -> Stmt:
        cond = self.visit(node.cond)
        if isinstance(cond, BoolImm):
            chosen = node.then if cond.value else node.orelse
            return Seq(()) if chosen is None else self.visit(chosen)
        return self.generic_visit(replace(node, cond=cond))

    def visit_Select(self, node: Select) -> Expr:
        node = self.generic_visit(node)
        if isinstance(node.cond, BoolImm):
            return node.true_value if node.cond.value else node.false_value
        return node

    def visit_BinOp(self, node: BinOp) -> Expr:
        node = self.generic_visit(node)
        a, b, op = node.a, node.b, node.op
        if op in LOGIC_OPS:
            return _simplify_logic(op, a, b)
        if a.dtype != INDEX:
            return node  # float arithmetic is left exactly as written
        if isinstance(a, IntImm) and isinstance(b, IntImm) and not (op in ("//", "%") and b.value == 0):
            return _fold_ints(op, a.value, b.value)
        decided = self._by_bounds(node)
        if decided is not None:
            return decided
        return _simplify_algebra(node)

    def _by_bounds(self, node: BinOp) -> Expr | None:
        a, b = bounds(node.a, self.ranges), bounds(node.b, self.ranges)
        if node.op in COMPARE_OPS:
            decided = _decide(node.op, a, b)
            return None if decided is None else BoolImm(decided)
        if node.op == "min" and a and b:
            if a[1] <= b[0]:
                return node.a
            if b[1] <= a[0]:
                return node.b
        if node.op == "max" and a and b:
            if a[0] >= b[1]:
                return node.a
            if b[0] >= a[1]:
                return node.b
        if node.op in ("//", "%") and a and isinstance(node.b, IntImm) and node.b.value > 0:
            c = node.b.value
            if node.op == "//" and a[0] // c == a[1] // c:
                return IntImm(a[0] // c)
            if node.op == "%" and 0 <= a[0] and a[1] < c:
                return node.a
        return None


def _simplify_logic(op: str, a: Expr, b: Expr) -> Expr:
    identity, absorbing = (True, False) if op == "&&" else (False, True)
    for x, y in ((a, b), (b, a)):
        if isinstance(x, BoolImm):
            return y if x.value == identity else BoolImm(absorbing)
    return BinOp(op, a, b)


def _simplify_algebra(node: BinOp) -> Expr:
    """Identities and constant re-association on index arithmetic."""
    a, b, op = node.a, node.b, node.op
    if op in ("+", "*") and isinstance(a, IntImm) and not isinstance(b, IntImm):
        a, b = b, a  # constants to the right
    if op == "-" and isinstance(b, IntImm):
        op, b = "+", IntImm(-b.value)
    if isinstance(b, IntImm):
        c = b.value
        if (op == "+" and c == 0) or (op in ("*", "//") and c == 1):
            return a
        if op == "*" and c == 0:
            return IntImm(0)
        if op == "%" and c == 1:
            return IntImm(0)
        if isinstance(a, BinOp) and isinstance(a.b, IntImm) and a.op == op and op in ("+", "*"):
            merged = _fold_ints(op, a.b.value, c)
            return _simplify_algebra(BinOp(op, a.a, merged))
        if op == "*" and isinstance(a, BinOp) and a.op == "+" and isinstance(a.b, IntImm):
            # (x + c1) * c2 -> x * c2 + c1 * c2, so constants gather at the top
            return _simplify_algebra(BinOp("+", _simplify_algebra(BinOp("*", a.a, b)), IntImm(a.b.value * c)))
    if op == "+" and isinstance(a, BinOp) and a.op == "+" and isinstance(a.b, IntImm) and not isinstance(b, IntImm):
        # (x + c) + y -> (x + y) + c
        return _simplify_algebra(BinOp("+", _simplify_algebra(BinOp("+", a.a, b)), a.b))
    if op == "-" and a == b:
        return IntImm(0)
    return BinOp(op, a, b) if (op, a, b) != (node.op, node.a, node.b) else node


def simplify(node: Node, ranges: Ranges | None = None) -> Node:
    """Fold constants, apply identities, and drop conditions and loops that
    variable ranges (from enclosing loops, or `ranges`) settle."""
    return _Simplifier(ranges).visit(node)


# ---------------------------------------------------------------------------
# Printer
# ---------------------------------------------------------------------------

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
    layout = f" {buffer.layout}" if len(buffer.axes) > 1 else ""
    return f"{buffer.name}: {buffer.dtype}[{dims}]{layout}"


def format_stmt(stmt: Stmt, indent: int = 0) -> list[str]:
    pad = "  " * indent
    if isinstance(stmt, Seq):
        return [line for s in stmt.body for line in format_stmt(s, indent)]
    if isinstance(stmt, Loop):
        kind = "" if stmt.kind == "serial" else stmt.kind + " "
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
        return [f"{pad}local {format_buffer(stmt.buffer)}"] + format_stmt(stmt.body, indent)
    raise TypeError(f"cannot print {type(stmt).__name__}")


def format_func(func: Func) -> str:
    params = ",\n    ".join(format_buffer(p) for p in func.params)
    header = f"func {func.name}(\n    {params}):"
    return "\n".join([header] + format_stmt(func.body, 1)) + "\n"

