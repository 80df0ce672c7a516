"""The passes between scheduling and codegen: listed in one place, each doing
its one rewrite, every kernel verified after each, and shown by `convgen show -v`."""

import subprocess
import sys

import convgen
from convgen import ir
from convgen.driver import plan
from convgen.passes import PASSES, mark_transposes, run_passes
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
    assert [p.name for p in PASSES] == ["hoist-conditions", "mark-transposes"]
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
    assert "== pass: hoist-conditions ==" in out and "== pass: mark-transposes ==" in out
    assert "transposed for" in out.split("== after the passes: what the backends render ==")[1]
