"""What the IR holds for GPUs before any GPU backend renders it: loops bound
to blocks and threads, shared memory, barriers, cache_read; and parallel on
more than one loop. Each in the nodes, the printer, the verifier and the
schedule API, and the CPU backends' refusal naming what they cannot run."""

import numpy as np
import pytest

import convgen
from convgen import ir
from convgen.codegen import backend
from convgen.errors import CodegenError, ScheduleError
from convgen.schedule import Schedule
from convgen.target import host

CONV = {"name": "gpu", "op": "conv2d", "in_channels": 3, "out_channels": 8, "input_size": [6, 10],
        "kernel_size": 3, "padding": 1, "bias": True}


def chain(spec=CONV) -> Schedule:
    return Schedule.for_spec(convgen.load_spec(spec))


def gpu_schedule() -> Schedule:
    """A direct kernel as a GPU runs it: channel blocks to blocks, columns to threads, x staged in shared memory."""
    return (chain().split("oc", 4, tail="perfect").reorder("oc.o", "oh", "ow", "oc.i").bind("oc.o", "block.x")
            .bind("ow", "thread.x"))


def test_loops_bound_to_gpu_indices_print_with_their_axis():
    text = ir.format_func(gpu_schedule().func)
    assert "gpu_block.x for oc.o in 0..2:" in text and "gpu_thread.x for ow in 0..10:" in text


def test_a_loop_node_checks_kind_and_axis_together():
    body = ir.Store(ir.Buffer("y", ir.FLOAT32, ("W",), (4,), ir.plain_layout("W")), (ir.Var("i"),), ir.FloatImm(0.0))
    with pytest.raises(ValueError, match="a gpu_thread loop takes axis x, y or z; got ''"):
        ir.Loop(ir.Var("i"), 4, body, kind="gpu_thread")
    with pytest.raises(ValueError, match="a serial loop takes axis none; got 'x'"):
        ir.Loop(ir.Var("i"), 4, body, axis="x")


@pytest.mark.parametrize("make, words", [
    (lambda: chain().bind("ow", "warp.x"), ["index: expected one of block.x"]),
    (lambda: chain().bind("ic", "thread.x"), ["'ic' is a reduction loop"]),
    (lambda: chain().bind("oh", "thread.x").bind("ow", "thread.x"), ["'oh' is gpu_thread.x and nested with 'ow'"]),
    (lambda: chain().bind("oh", "thread.x").bind("ow", "block.x"), ["'ow' is inside a loop bound to GPU threads"]),
    (lambda: chain().parallel("oh").bind("ow", "block.x"), ["'oh' is parallel and nested with 'ow'"]),
    (lambda: chain().unroll("kw").bind("kw", "block.x"), ["already unrolled"]),
])
def test_bind_refusals(make, words):
    with pytest.raises(ScheduleError) as caught:
        make()
    assert all(w in str(caught.value) for w in words), str(caught.value)


@pytest.mark.parametrize("name", ["llvm", "c"])
def test_cpu_backends_refuse_gpu_loops_naming_them(name):
    func = gpu_schedule().func
    with pytest.raises(CodegenError, match=f"{'LLVM' if name == 'llvm' else 'C'} backend: loop oc.o is bound to a "
                                           f"GPU block index \\(gpu_block.x\\); a CPU backend cannot run it"):
        backend(name).emit(ir.split(func), host())


def test_cache_read_into_shared_memory_stages_the_tile_between_barriers():
    s = gpu_schedule().cache_read("x", "oc.o", scope="shared")
    text = ir.format_func(s.func)
    assert "shared x_shared: float32[N=1, C=3, H=8, W=12]" in text
    lines = [line.strip() for line in text.splitlines()]
    copy = lines.index("for x_shared_N in 0..1:")
    assert lines.count("barrier") == 2 and copy < lines.index("barrier") < lines.index("for oh in 0..6:")
    with pytest.raises(CodegenError, match="C backend: buffer x_shared is in GPU shared memory"):
        backend("c").emit(ir.split(chain().cache_read("x", "oc", scope="shared").func), host())
    with pytest.raises(CodegenError, match="LLVM backend: buffer x_shared is in GPU shared memory"):
        backend("llvm").emit(ir.split(chain().cache_read("x", "oc", scope="shared").func), host())
    stages = _two_nests(stages=False)
    with_barrier = ir.Func(stages.name, stages.params, ir.Seq((stages.body.body[0], ir.Barrier(), stages.body.body[1])))
    for name, label in (("llvm", "LLVM"), ("c", "C")):
        with pytest.raises(CodegenError, match=f"{label} backend: a barrier synchronizes the threads of a GPU block"):
            backend(name).emit(ir.split(with_barrier), host())


@pytest.mark.parametrize("target", ["llvm", "c"])
@pytest.mark.parametrize("at", ["oc", "oh", "ow.o"])
def test_cache_read_into_a_local_copy_keeps_results(target, at):
    """The copy and the re-pointed reads, run on the CPU, against the reference (padding guards included)."""
    s = chain().split("ow", 4).cache_read("x", at)
    assert "local x_local: float32[" in ir.format_func(s.func)
    result = convgen.check(convgen.build(CONV, target, schedule=s), 5)
    assert result.passed, result


@pytest.mark.parametrize("make, words", [
    (lambda: chain().cache_read("q", "oh"), ["'oh' reads no buffer named 'q'", "buffers read there: acc, b, w, x"]),
    (lambda: chain().cache_read("x", "oh", scope="texture"), ["scope: expected 'local' or 'shared'"]),
    (lambda: chain({**CONV, "input_size": [80, 80], "in_channels": 8}).cache_read("x", "oc"),
     ["the copy would hold 53792 elements; at most 4096"]),
])
def test_cache_read_refusals(make, words):
    with pytest.raises(ScheduleError) as caught:
        make()
    assert all(w in str(caught.value) for w in words), str(caught.value)


def _two_nests(stages: bool):
    """y = x + 1 and z = x * 2: two loop nests side by side, as two stages of a program or in one."""
    buffers = {n: ir.Buffer(n, ir.FLOAT32, ("W",), (64,), ir.plain_layout("W")) for n in "xyz"}
    i, j = ir.Var("i"), ir.Var("j")
    nests = (ir.Loop(i, 64, ir.Store(buffers["y"], (i,), ir.Load(buffers["x"], (i,)) + 1.0)),
             ir.Loop(j, 64, ir.Store(buffers["z"], (j,), ir.Load(buffers["x"], (j,)) * 2.0)))
    if stages:
        nests = (ir.Stage("add", nests[0]), ir.Stage("double", nests[1]))
    return ir.Func("stages", (buffers["x"], buffers["y"], buffers["z"]), ir.Seq(nests))


@pytest.mark.parametrize("stages", [True, False], ids=["two-stages", "one-stage"])
@pytest.mark.parametrize("name", ["llvm", "c"])
def test_parallel_on_two_loops_side_by_side(name, stages):
    """Each top-level nest is a function of its own (ir.split), with its own parallel region."""
    from convgen.schedule import parallel
    func = parallel(parallel(_two_nests(stages), "i"), "j")
    assert ir.format_func(func).count("parallel for") == 2
    program = ir.split(func)
    assert len(program.run) == 2
    chosen = backend(name)
    loaded = chosen.load(chosen.emit(program, host()), host())
    x = np.arange(64, dtype=np.float32)
    y, z = np.full(64, np.nan, np.float32), np.full(64, np.nan, np.float32)
    for stage in loaded.stages:
        stage.launch([x.ctypes.data, y.ctypes.data, z.ctypes.data], 2)
    np.testing.assert_array_equal(y, x + 1)
    np.testing.assert_array_equal(z, x * 2)


def test_parallel_still_refuses_nested_parallel_loops():
    with pytest.raises(ScheduleError, match="'oh' is parallel already and nested with 'ow'"):
        chain().parallel("oh").parallel("ow")


def test_the_cuda_renderer_is_a_few_hooks_on_the_c_emitter():
    """codegen/cuda.py: the C emitter's walk, with GPU loops, shared memory and barriers
    rendered by its hooks (the statements inside them are the C emitter's)."""
    from convgen.codegen.c import CLikeEmitter
    from convgen.codegen.cuda import CUDAEmitter, Launch

    assert issubclass(CUDAEmitter, CLikeEmitter)
    func = gpu_schedule().cache_read("x", "oc.o", scope="shared").func
    emitter = CUDAEmitter(func.name, "int")
    emitter.launch = Launch(func.name, (2, 1, 1), (10, 1, 1), 288 * 4)
    emitter.stmt(func.body, 1)
    text = "\n".join(emitter.lines)
    assert "{ const int oc_o = blockIdx.x;" in text and "{ const int ow = threadIdx.x;" in text
    assert "__shared__ float x_shared[288];" in text and text.count("__syncthreads();") == 2
