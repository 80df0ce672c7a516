"""The int8 multiply-accumulates that packed instructions run.

A dot loop is an innermost reduction over contiguous int8 elements whose
one statement adds a product of two int8 values (each less a constant,
such as a zero point) into an int32 accumulator:

    dot for ic.i in 0..8:
      acc[k] = acc[k] + (int32(x[.., ic.i, ..]) + 128) * int32(w[.., ic.i, ..])

Its meaning is the plain loop's; the kind says that a backend may run it as
packed dot products (on Arm: SMLAD over pairs of int16, or Helium's VMLADAV
over vectors). `match_dot` reads the pattern back or says why a loop is not
one; the schedule's `dot` step and the backends share it.

A vectorized loop of the same statement whose accumulator moves with the
loop, one element a lane, is a lane-wise multiply-accumulate (a depthwise
layer's channels; or output channels, each input element the same in every
lane): `match_lanes` reads it back, and C runs four such lanes as one
Helium vector of int32.
"""

from __future__ import annotations

from dataclasses import dataclass

from .nodes import INT8, INT32, BinOp, Cast, Expr, If, IntImm, Load, Loop, Store, all_of
from .printer import format_expr
from .simplify import flat_index, linear_coefficient
from .walk import free_vars

DOT_WIDTH = 4            # elements one packed step takes (a 32-bit word of int8); extents are multiples of it
MAC_LANES = 4            # int32 lanes of a 128-bit vector: the lanes one Helium multiply-accumulate takes
MAX_OFFSET = 32767 - 128  # an offset plus an int8 value must fit int16, the width of a packed product


@dataclass(frozen=True)
class Operand:
    """One factor of the product: `load` (an int8 element, contiguous along
    the loop, or for a lane-wise multiply-accumulate the same in every lane:
    `broadcast`) plus `offset`."""

    load: Load
    offset: int
    broadcast: bool = False


@dataclass(frozen=True)
class Dot:
    """acc[indices] = acc[indices] + (a + a.offset) * (b + b.offset), summed
    over the loop; `cond` (or None: the guards around the store, which do not
    depend on the loop, joined) guards the whole loop."""

    store: Store
    a: Operand
    b: Operand
    cond: Expr | None


def match_dot(loop: Loop) -> Dot | str:
    """The loop's multiply-accumulate, or a sentence saying why it is not one."""
    found = _match_mac(loop, moves=False)
    if isinstance(found, Dot) and loop.extent % DOT_WIDTH:
        return f"it has {loop.extent} iterations; expected a multiple of {DOT_WIDTH}"
    return found


def match_lanes(loop: Loop) -> Dot | str:
    """The loop's lane-wise multiply-accumulate (the accumulator, too,
    contiguous along it), or a sentence saying why it is not one."""
    return _match_mac(loop, moves=True)


def _match_mac(loop: Loop, moves: bool) -> Dot | str:
    var = loop.var.name
    body, guards = loop.body, []
    while isinstance(body, If) and body.orelse is None:
        if var in free_vars(body.cond):
            return f"its guard {format_expr(body.cond)} depends on '{var}'"
        body, guards = body.then, guards + [body.cond]
    cond = all_of(*guards) if guards else None
    if not isinstance(body, Store):
        return "its body is not one store"
    stride = linear_coefficient(flat_index(body.buffer, body.indices), var)
    if body.buffer.dtype != INT32 or stride != (1 if moves else 0):
        where = "moves with" if moves else "stays put along"
        return f"the store to '{body.buffer.name}' is not an int32 accumulator that {where} '{var}'"
    product = added_product(body)
    if product is None:
        return f"'{body.buffer.name}' is not added a product to"
    operands = [_operand(side, var, broadcast=moves) for side in (product.a, product.b)]
    for found in operands:
        if isinstance(found, str):
            return found
    if all(o.broadcast for o in operands):
        return "neither factor moves along it"
    a, b = sorted(operands, key=lambda o: o.broadcast)   # a broadcast factor second
    return Dot(body, a, b, cond)


def added_product(store: Store) -> BinOp | None:
    """The product a store adds into its own element (acc = acc + a * b), or None."""
    value, accumulator = store.value, Load(store.buffer, store.indices)
    if isinstance(value, BinOp) and value.op == "+" and accumulator in (value.a, value.b):
        product = value.b if value.a == accumulator else value.a
        if isinstance(product, BinOp) and product.op == "*":
            return product
    return None


def _operand(expr: Expr, var: str, broadcast: bool = False) -> Operand | str:
    """The factor, contiguous along var (or, where `broadcast`, the same for every var)."""
    offset = 0
    if isinstance(expr, BinOp) and expr.op == "+" and isinstance(expr.b, IntImm):
        expr, offset = expr.a, expr.b.value
    if not (isinstance(expr, Cast) and expr.type == INT32 and isinstance(expr.value, Load)
            and expr.value.buffer.dtype == INT8):
        return f"the factor {format_expr(expr)} is not an int8 element widened to int32 (plus a constant)"
    if abs(offset) > MAX_OFFSET:
        return f"the offset {offset} does not fit a 16-bit product with an int8 value"
    load = expr.value
    stride = linear_coefficient(flat_index(load.buffer, load.indices), var)
    if stride == 0 and broadcast:
        return Operand(load, offset, broadcast=True)
    if stride != 1:
        return (f"'{load.buffer.name}' is not contiguous along '{var}' (its elements are "
                f"{'not evenly' if stride is None else stride} apart)")
    return Operand(load, offset)
