"""The passes between scheduling and codegen: listed in one place, each doing
its one rewrite, every kernel verified after each, and shown by `convgen show -v`."""

import subprocess
import sys

import pytest

import convgen
from convgen import ir
from convgen.driver import plan
from convgen.passes import PASSES, epilogue_in_tile, mark_transposes, run_passes, share_parallel_work
from convgen.schedule import Schedule
from convgen.target import host

from conftest import SPECS

WRITE_BACK = {"name": "wb", "op": "conv2d", "in_channels": 3, "out_channels": 8, "input_size": [4, 8],
              "kernel_size": 3, "padding": 1}


def _write_back_schedule(spec):
    """A tile of channel vectors written back to NCHW columns a vector at a time."""
    return (Schedule.for_spec(spec).split("oc", 8, tail="perfect").split("ow", 4, tail="perfect")
            .reorder("oc.o", "oh", "ow.o", "ow.i", "oc.i").cache_write("ow.o")
            .reorder("ic", "kh", "kw", "ow.i", "oc.i").unroll("ow.i").vectorize("oc.i")
            .reorder("ow.i.init", "oc.i.init").vectorize("oc.i.init")
            .reorder("oc.i.out", "ow.i.out").vectorize("ow.i.out"))


def test_the_passes_are_listed_in_order_with_a_reason():
    assert [p.name for p in PASSES] == ["share-parallel-work", "epilogue-in-tile", "hoist-conditions",
                                        "mark-transposes"]
    assert all(p.why for p in PASSES)


def test_mark_transposes_marks_the_write_back_and_nothing_else():
    spec = convgen.load_spec(WRITE_BACK)
    func = _write_back_schedule(spec).func
    marked = mark_transposes(func)
    kinds = {loop.var.name: loop.kind for loop in ir.find_all(marked.body, ir.Loop)}
    assert kinds["oc.i.out"] == "transposed"
    assert [n for n, k in kinds.items() if k == "transposed"] == ["oc.i.out"]
    assert mark_transposes(Schedule.for_spec(spec).func) == Schedule.for_spec(spec).func   # nothing to mark


def test_backends_render_a_transposed_loop_without_deciding_it():
    """The LLVM backend transposes only where the pass marked the loop; left unmarked, it gathers."""
    from convgen.codegen.llvm import emit_llvm
    func = _write_back_schedule(convgen.load_spec(WRITE_BACK)).func
    transposed, gathered = emit_llvm(mark_transposes(func), host()), emit_llvm(func, host())
    assert transposed.count("shufflevector") > gathered.count("shufflevector") + 8   # the transpose's rounds
    assert gathered.count("insertelement") > transposed.count("insertelement")        # lane by lane


def test_run_passes_keeps_each_kernel_and_verifies_it():
    func = _write_back_schedule(convgen.load_spec(WRITE_BACK)).func
    final, history = run_passes(func)
    assert [name for name, _ in history] == [p.name for p in PASSES] and final is history[-1][1]


def test_the_driver_renders_what_the_passes_leave():
    chosen = plan(convgen.load_spec(WRITE_BACK), host(), _write_back_schedule(convgen.load_spec(WRITE_BACK)))
    assert chosen.func == chosen.passes[-1][1] and chosen.scheduled == chosen.history[-1][1]


def test_show_verbose_prints_the_kernel_after_each_pass():
    result = subprocess.run([sys.executable, "-m", "convgen.cli", "show", str(SPECS / "layers" / "resnet_3x3_64.yaml"),
                             "-v"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("schedule: the default for the target, on host")
    assert all(f"== pass: {p.name} ==" in out for p in PASSES)
    assert "transposed for" in out.split("== after the passes: what the backends render ==")[1]


BATCHED = {"name": "batched", "op": "conv2d", "batch": 2, "in_channels": 3, "out_channels": 5, "input_size": [6, 7],
           "kernel_size": 3, "padding": 1}


def _parallel_loops(func):
    return [loop for loop in ir.find_all(func.body, ir.Loop) if loop.kind == "parallel"]


@pytest.mark.parametrize("make", [
    lambda: Schedule.for_spec(convgen.load_spec(BATCHED)).parallel("oc"),                     # under the batch loop
    lambda: Schedule.for_spec(convgen.load_spec(BATCHED)).parallel("oh").cache_write("oc"),   # a tile's three copies
], ids=["under-batch", "tile-copies"])
def test_share_parallel_work_makes_one_parallel_loop_around_each_nest(make):
    schedule = make()
    before = _parallel_loops(schedule.func)
    shared = share_parallel_work(schedule.func)
    after = _parallel_loops(shared)
    assert len(after) == 1 and shared.body is after[0], ir.format_func(shared)
    assert after[0].var == before[0].var and after[0].extent == before[0].extent
    assert {loop.var.name for loop in ir.find_all(after[0].body, ir.Loop)} >= {"n"}   # the batch runs inside
    for target in ("llvm", "c"):
        for threads in (1, 2, 3):
            kernel = convgen.build(BATCHED, target, schedule=schedule, threads=threads)
            result = convgen.check(kernel, threads)
            assert result.passed, (target, threads, result)


def test_share_parallel_work_leaves_a_nest_it_cannot_share_and_llvm_refuses_it():
    from convgen.codegen.llvm import emit_llvm
    from convgen.errors import CodegenError
    two = Schedule.for_spec(convgen.load_spec(BATCHED)).parallel("oc").peel("oc", 1, 1).func   # still one loop
    assert len(_parallel_loops(share_parallel_work(two))) == 1
    i, j = ir.Var("i"), ir.Var("j")
    x = ir.Buffer("x", ir.FLOAT32, ("W",), (8,), ir.plain_layout("W"))
    y = ir.Buffer("y", ir.FLOAT32, ("W",), (8,), ir.plain_layout("W"))
    uneven = ir.Func("uneven", (x, y), ir.Loop(ir.Var("k"), 2, ir.Seq((
        ir.Loop(i, 4, ir.Store(y, (i,), ir.Load(x, (i,))), kind="parallel"),
        ir.Loop(j, 3, ir.Store(y, (j + 4,), ir.Load(x, (j + 4,))), kind="parallel")))))
    assert share_parallel_work(uneven) == uneven
    with pytest.raises(CodegenError, match="parallel loops i, j are not one loop around the whole stage function"):
        emit_llvm(uneven, host())


@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_epilogue_in_tile_applies_the_activation_to_the_tile_before_a_plain_write_back(activation):
    spec = convgen.load_spec({**WRITE_BACK, "activation": activation})
    func = _write_back_schedule(spec).func
    moved = epilogue_in_tile(func)
    tile = next(a for a in ir.find_all(moved.body, ir.Allocate) if a.buffer.name == "acc")
    init, reduce, epilogue, write_back = tile.body.body
    (store,) = ir.find_all(write_back, ir.Store)
    assert isinstance(store.value, ir.Load) and store.value.buffer.name == "acc"   # a copy
    (in_place,) = ir.find_all(epilogue, ir.Store)
    assert in_place.buffer.name == "acc" and ir.find_all(in_place.value, ir.BinOp)   # max (and min)
    assert [l.kind for l in ir.find_all(epilogue, ir.Loop)] == [l.kind for l in ir.find_all(init, ir.Loop)]
    assert epilogue_in_tile(_write_back_schedule(convgen.load_spec(WRITE_BACK)).func) == \
        _write_back_schedule(convgen.load_spec(WRITE_BACK)).func   # no activation: nothing to move
    for target in ("llvm", "c"):
        result = convgen.check(convgen.build(spec, target, schedule=_write_back_schedule(spec)), 11)
        assert result.passed, (target, result)


def test_with_the_epilogue_in_the_tile_llvm_applies_relu_to_channel_vectors_not_transposed_columns():
    """The write-back's vectors are 4 columns (<4 x float>); the tile's are 8 channels."""
    from convgen.codegen.llvm import emit_llvm
    spec = convgen.load_spec({**WRITE_BACK, "activation": "relu"})
    func = _write_back_schedule(spec).func
    after = emit_llvm(run_passes(func)[0], host())
    before = emit_llvm(mark_transposes(func), host())
    assert "llvm.maxnum.v8f32" in after and "llvm.maxnum.v4f32" not in after
    assert "llvm.maxnum.v4f32" in before


def test_int8_requantization_stays_in_the_write_back():
    """Its result is narrower than the int32 tile, so it cannot be stored back into it."""
    spec = convgen.load_spec({**WRITE_BACK, "dtype": "int8", "quantization": {
        "input": {"scale": 0.05, "zero_point": 3}, "output": {"scale": 0.1, "zero_point": -2},
        "weight_scales": 0.01}})
    func = Schedule.for_spec(spec).split("ow", 4).cache_write("ow.o").func
    assert epilogue_in_tile(func) == func
