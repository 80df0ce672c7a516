"""IR nodes, the simplifier and the printer."""

import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from convgen import ir
from convgen.ir import BinOp, Buffer, IntImm, Var
from convgen.lower import lower
from convgen.spec import load_spec

i, j = Var("i"), Var("j")
AXES = ("N", "C", "H", "W")
X = Buffer("x", ir.FLOAT32, AXES, (2, 3, 4, 5), ir.parse_layout("NHWC", AXES))


def test_nodes_are_immutable_and_structural():
    a, b = i + 1, i + 1
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.op = "-"


def test_type_errors_are_caught_when_building():
    with pytest.raises(TypeError):
        BinOp("+", i, ir.FloatImm(1.0))
    with pytest.raises(TypeError):
        ir.Load(X, (i, j, i, ir.FloatImm(0.0)))
    with pytest.raises(ValueError):
        ir.Load(X, (i, j))
    with pytest.raises(ValueError):
        ir.Loop(i, 4, ir.Seq(()), kind="sideways")


def test_flat_index_follows_the_layout():
    # NHWC order over shape N=2, C=3, H=4, W=5: strides N=60, H=15, W=3, C=1
    offset = ir.flat_index(X, (IntImm(1), IntImm(2), IntImm(3), IntImm(4)))
    assert offset == IntImm(60 + 2 + 45 + 12)
    nchw = dataclasses.replace(X, layout=ir.parse_layout("NCHW", AXES))
    assert ir.flat_index(nchw, (IntImm(1), IntImm(2), IntImm(3), IntImm(4))) == IntImm(60 + 40 + 15 + 4)


@pytest.mark.parametrize("expr, expected", [
    (i + 0, i), (i * 1, i), (i * 0, IntImm(0)), (IntImm(2) + 3, IntImm(5)), ((i + 2) + 3, i + 5),
    ((i - 2) + 2, i), (i - i, IntImm(0)), ((i * 2) * 3, i * 6), (i // 1, i), (IntImm(7) // 2, IntImm(3)),
    (IntImm(-7) // 2, IntImm(-4)), (IntImm(-7) % 3, IntImm(2)),
    ((i * 8 + 16) // 8, i + 2), ((i * 8 + 16) % 8, IntImm(0)), ((i * 6 + j) % 3, j % 3),
])
def test_simplify_algebra(expr, expected):
    assert ir.simplify(expr) == expected


def test_simplify_uses_loop_ranges():
    ranges = {"i": (0, 3)}
    assert ir.simplify(ir.lt(i, 4), ranges) == ir.BoolImm(True)
    assert ir.simplify(ir.le(0, i - 1), ranges) == BinOp("<=", IntImm(0), i + (-1))  # undecided
    assert ir.simplify(ir.lt(i + 4, 4), ranges) == ir.BoolImm(False)
    assert ir.simplify(i // 4, ranges) == IntImm(0)
    assert ir.simplify(i % 8, ranges) == i
    assert ir.simplify(ir.maximum(i, 0), ranges) == i
    assert ir.simplify(ir.minimum(i, 3), ranges) == i
    assert ir.simplify((j * 8 + i) // 8, ranges) == j        # a blocked index splits back apart
    assert ir.simplify((j * 8 + i) % 8, ranges) == i
    assert ir.simplify(ir.Call("reflect", (i, IntImm(4))), ranges) == i
    assert ir.simplify(ir.Call("clamp", (i - 1, IntImm(4))), ranges) != i - 1



def _evaluate(expr, env):
    """Integer value of an index expression, with Python's floor // and %."""
    if isinstance(expr, IntImm):
        return expr.value
    if isinstance(expr, Var):
        return env[expr.name]
    a, b = _evaluate(expr.a, env), _evaluate(expr.b, env)
    return {"+": a + b, "-": a - b, "*": a * b, "//": a // b if b else None, "%": a % b if b else None}[expr.op]


def test_simplify_sees_a_split_index_inside_a_larger_block():
    ranges = {"i": (0, 15), "j": (0, 7)}
    assert ir.simplify((j * 16 + i) // 32, ranges) == j // 2      # the group of a 16-lane channel vector
    assert ir.free_vars(ir.simplify((j * 16 + i) % 32, ranges)) == {"i", "j"}


@settings(max_examples=300, deadline=None)
@given(m=st.integers(1, 12), d=st.integers(1, 6), extra=st.integers(-3, 3), q_lo=st.integers(-20, 20),
       q_span=st.integers(0, 9), r_span=st.integers(0, 11), op=st.sampled_from(["//", "%"]), data=st.data())
def test_simplify_keeps_the_value_of_block_division(m, d, extra, q_lo, q_span, r_span, op, data):
    """Whatever the simplifier does to (q*k + r + extra) // c or % c, the value stays
    the same at every point of the variables' ranges."""
    k = m * data.draw(st.integers(1, 4))
    c = m * d
    q, r = Var("q"), Var("r")
    ranges = {"q": (q_lo, q_lo + q_span), "r": (0, r_span)}
    expr = BinOp(op, q * k + r + extra, IntImm(c))
    simpler = ir.simplify(expr, ranges)
    for qv in range(q_lo, q_lo + q_span + 1):
        for rv in range(0, r_span + 1):
            env = {"q": qv, "r": rv}
            assert _evaluate(simpler, env) == _evaluate(expr, env), (expr, simpler, env)

def test_blocked_layout_addresses():
    # NCHW4c over C=6 (rounded up to 8), H=2, W=3: [N, C/4, H, W, 4c]
    buf = Buffer("x", ir.FLOAT32, AXES, (1, 6, 2, 3), ir.parse_layout("NCHW4c", AXES))
    assert buf.storage_shape == (1, 2, 2, 3, 4) and buf.layout_name == "NCHW4c"
    offset = ir.flat_index(buf, (IntImm(0), IntImm(5), IntImm(1), IntImm(2)))
    assert offset == IntImm(1 * 24 + 1 * 12 + 2 * 4 + 1)


@pytest.mark.parametrize("text, problem", [("NCH", "each of NCHW once"), ("NCHW8x", "must name one of"),
                                           ("NCHW8", "not followed"), ("NCHWc4c", "is not one of")])
def test_bad_layouts_are_refused(text, problem):
    with pytest.raises(ValueError, match=problem):
        ir.parse_layout(text, AXES)


def test_simplify_drops_settled_guards_and_unit_loops():
    store = ir.Store(Buffer("y", ir.FLOAT32, ("i",), (4,), ir.plain_layout("i")), (i,), ir.FloatImm(1.0))
    loop = ir.Loop(i, 4, ir.If(ir.all_of(ir.le(0, i), ir.lt(i, 4)), store))
    assert ir.simplify(loop) == ir.Loop(i, 4, store)
    unit = ir.Loop(j, 1, ir.Store(store.buffer, (j,), ir.FloatImm(1.0)))
    assert ir.simplify(unit) == unit  # kept: a schedule may still name the loop
    assert ir.simplify(unit, drop_unit_loops=True) == ir.Store(store.buffer, (IntImm(0),), ir.FloatImm(1.0))


def test_hoist_conditions_moves_each_check_to_the_outermost_loop_it_depends_on():
    k = Var("k")
    y = Buffer("y", ir.FLOAT32, ("i", "j"), (4, 4), ir.plain_layout(("i", "j")))
    row, column = ir.lt(k + i, 5), ir.lt(j + k, 4)
    store = ir.Store(y, (i, j), ir.Load(y, (i, j)) + ir.FloatImm(1.0))
    nest = ir.Loop(i, 4, ir.Loop(k, 3, ir.Loop(j, 4, ir.If(ir.all_of(row, column), store))))
    assert ir.hoist_conditions(nest) == ir.Loop(i, 4, ir.Loop(k, 3, ir.If(row, ir.Loop(j, 4, ir.If(column, store)))))


def test_hoist_conditions_leaves_what_it_cannot_move():
    y = Buffer("y", ir.FLOAT32, ("i",), (4,), ir.plain_layout(("i",)))
    store = ir.Store(y, (i,), ir.FloatImm(1.0))
    guarded = ir.If(ir.lt(j, 2), store)
    with_else = ir.Loop(i, 4, ir.If(ir.lt(j, 2), store, store))   # a false condition still does something
    beside = ir.Loop(i, 4, ir.Seq((guarded, store)))               # the loop does more than the check guards
    parallel = ir.Loop(j, 4, ir.Loop(i, 4, guarded, kind="parallel"))  # backends outline it as it is
    reads = ir.Loop(i, 4, ir.If(ir.lt(ir.Load(y, (IntImm(0),)), ir.FloatImm(0.5)), store))  # y changes in the loop
    for node in (with_else, beside, parallel, reads):
        assert ir.hoist_conditions(node) == node


def test_float_arithmetic_is_not_reassociated():
    a = ir.Load(Buffer("a", ir.FLOAT32, ("i",), (4,), ir.plain_layout("i")), (i,))
    expr = (a + ir.FloatImm(1.0)) + ir.FloatImm(2.0)
    assert ir.simplify(expr) == expr


def test_rewriter_shares_unchanged_subtrees():
    func = lower(load_spec({"name": "c", "op": "conv2d", "in_channels": 2, "out_channels": 2,
                            "input_size": [4, 4], "kernel_size": 3}))
    assert ir.Rewriter().visit(func) is func


def test_printer_golden(golden):
    spec = load_spec({"name": "edge", "op": "conv2d", "in_channels": 2, "out_channels": 2, "groups": 2,
                      "input_size": [4, 4], "kernel_size": 3, "padding": 1, "activation": "relu",
                      "layout": {"input": "NHWC", "output": "NCHW"}})
    golden("edge_lowered.txt", ir.format_func(lower(spec)))


def test_lowering_without_padding_has_no_guards():
    func = lower(load_spec({"name": "v", "op": "conv2d", "in_channels": 2, "out_channels": 2,
                            "input_size": [6, 6], "kernel_size": 3, "stride": 2}))
    assert ir.find_all(func, ir.If) == []
    padded = lower(load_spec({"name": "v", "op": "conv2d", "in_channels": 2, "out_channels": 2,
                              "input_size": [6, 6], "kernel_size": 3, "padding": 1}))
    assert len(ir.find_all(padded, ir.If)) == 1
