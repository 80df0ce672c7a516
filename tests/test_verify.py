"""The IR verifier: each rule, a kernel that breaks it, and the message that names it.
(Every schedule step in every test runs it too: schedule.apply_step verifies what it returns.)"""

import pytest

import convgen
from convgen import ir
from convgen.ir import Var
from convgen.lower import lower

i, j = Var("i"), Var("j")
X = ir.Buffer("x", ir.FLOAT32, ("W",), (4,), ir.plain_layout("W"))
Y = ir.Buffer("y", ir.FLOAT32, ("W",), (4,), ir.plain_layout("W"))
T = ir.Buffer("t", ir.FLOAT32, ("W",), (4,), ir.plain_layout("W"), scope="local")


def func(body, params=(X, Y)):
    return ir.Func("k", tuple(params), body)


def copy(index=i, source=X):
    return ir.Store(Y, (index,), ir.Load(source, (index,)))


def problems(body, params=(X, Y)):
    with pytest.raises(ir.VerifyError) as caught:
        ir.verify(func(body, params), "test")
    return str(caught.value)


def test_a_well_formed_kernel_passes_and_comes_back():
    kernel = func(ir.Loop(i, 4, copy()))
    assert ir.verify(kernel) is kernel


def test_every_lowered_spec_file_is_well_formed():
    from conftest import spec_paths
    for path in spec_paths():
        ir.verify(lower(convgen.load_spec(path)), path.name)


def test_two_loops_with_one_name():
    assert "two loops are named 'i'" in problems(ir.Seq((ir.Loop(i, 4, copy()), ir.Loop(i, 4, copy()))))


def test_a_variable_outside_its_loop():
    assert "variable 'j' is used outside any loop that binds it" in problems(ir.Loop(i, 4, copy(j)))


def test_a_buffer_used_without_being_declared():
    assert "read of 't', which is neither a parameter, a workspace buffer nor allocated" in problems(ir.Loop(i, 4, copy(source=T)))
    ir.verify(func(ir.Allocate(T, ir.Loop(i, 4, copy(source=T)))))   # allocated around the use: fine


def test_a_buffer_used_with_another_shape_than_declared():
    other = ir.Buffer("x", ir.FLOAT32, ("W",), (8,), ir.plain_layout("W"))
    assert "read of 'x' with another shape" in problems(ir.Loop(i, 4, copy(source=other)))


def test_an_index_the_bounds_prove_outside_its_axis():
    assert "index W spans 1..4, outside 0..3" in problems(ir.Loop(i, 4, copy(i + 1)))
    guarded = ir.Loop(i, 4, ir.If(ir.lt(i + 1, 4), copy(i + 1)))
    ir.verify(func(guarded))   # under a guard: the guard's business


def test_an_empty_loop():
    assert "loop i has extent 0" in problems(ir.Loop(i, 0, copy()))


def test_a_store_to_a_constant_table():
    table = ir.Buffer("tab", ir.FLOAT32, ("W",), (4,), ir.plain_layout("W"), scope="constant", values=(0.0,) * 4)
    assert "store to constant table 'tab'" in problems(ir.Loop(i, 4, ir.Store(table, (i,), ir.FloatImm(1.0))))


def test_a_barrier_inside_a_thread_loop():
    body = ir.Loop(i, 4, ir.Seq((copy(), ir.Barrier())), kind="gpu_thread", axis="x")
    assert "a barrier inside a loop bound to GPU threads" in problems(body)


def test_shared_memory_allocated_inside_a_thread_loop():
    shared = ir.Buffer("s", ir.FLOAT32, ("W",), (4,), ir.plain_layout("W"), scope="shared")
    body = ir.Loop(i, 4, ir.Allocate(shared, copy()), kind="gpu_thread", axis="x")
    assert "shared buffer 's' is allocated inside a loop bound to GPU threads" in problems(body)


def test_a_primitive_that_left_a_bad_kernel_is_named(monkeypatch):
    """apply_step verifies each result: a broken primitive is caught at the step that broke it."""
    from convgen import schedule
    spec = convgen.load_spec({"name": "v", "op": "conv2d", "in_channels": 1, "out_channels": 2,
                              "input_size": [5, 5], "kernel_size": 3})
    twice = lambda func, loop: ir.Func(func.name, func.params, ir.Seq((func.body, func.body)))
    monkeypatch.setitem(schedule.PRIMITIVES, "unroll", twice)
    with pytest.raises(ir.VerifyError, match=r"after unroll\('ow'\): the IR is not well formed: two loops are named"):
        schedule.apply_schedule(lower(spec), [schedule.Step("unroll", ("ow",))])


def test_stages_have_unique_names_and_stand_at_the_top():
    twice = ir.Seq((ir.Stage("s", ir.Loop(i, 4, copy())), ir.Stage("s", ir.Loop(j, 4, copy(j)))))
    assert "two stages are named 's'" in problems(twice)
    nested = ir.Loop(i, 4, ir.Stage("inner", copy()))
    assert "stage 'inner' stands inside another statement" in problems(nested)


def test_a_workspace_buffer_is_declared_with_the_kernel():
    scratch = ir.Buffer("t", ir.FLOAT32, ("W",), (4,), ir.plain_layout("W"), scope="workspace")
    body = ir.Seq((ir.Stage("fill", ir.Loop(i, 4, ir.Store(scratch, (i,), ir.Load(X, (i,))))),
                   ir.Stage("use", ir.Loop(j, 4, copy(j, source=scratch)))))
    assert "neither a parameter, a workspace buffer" in problems(body)
    ir.verify(ir.Func("k", (X, Y), body, workspace=(scratch,)))   # declared: fine
