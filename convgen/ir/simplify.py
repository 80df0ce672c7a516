"""Index arithmetic: interval bounds, the simplifier, and addresses from layouts."""

from __future__ import annotations

import math
import operator
from dataclasses import replace

from .nodes import (COMPARE_OPS, INDEX, INDEX_INTRINSICS, LOGIC_OPS, BinOp, BoolImm, Buffer, Call, Expr, If, IntImm, Load,
                    Loop, Node, Select, Seq, Stmt, Var, all_of)
from .walk import Rewriter, find_all, free_vars, substitute

Ranges = dict[str, tuple[int, int]]


def bounds(expr: Expr, ranges: Ranges) -> tuple[float, float] | None:
    """Inclusive integer interval of an index expression given variable ranges, or None if unknown."""
    if isinstance(expr, IntImm):
        return (expr.value, expr.value)
    if isinstance(expr, Var):
        return ranges.get(expr.name)
    if isinstance(expr, Call) and expr.name == "clamp" and isinstance(expr.args[1], IntImm):
        return (0, expr.args[1].value - 1)
    if isinstance(expr, Call) and expr.name == "reflect" and isinstance(expr.args[1], IntImm):
        # one mirror at each edge: within the axis only for indices less than one axis beyond it
        n, span = expr.args[1].value, bounds(expr.args[0], ranges)
        return (0, n - 1) if span is not None and -(n - 1) <= span[0] and span[1] <= 2 * n - 2 else None
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
    def __init__(self, ranges: Ranges | None = None, drop_unit_loops: bool = False):
        self.ranges: Ranges = dict(ranges or {})
        self.drop_unit_loops = drop_unit_loops

    def visit_Loop(self, node: Loop) -> Stmt:
        if node.extent <= 0:
            return Seq(())
        if node.extent == 1 and node.kind == "serial" and self.drop_unit_loops:
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
        split = self.split_range(cond)
        if split is None:
            return self.generic_visit(replace(node, cond=cond))
        name, below, above = split
        then = self.visit_within(node.then, name, below)
        orelse = None if node.orelse is None else self.visit_within(node.orelse, name, above)
        return replace(node, cond=cond, then=then, orelse=orelse)

    def split_range(self, cond: Expr) -> tuple[str, tuple[int, int], tuple[int, int]] | None:
        """For `v < c` on a loop variable v with a known range: (v, its range
        where it holds, its range where it does not); else None."""
        if not (isinstance(cond, BinOp) and cond.op == "<" and isinstance(cond.a, Var)
                and isinstance(cond.b, IntImm) and cond.a.name in self.ranges):
            return None
        low, high = self.ranges[cond.a.name]
        return cond.a.name, (low, min(high, cond.b.value - 1)), (max(low, cond.b.value), high)

    def visit_within(self, stmt: Stmt, name: str, span: tuple[int, int]) -> Stmt:
        """Visit stmt with a loop variable's range narrowed to span."""
        saved = self.ranges[name]
        self.ranges[name] = span
        try:
            return self.visit(stmt)
        finally:
            self.ranges[name] = saved

    def visit_Select(self, node: Select) -> Expr:
        node = self.generic_visit(node)
        if isinstance(node.cond, BoolImm):
            return node.true_value if node.cond.value else node.false_value
        return node

    def visit_Call(self, node: Call) -> Expr:
        node = self.generic_visit(node)
        if node.name not in INDEX_INTRINSICS:
            return node
        index, size = node.args
        span = bounds(index, self.ranges)
        if span is None or not isinstance(size, IntImm):
            return node
        inside = 0 <= span[0] and span[1] < size.value
        if node.name in ("reflect", "clamp") and inside:
            return index  # the remap is the identity here
        if node.name == "in_range":
            if inside:
                return BoolImm(True)
            if span[1] < 0 or span[0] >= size.value:
                return BoolImm(False)
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
        if node.op in ("//", "%") and isinstance(node.b, IntImm) and node.b.value > 0:
            c = node.b.value
            if node.op == "//" and a and a[0] // c == a[1] // c:
                return IntImm(a[0] // c)
            if node.op == "%" and a and 0 <= a[0] and a[1] < c:
                return node.a
            return self._divide_out_multiples(node, c) or self._divide_blocks(node, c)
        return None

    def _divide_blocks(self, node: BinOp, c: int) -> Expr | None:
        """(S*m + r) // c -> S // (c/m) and (S*m + r) % c -> (S % (c/m))*m + r
        when m divides c and r lies in 0..m-1 (floor semantics): an index split
        by m, then divided by a multiple of m, such as the group of a channel
        vector (oc.o*16 + oc.i) // 32 -> oc.o // 2."""
        factored = [(term, _constant_factor(term)) for term in _sum_terms(node.a)]
        factors = {math.gcd(f[1], c) for _, f in factored if f is not None and f[0] is not None}
        for m in sorted(factors - {1, c}, reverse=True):
            scaled = [(f[0], f[1] // m) for _, f in factored if f is not None and f[1] % m == 0]
            rest = [term for term, f in factored if f is None or f[1] % m]
            span = bounds(_sum(rest), self.ranges)
            if not scaled or span is None or span[0] < 0 or span[1] >= m:
                continue
            blocks = _sum([IntImm(k) if x is None else x * k for x, k in scaled])
            if node.op == "//":
                return self.visit(BinOp("//", blocks, IntImm(c // m)))
            return self.visit(BinOp("+", BinOp("*", BinOp("%", blocks, IntImm(c // m)), IntImm(m)), _sum(rest)))
        return None

    def _divide_out_multiples(self, node: BinOp, c: int) -> Expr | None:
        """(q*c + r) // c -> q + r // c and (q*c + r) % c -> r % c, floor semantics;
        then r // c vanishes when r is known to lie in 0..c-1."""
        quotient, rest = [], []
        for term in _sum_terms(node.a):
            factor = _constant_factor(term)
            if factor is not None and factor[1] % c == 0:
                quotient.append(factor[0] * (factor[1] // c) if factor[0] is not None else IntImm(factor[1] // c))
            else:
                rest.append(term)
        if not quotient:
            return None
        remainder = _sum(rest)
        if node.op == "%":
            return self.visit(BinOp("%", remainder, node.b))
        return self.visit(BinOp("+", _sum(quotient), BinOp("//", remainder, node.b)))


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


def _sum_terms(expr: Expr) -> list[Expr]:
    if isinstance(expr, BinOp) and expr.op == "+":
        return _sum_terms(expr.a) + _sum_terms(expr.b)
    return [expr]


def _sum(terms: list[Expr]) -> Expr:
    result: Expr = IntImm(0)
    for term in terms:
        result = term if result == IntImm(0) else BinOp("+", result, term)
    return result


def _constant_factor(term: Expr) -> tuple[Expr | None, int] | None:
    """term as (x, k) with term == x * k, or (None, k) for a constant; None otherwise."""
    if isinstance(term, IntImm):
        return (None, term.value)
    if isinstance(term, BinOp) and term.op == "*" and isinstance(term.b, IntImm):
        return (term.a, term.b.value)
    return None


def simplify(node: Node, ranges: Ranges | None = None, drop_unit_loops: bool = False) -> Node:
    """Fold constants, apply identities, and drop conditions that variable
    ranges (from enclosing loops, or `ranges`) settle. With drop_unit_loops,
    loops of one iteration are replaced by their body."""
    return _Simplifier(ranges, drop_unit_loops).visit(node)


class _HoistConditions(Rewriter):
    def visit_Loop(self, node: Loop) -> Stmt:
        body = self.visit(node.body)
        node = node if body is node.body else replace(node, body=body)
        # a parallel loop stays where the backends outline it
        if node.kind == "parallel" or not isinstance(body, If) or body.orelse is not None:
            return node
        outside, inside = [], []
        for term in conjuncts(body.cond):
            independent = node.var.name not in free_vars(term) and not find_all(term, Load)
            (outside if independent else inside).append(term)
        if not outside:
            return node
        then = If(all_of(*inside), body.then) if inside else body.then
        return If(all_of(*outside), replace(node, body=then))


def conjuncts(cond: Expr) -> list[Expr]:
    if isinstance(cond, BinOp) and cond.op == "&&":
        return conjuncts(cond.a) + conjuncts(cond.b)
    return [cond]


def hoist_conditions(node: Node) -> Node:
    """Move the terms of a loop body's condition that do not depend on the loop
    out of it, as far out as they stay independent: `for kh: for kw: if
    row_ok(kh) && col_ok(kw): S` becomes `for kh: if row_ok(kh): for kw: if
    col_ok(kw): S`, so a padding check runs once per row of taps, not once
    per multiply-add. Only a loop whose whole body is the condition (no
    else) gives it up, so a false condition still means the loop does
    nothing; terms that read memory stay where they are."""
    return _HoistConditions().visit(node)


def flat_index(buffer: Buffer, indices: tuple[Expr, ...]) -> Expr:
    """The element offset of buffer[indices], from the buffer's layout: each
    storage dimension contributes its index (i, i // block or i % block) times its stride."""
    index_of = dict(zip(buffer.axes, indices))
    offset: Expr = IntImm(0)
    stride = 1
    for dim in reversed(buffer.layout):
        index = index_of[dim.axis]
        block = dim.block or buffer.block(dim.axis)
        if dim.block:
            index = index % block
        elif block:
            index = index // block
        offset = offset + index * stride
        stride *= buffer.storage_extent(dim)
    return simplify(offset)




def linear_coefficient(expr: Expr, var: str) -> int | None:
    """k when expr = (expr at var = 0) + k * var through sums and constant products; else None."""
    if var not in free_vars(expr):
        return 0
    if expr == Var(var):
        return 1
    if isinstance(expr, BinOp) and expr.op in ("+", "-"):
        a, b = linear_coefficient(expr.a, var), linear_coefficient(expr.b, var)
        if a is None or b is None:
            return None
        return a + b if expr.op == "+" else a - b
    if isinstance(expr, BinOp) and expr.op == "*":
        for factor, constant in ((expr.a, expr.b), (expr.b, expr.a)):
            if isinstance(constant, IntImm):
                k = linear_coefficient(factor, var)
                return None if k is None else k * constant.value
    return None
