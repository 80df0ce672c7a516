"""Moving an input's zero point out of the multiply-accumulate: fold_zero_point."""

from __future__ import annotations

from dataclasses import replace

from .. import ir
from ..errors import ScheduleError
from . import stages


def fold_zero_point(func: ir.Func, buffer: str = "x") -> ir.Func:
    """Fold the constant added to each of an input's elements in the
    convolution's multiply-accumulate (an int8 layer's zero point, less) into
    the bias: sum (x + c) * w = sum x * w + c * sum w, exactly in int32. A
    stage `fold_b` computes b_folded[o] = b[o] + c * (the sum of output
    channel o's weights) in the prepare step (once per set of weights, or at
    build time where weights are baked); the accumulators start from
    b_folded, and each product takes the input as stored. A packed dot
    product then needs no offset: one instruction less a pair on the DSP
    extension, sixteen int8 lanes instead of eight on Helium.

    It requires: an int8 convolution with a bias whose every multiply-add
    into an accumulator reads `buffer` plus one constant and the weights as
    they are, with no test of the kernel's taps around it (the padding's:
    skipping a padded tap would leave its share of c * sum w in the bias;
    so, a layer without padding).

    rewrite (c = 128):
        acc[0] = b[oc]                              acc[0] = b_folded[oc]
        acc[0] = acc[0] + (int32(x[..]) + 128)  ->  acc[0] = acc[0] + int32(x[..]) * int32(w[..])
                          * int32(w[..])        stage fold_b: b_folded[o] = b[o] + 128 * sum int32(w[o, ..])
    """
    source = stages.parameter(func, buffer, "fold_zero_point")
    read = stages.current(func, buffer).name
    params = {p.name: p for p in func.params}
    if "b" not in params or "w" not in params:
        raise ScheduleError("fold_zero_point", "the layer has no bias to fold the zero point into",
                            "a layer with bias: true (TFLite's int8 convolutions have one)")
    finder = _MultiplyAdds(read)
    finder.visit(func.body)
    if not finder.found:
        raise ScheduleError("fold_zero_point", f"no multiply-add reads '{source.name}' plus a constant")
    if finder.refused:
        raise ScheduleError("fold_zero_point", finder.refused, "fold the zero point of layers without padding")
    offsets = set(finder.found)
    if len(offsets) != 1:
        raise ScheduleError("fold_zero_point", f"the multiply-adds add different constants to "
                                               f"'{source.name}': {sorted(offsets)}")
    offset = offsets.pop()
    folded = replace(params["b"], name=f"{func.prefix}b_folded", scope="workspace", weight=False)
    if any(b.name == folded.name for b in func.workspace):
        raise ScheduleError("fold_zero_point", "the zero point is folded already")
    rewritten = [ir.Stage(s.name, _Fold(read, params["b"], folded).visit(s.body)) for s in func.stages]
    stage = ir.Stage(f"{func.prefix}fold_b", _fold_nest(params["w"], params["b"], folded, offset))
    ordered = stages.insert_input_stage(func, rewritten, stage, weight=True)
    return ir.with_stages(replace(func, workspace=func.workspace + (folded,)), ordered)


def _is_offset_read(expr: ir.Expr, buffer: str) -> int | None:
    """c where expr is int32(buffer[..]) + c, else None."""
    if (isinstance(expr, ir.BinOp) and expr.op == "+" and isinstance(expr.b, ir.IntImm)
            and isinstance(expr.a, ir.Cast) and isinstance(expr.a.value, ir.Load)
            and expr.a.value.buffer.name == buffer):
        return expr.b.value
    return None


class _MultiplyAdds(ir.Rewriter):
    """Collects the constants added to `buffer` in multiply-adds, and the
    first reason one cannot be folded (a guard on the reduction's taps)."""

    def __init__(self, buffer: str):
        self.buffer, self.found, self.refused = buffer, [], ""
        self.reductions: list[str] = []
        self.guards: list[ir.Expr] = []

    def visit_Loop(self, node: ir.Loop) -> ir.Stmt:
        self.reductions.append(node.var.name if node.role == "reduction" else "")
        self.visit(node.body)
        self.reductions.pop()
        return node

    def visit_If(self, node: ir.If) -> ir.Stmt:
        self.guards.append(node.cond)
        self.visit(node.then)
        self.guards.pop()
        if node.orelse is not None:
            self.visit(node.orelse)
        return node

    def visit_Store(self, node: ir.Store) -> ir.Stmt:
        product = ir.added_product(node)
        offset = None if product is None else next(
            (c for c in (_is_offset_read(product.a, self.buffer), _is_offset_read(product.b, self.buffer))
             if c is not None), None)
        if offset is None:
            return node
        self.found.append(offset)
        taps = {name for name in self.reductions if name}
        for guard in self.guards:
            if ir.free_vars(guard) & taps and not self.refused:
                self.refused = (f"the multiply-add into '{node.buffer.name}' is guarded by "
                                f"{ir.format_expr(guard)}, a test of the kernel's taps (the padding)")
        return node


class _Fold(ir.Rewriter):
    """The accumulators start from b_folded; the products read the input as stored."""

    def __init__(self, buffer: str, bias: ir.Buffer, folded: ir.Buffer):
        self.buffer, self.bias, self.folded = buffer, bias, folded

    def visit_Load(self, node: ir.Load) -> ir.Expr:
        return ir.Load(self.folded, node.indices) if node.buffer == self.bias else node

    def visit_BinOp(self, node: ir.BinOp) -> ir.Expr:
        if _is_offset_read(node, self.buffer) is not None:
            return node.a
        return self.generic_visit(node)


def _fold_nest(weights: ir.Buffer, bias: ir.Buffer, folded: ir.Buffer, offset: int) -> ir.Stmt:
    """for o: b_folded[o] = b[o]; for every other weight axis: b_folded[o] += offset * int32(w[o, ..])."""
    o = ir.Var(f"{folded.name}.o")
    taps = [ir.Var(f"{folded.name}.{axis.lower()}") for axis in weights.axes[1:]]
    out = ir.Load(folded, (o,))
    term = ir.binop("*", ir.IntImm(offset, ir.INT32), ir.Cast(ir.Load(weights, (o, *taps)), ir.INT32))
    body: ir.Stmt = ir.Store(folded, (o,), ir.binop("+", out, term))
    for var, extent in reversed(list(zip(taps, weights.shape[1:]))):
        body = ir.Loop(var, extent, body, role="reduction")
    return ir.Loop(o, weights.shape[0], ir.Seq((ir.Store(folded, (o,), ir.Load(bias, (o,))), body)))
