"""Loop-shaping primitives: split, tile, reorder, fuse, unroll, peel.

Each takes a kernel and returns a new one; it checks its requirements first
and raises ScheduleError naming the one that failed. Loops are named; new
loops get names derived from old ones (ow -> ow.o, ow.i), which later steps use.
"""

from __future__ import annotations

from dataclasses import replace

from .. import ir
from ..errors import ScheduleError
from .nest import (ancestors, describe_stmt, find_loop, guard_stores, loop_names, perfect_chain, replace_loop,
                   require_new_names, require_serial)

TAILS = ("guard", "peel", "perfect")
MAX_UNROLL = 64


def _positive_int(primitive: str, name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ScheduleError(primitive, f"{name}: expected a positive int; got {value!r}")
    return value


def split(func: ir.Func, loop: str, factor: int, tail: str = "guard") -> ir.Func:
    """Split a loop into an outer and an inner loop of `factor` iterations (Halide, TVM: split).

    It requires: the loop exists and is serial; factor >= 1; tail is one of
    guard (the last outer iteration checks the index), peel (a separate tail
    loop `<loop>.t` runs the leftover iterations) or perfect (refused unless
    factor divides the extent).

    With peel, the loops inside the tail copy are renamed with a `.t` suffix
    (and a number, should that name be taken).

    rewrite (ow: 0..10, factor 4, guard):
        for ow in 0..10:            for ow.o in 0..3:
          S(ow)              ->       for ow.i in 0..4:
                                        if ow.o * 4 + ow.i < 10: S(ow.o * 4 + ow.i)
    """
    target = find_loop(func, loop, "split")
    require_serial(target, "split")
    factor = _positive_int("split", "factor", factor)
    if tail not in TAILS:
        raise ScheduleError("split", f"tail: expected one of {', '.join(TAILS)}; got {tail!r}")
    extent = target.extent
    if tail == "perfect" and extent % factor:
        divisors = [d for d in range(2, min(extent, 64) + 1) if extent % d == 0]
        raise ScheduleError("split", f"tail 'perfect' needs a factor dividing the extent {extent} of "
                                     f"'{loop}'; {factor} does not",
                            f"use tail 'guard' or 'peel', or a factor among {divisors}")
    outer, inner, rest = ir.Var(f"{loop}.o"), ir.Var(f"{loop}.i"), ir.Var(f"{loop}.t")
    require_new_names(func, [outer.name, inner.name] + ([rest.name] if tail == "peel" else []), "split")
    index = outer * factor + inner

    def rewrite(node: ir.Loop) -> ir.Stmt:
        body = ir.substitute(node.body, {loop: index})
        role = node.role
        if tail == "peel":
            main = ir.Loop(outer, extent // factor, ir.Loop(inner, factor, body, role=role), role=role)
            if extent % factor == 0:
                return main
            leftover = ir.substitute(node.body, {loop: rest + (extent // factor) * factor})
            renamed = _rename_loops(leftover, ".t", set(loop_names(func)) | {outer.name, inner.name, rest.name})
            return ir.Seq((main, ir.Loop(rest, extent % factor, renamed, role=role)))
        if extent % factor:
            body = guard_stores(body, ir.lt(index, extent))
        return ir.Loop(outer, -(-extent // factor), ir.Loop(inner, factor, body, role=role), role=role)

    return replace_loop(func, loop, rewrite)


def _rename_loops(stmt: ir.Stmt, suffix: str, taken: set[str]) -> ir.Stmt:
    """Give the loops of a copied statement new names (name + suffix, then a
    number if that is taken), so every loop name stays unique."""
    names = {}
    for loop in ir.find_all(stmt, ir.Loop):
        candidate, number = loop.var.name + suffix, 2
        while candidate in taken:
            candidate, number = f"{loop.var.name}{suffix}{number}", number + 1
        taken.add(candidate)
        names[loop.var.name] = ir.Var(candidate)
    return ir.substitute(stmt, names)


def reorder(func: ir.Func, *loops: str) -> ir.Func:
    """Permute loops of one perfect nest into the order given, outermost first (TVM: reorder).

    It requires: each loop exists, none twice; they lie on one path of the
    nest, and from the outermost to the innermost of them every loop's body
    is exactly the next loop (a perfect nest); a vectorized loop stays
    innermost. Loops of the nest that are not named keep their places.

    rewrite reorder(kw, kh):
        for kh in 0..3:             for kw in 0..3:
          for kw in 0..3:    ->       for kh in 0..3:
            S                           S
    """
    if len(loops) == 1 and isinstance(loops[0], (list, tuple)):
        loops = tuple(loops[0])
    if len(loops) < 2:
        raise ScheduleError("reorder", f"expected at least two loops; got {list(loops)}")
    if len(set(loops)) != len(loops):
        raise ScheduleError("reorder", f"a loop is named twice in {list(loops)}")
    for name in loops:
        find_loop(func, name, "reorder")
    outermost = min(loops, key=lambda n: len(ancestors(func, n)))
    chain = perfect_chain(find_loop(func, outermost, "reorder"))
    chain_names = [c.var.name for c in chain]
    missing = [n for n in loops if n not in chain_names]
    if missing:
        inner = chain[-1]
        why = (f"'{missing[0]}' is not in the perfect nest under '{outermost}' "
               f"(which ends at '{inner.var.name}', whose body is {describe_stmt(inner.body)})")
        alternative = ("cache_write first, to move the accumulator out of the nest"
                       if isinstance(inner.body, (ir.Allocate, ir.Seq)) else "")
        raise ScheduleError("reorder", why, alternative)
    last = max(chain_names.index(n) for n in loops)
    chain = chain[:last + 1]
    slots = [i for i, c in enumerate(chain) if c.var.name in loops]
    by_name = {c.var.name: c for c in chain}
    order = list(chain)
    for slot, name in zip(slots, loops):
        order[slot] = by_name[name]
    body = chain[-1].body
    for node in order:
        innermost = node is order[-1] and not ir.find_all(body, (ir.Loop, ir.Allocate))
        if node.kind == "vectorized" and not innermost:
            raise ScheduleError("reorder", f"'{node.var.name}' is vectorized and must stay innermost",
                                "reorder before vectorizing")
    for node in reversed(order):
        body = replace(node, body=body)
    return replace_loop(func, outermost, lambda _: body)


def tile(func: ir.Func, a: str, b: str, fa: int, fb: int, tail: str = "guard") -> ir.Func:
    """Split two directly nested loops and put both inner loops inside (TVM: tile).

    It requires: what split(a, fa) and split(b, fb) require, and that b is
    directly inside a.

    rewrite tile(oh, ow, 2, 4):
        for oh:                     for oh.o: for ow.o:
          for ow:          ->         for oh.i in 0..2: for ow.i in 0..4:
            S                           S
    """
    outer = find_loop(func, a, "tile")
    if not (isinstance(outer.body, ir.Loop) and outer.body.var.name == b):
        raise ScheduleError("tile", f"'{b}' must be directly inside '{a}'", f"reorder so that '{b}' follows '{a}'")
    func = split(func, a, fa, tail)
    func = split(func, b, fb, tail)
    return reorder(func, f"{a}.o", f"{b}.o", f"{a}.i", f"{b}.i")


def _prefixed(prefix: str, name: str) -> str:
    """A name a step gives, in a kernel lowered with a name prefix: prefixed like its other loops."""
    return name if name.startswith(prefix) else prefix + name


def _joined(prefix: str, a: str, b: str) -> str:
    """`<a>_<b>`, the prefix once (the steps then name it as they would without one)."""
    return prefix + a[len(prefix):] + "_" + b[len(prefix):] if a.startswith(prefix) and b.startswith(prefix) \
        else f"{a}_{b}"


def fuse(func: ir.Func, a: str, b: str, name: str = "") -> ir.Func:
    """Merge a loop and the loop directly inside it into one loop, `name` or
    by default `<a>_<b>` (TVM: fuse; Halide's fuse names it).

    It requires: both loops exist and are serial, and b is exactly a's body;
    the name is new. The fused loop is a reduction loop if either of them was.

    rewrite fuse(oh, ow) with extents 4 and 5:
        for oh in 0..4:             for oh_ow in 0..20:
          for ow in 0..5:   ->        S(oh_ow // 5, oh_ow % 5)
            S(oh, ow)
    """
    outer, inner = find_loop(func, a, "fuse"), find_loop(func, b, "fuse")
    require_serial(outer, "fuse")
    require_serial(inner, "fuse")
    if outer.body is not inner and outer.body != inner:
        raise ScheduleError("fuse", f"'{b}' must be the whole body of '{a}'", f"reorder so that '{b}' follows '{a}'")
    fused = ir.Var(_prefixed(func.prefix, name) if name else _joined(func.prefix, a, b))
    require_new_names(func, [fused.name], "fuse")
    body = ir.substitute(inner.body, {a: fused // inner.extent, b: fused % inner.extent})
    role = "spatial" if outer.role == inner.role == "spatial" else "reduction"
    return replace_loop(func, a, lambda _: ir.Loop(fused, outer.extent * inner.extent, body, role=role))


def unroll(func: ir.Func, loop: str) -> ir.Func:
    """Mark a loop to be unrolled: backends write its body once per iteration (Halide, TVM: unroll).

    It requires: the loop is serial and has at most 64 iterations.

    rewrite:
        for kw in 0..3: S(kw)   ->   unrolled for kw in 0..3: S(kw)     (emitted as S(0); S(1); S(2))
    """
    target = find_loop(func, loop, "unroll")
    require_serial(target, "unroll")
    if target.extent > MAX_UNROLL:
        raise ScheduleError("unroll", f"'{loop}' has {target.extent} iterations; at most {MAX_UNROLL} are unrolled",
                            f"split it first, e.g. split({loop}, 8) and unroll {loop}.i")
    if any(l.kind == "parallel" for l in ir.find_all(target.body, ir.Loop)):
        raise ScheduleError("unroll", f"'{loop}' contains a parallel loop")
    return replace_loop(func, loop, lambda node: replace(node, kind="unrolled"))


def peel(func: ir.Func, loop: str, front: int, back: int) -> ir.Func:
    """Run the first `front` and the last `back` iterations of a loop as copies of
    their own (`<loop>.f`, `<loop>.b`) so that the loop in between, which keeps
    the name, meets no border: padding checks its indices settle fold away
    there (TVM: loop partition). Apply it late: steps after it see the copies'
    inner loops under new names (suffix .f or .b). A parallel loop stays one
    loop, so threads share its range as before: its body branches to the
    copies, and each branch knows its part of the range, so checks fold
    away in the middle one just the same.

    It requires: the loop is serial or parallel, and front + back < its extent.

    rewrite (ow.o: 0..4, front 1, back 1):
        for ow.o in 0..4: S(ow.o)   ->   for ow.o.f in 0..1: S(ow.o.f)
                                         for ow.o in 0..2: S(ow.o + 1)      (no border checks left)
                                         for ow.o.b in 0..1: S(ow.o.b + 3)
        parallel for oh in 0..4: S(oh)   ->   parallel for oh in 0..4:
                                                if oh < 1: S.f(oh)
                                                else if oh < 3: S(oh)       (no border checks left)
                                                else: S.b(oh)
    """
    target = find_loop(func, loop, "peel")
    if target.kind != "parallel":
        require_serial(target, "peel")
    front, back = (_positive_int("peel", name, v) if v else 0 for name, v in (("front", front), ("back", back)))
    if front + back >= target.extent:
        raise ScheduleError("peel", f"'{loop}' has {target.extent} iterations; peeling {front} + {back} "
                                    f"leaves none in between")
    first, last = ir.Var(f"{loop}.f"), ir.Var(f"{loop}.b")
    require_new_names(func, [first.name, last.name], "peel")
    taken = set(loop_names(func)) | {first.name, last.name}

    def branches(node: ir.Loop) -> ir.Stmt:
        var, body = node.var, node.body
        if back:
            body = ir.If(ir.BinOp("<", var, ir.IntImm(node.extent - back)), body,
                         _rename_loops(node.body, ".b", taken))
        if front:
            body = ir.If(ir.BinOp("<", var, ir.IntImm(front)), _rename_loops(node.body, ".f", taken), body)
        return replace(node, body=body)

    if target.kind == "parallel":
        return ir.simplify(replace_loop(func, loop, branches))

    def rewrite(node: ir.Loop) -> ir.Stmt:
        var = node.var
        middle = replace(node, extent=node.extent - front - back,
                         body=ir.substitute(node.body, {loop: var + front}) if front else node.body)
        parts = []
        if front:
            copy = _rename_loops(ir.substitute(node.body, {loop: first}), ".f", taken)
            parts.append(replace(node, var=first, extent=front, body=copy))
        parts.append(middle)
        if back:
            copy = _rename_loops(ir.substitute(node.body, {loop: last + (node.extent - back)}), ".b", taken)
            parts.append(replace(node, var=last, extent=back, body=copy))
        return ir.Seq(tuple(parts))

    return ir.simplify(replace_loop(func, loop, rewrite))
