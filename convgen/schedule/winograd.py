"""Winograd convolution: F(m x m, 3 x 3) as three stages of the same IR.

For a 3x3 kernel, stride 1, each m x m tile of outputs is (Lavin & Gray, 2016)

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A

with d the (m + 2) x (m + 2) input tile, g the 3x3 kernel and (.) the
element-wise product. Over the channels the products become a matrix
product per transform point t: M[t] = U[t] V[t] with U[t] = (G g G^T)[t]
(output x input channels) and V[t] = (B^T d B)[t] (input channels x tiles).
F(2x2) multiplies 16 times per tile where direct convolution multiplies 36;
F(4x4) 36 times where direct multiplies 144, at the cost of larger rounding
error (its transforms hold 4, 5 and 8).

The `winograd` primitive rewrites the lowered direct convolution into:

    for ob (blocks of `channels` output channels), tb (blocks of `rows` tile rows):   # parallel here
      local V[t, th, tw, c], M[t, th, tw, oc]
      for in_th, in_tw, in_c:   V[:, th, tw, c] = B^T d B        (input transform, via D, R)
      for mm_t, mm_th, mm_tw, mm_oc:
        M[t, th, tw, oc] = sum over mm_ic of w[t, oc, ic] V[t, th, tw, ic]
      for out_th, out_tw, out_oc:  y tile = act(b + A^T M A)     (output transform, via Q)

The weights become the workspace buffer w_winograd[T, O, I] = G g G^T,
computed by the stage `transform_w` (its loops w_winograd.o and .i), which
reads only the weights and so belongs to the prepare step: bind runs it
once, and firmware baking runs it at build time. The transforms are
written out term by term with their zero coefficients dropped, rows first
into a small local buffer, then columns (2 x 6 x 6 x 6 products at most
instead of 6^4).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction as F

from .. import ir
from ..errors import ScheduleError
from .stages import require_unscheduled_data

# Lavin & Gray's matrices, points 0, 1, -1 (F(2, 3)) and 0, 1, -1, 2, -2 (F(4, 3)), plus infinity.
MATRICES = {
    2: {
        "BT": [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        "G": [[1, 0, 0], [F(1, 2), F(1, 2), F(1, 2)], [F(1, 2), F(-1, 2), F(1, 2)], [0, 0, 1]],
        "AT": [[1, 1, 1, 0], [0, 1, -1, -1]],
    },
    4: {
        "BT": [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        "G": [[F(1, 4), 0, 0], [F(-1, 6), F(-1, 6), F(-1, 6)], [F(-1, 6), F(1, 6), F(-1, 6)],
              [F(1, 24), F(1, 12), F(1, 6)], [F(1, 24), F(-1, 12), F(1, 6)], [0, 0, 1]],
        "AT": [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    },
}
TILES = tuple(MATRICES)


def transform_name(tile: int) -> str:
    return f"winograd F({tile}x{tile},3x3)"


TILE_OF = {transform_name(t): t for t in TILES}


@dataclass(frozen=True)
class _DirectConv:
    """What the rewrite needs from the lowered direct convolution."""

    x: ir.Buffer
    w: ir.Buffer
    y: ir.Buffer
    batch: ir.Expr           # the batch index of the output store: Var n, or 0
    pad_top: int
    pad_left: int
    init: ir.Expr            # the accumulator's first value, in terms of Var oc
    finish: ir.Expr          # the stored value, in terms of the accumulator load
    acc: ir.Load


def winograd(func: ir.Func, tile: int = 4, rows: int = 1, channels: int = 0) -> ir.Func:
    """Compute a 3x3 stride-1 convolution by Winograd's F(tile x tile, 3x3) (oneDNN, TVM: winograd).

    The stages run per block of `rows` tile rows and `channels` output
    channels (0: all), so that the transformed input and products of one
    block (local buffers V and M) stay in cache between the stages. The
    block loops `ob` (output channels) and `tb` (tile rows) are the ones to
    parallelize: few large blocks of rows suit layers of many channels and
    few pixels, where each block of rows reads all the weights, while
    blocks of channels split the weights (each recomputes the input
    transform, which is cheap there). The weights are read transformed,
    w_winograd[T, O, I], from the workspace; the stage `transform_w` fills
    it (in the prepare step, once when bound).

    It requires: the first step of the schedule (the lowered direct loop
    nest); float32; a 3x3 kernel, stride 1, dilation 1, one group, zero or
    no padding, no fused pool; tile 2 or 4; rows dividing the tile rows and
    channels dividing the output channels.

    rewrite winograd(4, 2) of a 56x56 layer (14 x 14 tiles of 4x4):
        for oc, oh, ow: y = act(b + sum x * w)   ->   for ob in 0..1: for tb in 0..7: (input
                                                        transform, products, output transform) of 2 tile rows
    """
    if tile not in TILES:
        raise ScheduleError("winograd", f"tile: expected one of {', '.join(map(str, TILES))} "
                                        f"(F(2x2,3x3) or F(4x4,3x3)); got {tile!r}")
    if func.prefix:   # the rewrite matches and makes the names lowering gives; the prefix goes back on after
        return ir.with_prefix(winograd(ir.with_prefix(func, ""), tile, rows, channels), func.prefix)
    conv = _match_direct_conv(func)
    out_rows, out_cols = conv.y.shape[2], conv.y.shape[3]
    tile_rows, tile_cols = -(-out_rows // tile), -(-out_cols // tile)
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1 or tile_rows % rows:
        divisors = [d for d in range(1, tile_rows + 1) if tile_rows % d == 0]
        raise ScheduleError("winograd", f"rows: expected a number of tile rows dividing {tile_rows}; got {rows!r}",
                            f"use one of {divisors}")
    in_channels, out_channels = conv.x.shape[1], conv.y.shape[1]
    channels = channels or out_channels
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1 or out_channels % channels:
        divisors = [d for d in range(1, out_channels + 1) if out_channels % d == 0]
        raise ScheduleError("winograd", f"channels: expected a number of output channels dividing "
                                        f"{out_channels} (0 for all); got {channels!r}", f"use one of {divisors}")
    points = tile + 2
    # V stored tile by tile, its points side by side: the input transform then writes each tile's
    # points to consecutive vectors rather than one page apart each, and the products still read a
    # point's tiles along rows of channels (3x3 256->256 at 14x14, two threads: 0.315 -> 0.258 ms)
    v = _local("V", ("T", "TH", "TW", "C"), (points * points, rows, tile_cols, in_channels),
               storage=("TH", "TW", "T", "C"))
    m = _local("M", ("T", "TH", "TW", "O"), (points * points, rows, tile_cols, channels))
    u = ir.Buffer("w_winograd", conv.w.dtype, ("T", "O", "I"), (points * points, out_channels, in_channels),
                  ir.plain_layout(("T", "O", "I")), scope="workspace", transform=transform_name(tile))
    channel_block, row_block = ir.Var("ob"), ir.Var("tb")
    stages = ir.Seq((
        _input_transform(conv, v, row_block, tile, rows),
        _products(u, v, m, channel_block * channels),
        _output_transform(conv, m, row_block, tile, rows, channel_block * channels),
    ))
    body: ir.Stmt = ir.Loop(channel_block, out_channels // channels, ir.Loop(
        row_block, tile_rows // rows, ir.Allocate(v, ir.Allocate(m, stages))))
    if isinstance(conv.batch, ir.Var):
        body = ir.Loop(conv.batch, conv.x.shape[0], body)
    transform = ir.Stage("transform_w", _weight_transform(conv.w, u, tile))
    program = replace(func, workspace=(u,), body=ir.Seq((transform, ir.Stage("compute", body))))
    return ir.simplify(program)


def _weight_transform(w: ir.Buffer, u: ir.Buffer, tile: int) -> ir.Stmt:
    """u[a * P + b, o, i] = sum over k, l of G[a][k] G[b][l] w[o, i, k, l], zero terms
    dropped (the coefficients are exact fractions, rounded once to float32)."""
    g = MATRICES[tile]["G"]
    points = len(g)
    o, i = ir.Var("w_winograd.o"), ir.Var("w_winograd.i")
    stores = []
    for a in range(points):
        for b in range(points):
            terms = [ir.FloatImm(float(g[a][k] * g[b][l])) * ir.Load(w, (o, i, ir.IntImm(k), ir.IntImm(l)))
                     for k in range(3) for l in range(3) if g[a][k] * g[b][l] != 0]
            value = terms[0]
            for term in terms[1:]:
                value = value + term
            stores.append(ir.Store(u, (ir.IntImm(a * points + b), o, i), value))
    return ir.Loop(o, w.shape[0], ir.Loop(i, w.shape[1], ir.Seq(tuple(stores))))


def _local(name: str, axes: tuple[str, ...], shape: tuple[int, ...], storage: tuple[str, ...] = ()) -> ir.Buffer:
    """A local float32 buffer, stored row-major in the order `storage` (default: axes)."""
    return ir.Buffer(name, ir.FLOAT32, axes, shape, ir.plain_layout(storage or axes), scope="local")


# ---------------------------------------------------------------------------
# Recognising the direct convolution
# ---------------------------------------------------------------------------

def _refuse(reason: str, hint: str = "") -> ScheduleError:
    return ScheduleError("winograd", reason, hint)


def _match_direct_conv(func: ir.Func) -> _DirectConv:
    params = {p.name: p for p in func.params}
    if "w" not in params:
        raise _refuse("the kernel has no weights w: winograd is for a convolution")
    if func.prefix + "pool" in {s.name for s in func.stages}:
        raise _refuse("the layer has a fused pool (stage pool); Winograd's output transform writes y directly")
    require_unscheduled_data(func, "winograd", "write winograd as the schedule's first step")
    x, w, y = params["x"], params["w"], params["y"]
    if x.dtype != ir.FLOAT32:
        raise _refuse(f"the layer is {x.dtype}; Winograd's transforms are for float32 layers")
    if w.shape[2:] != (3, 3):
        raise _refuse(f"the kernel is {w.shape[2]}x{w.shape[3]}; Winograd F(m, 3x3) needs 3x3")
    if w.shape[1] != x.shape[1]:
        raise _refuse(f"the layer has groups ({w.shape[1]} of {x.shape[1]} input channels per output channel); "
                      f"expected one group")
    loops = []
    node = func.body
    while isinstance(node, ir.Loop):
        loops.append(node)
        node = node.body
    names = [loop.var.name for loop in loops]
    # lowering drops loops of one iteration, putting 0 for their variables
    if not isinstance(node, ir.Allocate) or names != [n for n in ("n", "oc", "oh", "ow") if n in names]:
        raise _refuse(f"expected the lowered direct convolution (loops oc, oh, ow around an accumulator); "
                      f"found loops {', '.join(names) or 'none'}",
                      "write winograd as the schedule's first step; a fused pool is not supported")
    acc = node.buffer
    parts = node.body.body if isinstance(node.body, ir.Seq) else ()
    if len(parts) != 3 or not isinstance(parts[0], ir.Store) or not isinstance(parts[2], ir.Store):
        raise _refuse("expected an accumulator set, summed over ic, kh, kw and stored")
    init, reduction, store = parts
    update, guard = _innermost_update(reduction)
    pixel = next((l for l in ir.find_all(update.value, ir.Load) if l.buffer.name == "x"), None)
    if pixel is None or pixel.indices[1] != (ir.Var("ic") if x.shape[1] > 1 else ir.IntImm(0)):
        raise _refuse("the input is not read at channel ic", "expected one group")
    if any(isinstance(i, ir.Call) for i in pixel.indices):
        raise _refuse("the input is read through reflect or replicate padding", "Winograd here supports zero padding")
    pad_top = _unit_offset(pixel.indices[2], "oh", "kh")
    pad_left = _unit_offset(pixel.indices[3], "ow", "kw")
    padding_checks = {ir.Call("in_range", (pixel.indices[2], ir.IntImm(x.shape[2]))),
                      ir.Call("in_range", (pixel.indices[3], ir.IntImm(x.shape[3])))}
    if guard is not None and not set(ir.conjuncts(guard)) <= padding_checks:
        raise _refuse("the input is read under a guard other than zero padding's")
    if guard is None and (pad_top or pad_left):
        raise _refuse("the padded input is read without zero padding's guard (reflect or replicate padding)",
                      "Winograd here supports zero padding")
    outputs = tuple(ir.Var(n) if n in names else ir.IntImm(0) for n in ("oc", "oh", "ow"))
    if store.buffer.name != "y" or store.indices[1:] != outputs:
        raise _refuse("expected the output stored at [n, oc, oh, ow]")
    return _DirectConv(x, w, y, store.indices[0], pad_top, pad_left, init.value, store.value,
                       ir.Load(acc, (ir.IntImm(0),)))


def _innermost_update(reduction: ir.Stmt) -> tuple[ir.Store, ir.Expr | None]:
    names = []
    node = reduction
    while isinstance(node, ir.Loop):
        names.append(node.var.name)
        node = node.body
    if names not in (["ic", "kh", "kw"], ["kh", "kw"]):
        raise _refuse(f"expected the reduction loops ic, kh, kw; found {', '.join(names)}")
    guard = None
    if isinstance(node, ir.If) and node.orelse is None:
        guard, node = node.cond, node.then
    if not isinstance(node, ir.Store):
        raise _refuse("expected one accumulating store inside the reduction")
    return node, guard


def _unit_offset(index: ir.Expr, out: str, tap: str) -> int:
    """p for an index out + tap - p (stride 1, dilation 1); refuses anything else."""
    if not ir.free_vars(index) <= {out, tap}:
        raise _refuse(f"the input index {ir.format_expr(index)} depends on more than {out} and {tap}")

    def at(o: int, t: int):
        value = ir.simplify(ir.substitute(index, {out: ir.IntImm(o), tap: ir.IntImm(t)}))
        return value.value if isinstance(value, ir.IntImm) else None

    base = at(0, 0)
    # an output loop of one iteration was dropped in lowering: then only the tap varies
    probes = [(1, 0), (0, 1), (3, 2), (7, 1)] if out in ir.free_vars(index) else [(0, 1), (0, 2)]
    if base is None or any(at(o, t) != base + o + t for o, t in probes):
        raise _refuse(f"the input index {ir.format_expr(index)} is not {out} + {tap} - padding",
                      "Winograd needs stride 1 and dilation 1")
    return -base


# ---------------------------------------------------------------------------
# The three stages
# ---------------------------------------------------------------------------

def _weighted_sum(terms: list[tuple[F, ir.Expr]]) -> ir.Expr:
    """sum of c * e over the terms with c != 0; coefficients +-1 add or subtract."""
    total: ir.Expr | None = None
    for coefficient, expr in terms:
        if coefficient == 0:
            continue
        scaled = expr if abs(coefficient) == 1 else ir.FloatImm(float(abs(coefficient))) * expr
        if total is None:
            total = scaled if coefficient > 0 else ir.FloatImm(0.0) - scaled
        else:
            total = total + scaled if coefficient > 0 else total - scaled
    return total if total is not None else ir.FloatImm(0.0)


def _input_transform(conv: _DirectConv, v: ir.Buffer, block: ir.Var, tile: int, rows: int) -> ir.Stmt:
    """V[:, th, tw, c] = B^T d B: the tile d gathered into D (zero outside the
    input), its rows transformed into R, then its columns into V."""
    th, tw, c = ir.Var("in_th"), ir.Var("in_tw"), ir.Var("in_c")
    height, width = conv.x.shape[2], conv.x.shape[3]
    points, channels = tile + 2, v.shape[3]
    bt = MATRICES[tile]["BT"]
    d = _local("D", ("K", "C"), (points * points, channels))
    r = _local("R", ("K", "C"), (points * points, channels))
    top = (block * rows + th) * tile - conv.pad_top
    left = tw * tile - conv.pad_left

    def pixel(p: int, q: int) -> ir.Expr:
        row, col = top + p, left + q
        inside = ir.all_of(ir.Call("in_range", (row, ir.IntImm(height))), ir.Call("in_range", (col, ir.IntImm(width))))
        # clamped so that the address is valid; the select gives padding's zero
        load = ir.Load(conv.x, (conv.batch, c, ir.Call("clamp", (row, ir.IntImm(height))),
                                ir.Call("clamp", (col, ir.IntImm(width)))))
        return ir.Select(inside, load, ir.FloatImm(0.0))

    at = lambda buffer, i, j: ir.Load(buffer, (ir.IntImm(i * points + j), c))
    gather = [ir.Store(d, (ir.IntImm(p * points + q), c), pixel(p, q)) for p in range(points) for q in range(points)]
    by_rows = [ir.Store(r, (ir.IntImm(p * points + j), c), _weighted_sum([(bt[j][q], at(d, p, q)) for q in range(points)]))
               for p in range(points) for j in range(points)]
    by_columns = [ir.Store(v, (ir.IntImm(i * points + j), th, tw, c),
                           _weighted_sum([(bt[i][p], at(r, p, j)) for p in range(points)]))
                  for i in range(points) for j in range(points)]
    body = ir.Seq(tuple(gather + by_rows + by_columns))
    return ir.Allocate(d, ir.Allocate(r, _loops([(th, rows), (tw, v.shape[2]), (c, channels)], body)))


def _products(u: ir.Buffer, v: ir.Buffer, m: ir.Buffer, first_channel: ir.Expr) -> ir.Stmt:
    """M[t, th, tw, oc] = sum over ic of w[t, first_channel + oc, ic] V[t, th, tw, ic]."""
    t, th, tw, oc, ic = (ir.Var(n) for n in ("mm_t", "mm_th", "mm_tw", "mm_oc", "mm_ic"))
    acc = _local("mm_acc", ("i",), (1,))
    zero = (ir.IntImm(0),)
    total = ir.Load(acc, zero)
    update = ir.Store(acc, zero, total + ir.Load(u, (t, first_channel + oc, ic)) * ir.Load(v, (t, th, tw, ic)))
    body = ir.Allocate(acc, ir.Seq((
        ir.Store(acc, zero, ir.FloatImm(0.0)),
        ir.Loop(ic, u.shape[2], update, role="reduction"),
        ir.Store(m, (t, th, tw, oc), total),
    )))
    return _loops([(t, m.shape[0]), (th, m.shape[1]), (tw, m.shape[2]), (oc, m.shape[3])], body)


def _output_transform(conv: _DirectConv, m: ir.Buffer, block: ir.Var, tile: int, rows: int,
                      first_channel: ir.Expr) -> ir.Stmt:
    """y tile = act(b + A^T M A): M's rows transformed into Q, then Q's columns
    into the outputs, each finished as the direct kernel finished its sum."""
    th, tw, oc = ir.Var("out_th"), ir.Var("out_tw"), ir.Var("out_oc")
    points, channels = tile + 2, m.shape[3]
    at_matrix = MATRICES[tile]["AT"]
    q = _local("Q", ("K", "O"), (points * tile, channels))
    by_rows = [ir.Store(q, (ir.IntImm(i * tile + s), oc),
                        _weighted_sum([(at_matrix[s][j], ir.Load(m, (ir.IntImm(i * points + j), th, tw, oc)))
                                       for j in range(points)]))
               for i in range(points) for s in range(tile)]
    channel = first_channel + oc
    init = ir.substitute(conv.init, {"oc": channel})
    height, width = conv.y.shape[2], conv.y.shape[3]
    stores = []
    for r in range(tile):
        for s in range(tile):
            row, col = (block * rows + th) * tile + r, tw * tile + s
            total = _weighted_sum([(at_matrix[r][i], ir.Load(q, (ir.IntImm(i * tile + s), oc))) for i in range(points)])
            value = _replace_expr(ir.substitute(conv.finish, {"oc": channel, "oh": row, "ow": col}), conv.acc,
                                  init + total)
            store = ir.Store(conv.y, (conv.batch, channel, row, col), value)
            stores.append(ir.If(ir.all_of(ir.lt(row, height), ir.lt(col, width)), store))
    body = ir.Seq(tuple(by_rows + stores))
    return ir.Allocate(q, _loops([(th, rows), (tw, m.shape[2]), (oc, channels)], body))


class _ReplaceExpr(ir.Rewriter):
    def __init__(self, old: ir.Expr, new: ir.Expr):
        self.old, self.new = old, new

    def visit(self, node):
        return self.new if node == self.old else super().visit(node)


def _replace_expr(expr: ir.Expr, old: ir.Expr, new: ir.Expr) -> ir.Expr:
    return _ReplaceExpr(old, new).visit(expr)


def _loops(loops: list[tuple[ir.Var, int]], body: ir.Stmt) -> ir.Stmt:
    for var, extent in reversed(loops):
        body = ir.Loop(var, extent, body)
    return body
