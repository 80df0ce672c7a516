"""The CUDA backend: emitted kernels run by the emulator (templates/cuda/emulator.h)
against the reference, the emulator's barriers, the renderer's refusals, and the
emitted code compiled by nvcc where it is installed."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convgen
from convgen import ir
from convgen.codegen.cuda import CUDABackend, emit_cuda, runner
from convgen.driver import emit, plan
from convgen.errors import CodegenError, ScheduleError
from convgen.native import nvcc_compile
from convgen.reference import reference
from convgen.schedule import Schedule
from convgen.schedule.gpu import channel_tile, column_tile, direct, first_loops, gpu_recipe, shared_tile
from convgen.target import load_gpu_target

from conftest import spec_paths
from strategies import quantized_specs, specs

SM80 = load_gpu_target("sm_80")
CONV = {"name": "gpu", "op": "conv2d", "in_channels": 3, "out_channels": 8, "input_size": [6, 10],
        "kernel_size": 3, "padding": 1, "bias": True}
NO_NVCC = "nvcc is not installed here (the CUDA toolkit); the emulator tests run without it"
ON_GPU = runner() != "emulator"
NO_GPU = ("no CUDA GPU here (or no driver, nvcc or cuda-bindings), so kernels run on the emulator; "
          "scripts/gpu_check.sh runs these on a machine with one")


def _assert_matches(kernel, seed):
    result = convgen.check(kernel, seed)
    assert result.passed, (f"max error {result.max_abs_error} > {result.max_allowed}, "
                           f"{result.unwritten} unwritten\n{kernel.spec}\n{kernel.source}")


@pytest.mark.parametrize("path", spec_paths(), ids=lambda p: p.stem)
def test_every_spec_runs_emulated_and_matches_the_reference(path):
    """Emulated here; on a machine with a GPU, on the GPU (test_gpu_* say so)."""
    kernel = convgen.build(path, "cuda", cache=False)
    assert kernel.device.startswith("on the GPU" if ON_GPU else "emulated")
    assert kernel.schedule_source.startswith("default")
    _assert_matches(kernel, np.random.SeedSequence().entropy)


# 120 random specs in all (every padding mode, stride, dilation, groups, depthwise, pooling, int8)
@settings(max_examples=50, deadline=None)
@given(spec=specs(), seed=st.integers(0, 2**32 - 1))
def test_random_specs_with_the_default_gpu_schedule(spec, seed):
    _assert_matches(convgen.build(spec, "cuda", cache=False), seed)


@settings(max_examples=20, deadline=None)
@given(spec=quantized_specs(), seed=st.integers(0, 2**32 - 1))
def test_random_int8_specs_with_the_default_gpu_schedule_bit_for_bit(spec, seed):
    _assert_matches(convgen.build(spec, "cuda", cache=False), seed)


@st.composite
def gpu_schedules(draw, spec):
    """A random legal GPU schedule of the families schedule/gpu.py builds: any block
    size (a warp multiple or not), a channel tile of any size dividing the channels,
    a shared tile (implicit GEMM) staging any number of input channels at a time."""
    threads = draw(st.sampled_from([1, 7, 32, 64, 96, 128, 256, 512, 1024]))
    firsts = first_loops(Schedule.for_spec(spec))
    tiles = [t for t in (2, 3, 4, 8) if spec.is_conv and spec.out_channels % t == 0 and spec.out_channels > t]
    s = Schedule.for_spec(spec)
    family = draw(st.sampled_from(["direct", "channel tile", "column tile", "shared tile"]))
    if family == "shared tile" and spec.is_conv and spec.groups == 1:
        try:
            s = shared_tile(s, spec, draw(st.integers(1, spec.in_channels)), draw(st.sampled_from([1, 2, 4])))
            return _with_pool(draw, s, spec, firsts)
        except ScheduleError:   # a copy past 4096 elements, or an index cache_read cannot bound (reflect)
            pass
    has_columns = any(loop.var.name == "ow" for loop in ir.find_all(s.func.body, ir.Loop))  # lowering drops 1-loops
    if family == "column tile" and spec.is_conv and has_columns:
        s = column_tile(s, firsts[0], draw(st.integers(2, 5)), threads)
    elif family != "direct" and tiles:
        s = channel_tile(s, firsts[0], draw(st.sampled_from(tiles)), threads)
    else:
        s = direct(s, firsts[0], threads)
    return _with_pool(draw, s, spec, firsts)


def _with_pool(draw, s, spec, firsts):
    if len(firsts) > 1:
        s = direct(s, firsts[1], draw(st.sampled_from([32, 100, 256])))
    return s


@settings(max_examples=50, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_random_specs_with_random_gpu_schedules(data, seed):
    spec = data.draw(specs())
    schedule = data.draw(gpu_schedules(spec))
    _assert_matches(convgen.build(spec, "cuda", schedule=schedule, cache=False), seed)


def _staged_schedule() -> Schedule:
    """A block of threads that copies x into shared memory together, one column
    each, and then reads its neighbours' columns: it needs the barrier after the copy."""
    return (Schedule.for_spec(convgen.load_spec(CONV)).split("oc", 4, tail="perfect")
            .reorder("oc.o", "oh", "ow", "oc.i").bind("oc.o", "block.x").bind("ow", "thread.x")
            .cache_read("x", "oc.o", scope="shared").bind("x_shared_W", "thread.x"))


def _run(files, spec, inputs):
    loaded = CUDABackend(emulate=True).load(files, SM80)
    out = np.full(spec.output_shape, np.nan, np.float32)
    arrays = [inputs["x"], inputs["w"], inputs["b"], out]
    loaded.stages[0].launch([a.ctypes.data for a in arrays], 1)
    return out


def test_the_emulator_keeps_barriers_and_shows_the_race_without_them():
    spec = convgen.load_spec(CONV)
    rng = np.random.default_rng(7)
    inputs = {name: rng.standard_normal(shape).astype(np.float32)
              for name, shape in (("x", spec.input_shape), ("w", spec.weight_shape), ("b", (8,)))}
    expected = reference(spec, **inputs)
    files = emit_cuda(ir.split(_staged_schedule().func), SM80)
    assert files.source.count("__syncthreads();") == 2 and "__shared__ float x_shared[288];" in files.source
    np.testing.assert_allclose(_run(files, spec, inputs), expected, rtol=1e-5, atol=1e-5)
    racy = replace(files, source=files.source.replace("__syncthreads();", ";"))
    assert not np.allclose(_run(racy, spec, inputs), expected, rtol=1e-3, atol=1e-3, equal_nan=False)


def test_the_emulator_refuses_a_barrier_that_not_every_thread_reaches():
    files = emit_cuda(ir.split(_staged_schedule().func), SM80)
    # threads past the first return before the barrier after the copy
    source = files.source.replace("__syncthreads();", "if (threadIdx.x > 0) return; __syncthreads();", 1)
    spec = convgen.load_spec(CONV)
    inputs = {"x": np.ones(spec.input_shape, np.float32), "w": np.ones(spec.weight_shape, np.float32),
              "b": np.ones(8, np.float32)}
    with pytest.raises(CodegenError, match="CUDA emulator: launch of gpu failed: some threads of a block returned "
                                           "while others wait at __syncthreads\\(\\) \\(block 0,0,0\\)"):
        _run(replace(files, source=source), spec, inputs)


def test_bound_loops_read_the_cuda_indices_and_shorter_ones_check_theirs():
    """Indices in 32 bits, as every buffer is far below 2**30 elements."""
    text = emit_cuda(ir.split(_staged_schedule().func), SM80).source
    assert "{ const int oc_o = blockIdx.x;" in text
    assert "{ const int x_shared_W = threadIdx.x;" in text   # 12 threads: the block's size
    assert "if (const int ow = threadIdx.x; ow < 10) {" in text
    assert "CONVGEN_LAUNCH(gpu_kernel, dim3(2, 1, 1), dim3(12, 1, 1), stream," in text


def _chain() -> Schedule:
    return Schedule.for_spec(convgen.load_spec(CONV))


@pytest.mark.parametrize("make, words", [
    (lambda: _chain().split("ow", 5).cache_write("ow.o").vectorize("ow.i.init"),
     "loop ow.i.init is vectorized, a CPU step"),
    (lambda: _chain().parallel("oc"), "loop oc is parallel, a CPU step"),
    (lambda: _chain().peel("ow", 1, 0).bind("oc", "block.x").bind("ow", "thread.x"),   # ow.f: not bound
     "the store to y is outside the loops bound to threads, so all 9 threads of a block would run it"),
    (lambda: _chain().split("ow", 5).cache_write("ow.o").bind("ow.i.out", "thread.x").bind("ow.i", "thread.y")
     .bind("ow.i.init", "thread.z"), "local buffer acc is declared outside a loop bound to threads"),
])
def test_the_renderer_refuses_what_a_gpu_would_run_wrongly(make, words):
    with pytest.raises(CodegenError) as caught:
        emit_cuda(ir.split(make().func), SM80)
    assert words in str(caught.value), str(caught.value)


@pytest.mark.parametrize("make, words", [
    (lambda s: s.fuse("oh", "ow").bind("oh_ow", "thread.x"), "1600 threads along x; a block takes at most 1024"),
    (lambda s: s.bind("oh", "thread.y").bind("ow", "thread.x"), "1600 threads a block; sm_80 runs at most 1024"),
    (lambda s: s.fuse("oc", "oh").bind("oc_oh", "thread.z"), "320 threads along z; a block takes at most 64"),
])
def test_a_launch_past_the_gpu_limits_is_refused(make, words):
    s = make(Schedule.for_spec(convgen.load_spec({**CONV, "input_size": [40, 40]})))
    with pytest.raises(CodegenError) as caught:
        emit_cuda(ir.split(s.func), SM80)
    assert words in str(caught.value), str(caught.value)


def test_a_block_tile_is_held_by_its_threads_in_parts():
    """The shared tile's accumulators: a 16x4x4x4x4 tile at the block loop, each thread's 4x4 in its registers."""
    spec = convgen.load_spec({**CONV, "in_channels": 8, "out_channels": 64})
    text = emit_cuda(ir.split(shared_tile(Schedule.for_spec(spec), spec, 4).func), SM80).source
    assert "local acc: float32[oc.i.o=16, oh.i=4, ow.i.o=4, oc.i.i=4, ow.i.i=4]" in \
        ir.format_func(shared_tile(Schedule.for_spec(spec), spec, 4).func)
    assert "float acc[16];" in text and "acc[15] = acc[15] + x_shared[" in text
    assert text.count("__syncthreads();") == 4


def test_the_default_gpu_recipe_says_what_it_chose():
    dense = gpu_recipe(convgen.load_spec({**CONV, "out_channels": 64}), SM80)
    assert dense.name == "shared tile" and ("input channels a stage", "3") in dense.params
    # 64x4x16 outputs a block would leave most of the 108 multiprocessors idle: 1 column a thread, 24 blocks
    assert ("thread tile", "4 output channels x 1 columns") in dense.params
    wide = gpu_recipe(convgen.load_spec({**CONV, "out_channels": 256, "input_size": [56, 56]}), SM80)
    assert ("thread tile", "4 output channels x 4 columns") in wide.params   # 4 x 14 x 4 = 224 blocks
    narrow = gpu_recipe(convgen.load_spec(CONV), SM80)
    assert narrow.name == "channel tile" and ("tile", "4 output channels a thread") in narrow.params
    depthwise = gpu_recipe(convgen.load_spec({**CONV, "in_channels": 8, "groups": 8}), SM80)
    assert depthwise.name == "depthwise column tile" and ("tile", "4 output columns a thread") in depthwise.params
    narrow = gpu_recipe(convgen.load_spec({**CONV, "in_channels": 8, "groups": 8, "input_size": [6, 6]}), SM80)
    assert narrow.name == "direct" and "1 output channels a group" in narrow.why   # 6 columns: too few to tile
    small = dict(gpu_recipe(convgen.load_spec({**CONV, "out_channels": 1}), SM80).params)
    assert small["block"] == "64 threads"   # 60 outputs: two warps


def test_a_spec_with_a_cpu_schedule_gets_the_gpu_default_and_says_so():
    path = next(p for p in spec_paths() if p.stem == "resnet_3x3_64_tuned")
    kernel = convgen.build(path, "cuda", cache=False)
    assert kernel.schedule_source == "default, not the spec's" and kernel.recipe.name == "shared tile"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason=NO_NVCC)
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("path", spec_paths(), ids=lambda p: p.stem)
def test_every_spec_compiles_with_nvcc_without_warnings_or_spills(path, arch, tmp_path):
    """Host and device code for sm_80; the device code alone for sm_90 (its host side differs
    only in launch sizes, and compiling it would double the test's time)."""
    files = emit(plan(convgen.load_spec(path), load_gpu_target(arch)), "cuda")
    for name, text in files.files.items():
        (tmp_path / name).write_text(text)
    kernels = nvcc_compile(tmp_path / f"{files.name}.cu", arch,   # -Werror all-warnings, --warn-on-spills
                           device_only=arch != "sm_80")
    assert sorted(k.name for k in kernels) == sorted(f"{launch.name}_kernel" for launch in files.launches)
    assert all(k.spill_bytes == 0 and 0 < k.registers <= 255 for k in kernels)


@pytest.mark.skipif(not ON_GPU, reason=NO_GPU)
@pytest.mark.parametrize("path", spec_paths(), ids=lambda p: p.stem)
def test_gpu_every_spec_matches_the_reference(path):
    kernel = convgen.build(path, "cuda", cache=False)
    assert kernel.device.startswith("on the GPU"), kernel.device
    _assert_matches(kernel, np.random.SeedSequence().entropy)


@pytest.mark.skipif(not ON_GPU, reason=NO_GPU)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_gpu_random_specs_with_random_gpu_schedules(data, seed):
    spec = data.draw(specs())
    _assert_matches(convgen.build(spec, "cuda", schedule=data.draw(gpu_schedules(spec)), cache=False), seed)


@pytest.mark.skipif(ON_GPU, reason="a GPU is here: the benchmark runs (scripts/gpu_check.sh)")
def test_bench_on_cuda_without_a_gpu_says_what_it_needs():
    from convgen.bench import bench_cuda
    with pytest.raises(convgen.ConvgenError, match="bench -t cuda: no GPU here to time on"):
        bench_cuda(convgen.load_spec(CONV))


def _has_cuda_bindings() -> bool:
    try:
        import cuda.bindings.runtime  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(ON_GPU or shutil.which("nvcc") is None or not _has_cuda_bindings(),
                    reason="needs nvcc and cuda-bindings without a usable GPU (the gpu extra, on a GPU-less machine)")
def test_the_gpu_path_builds_with_nvcc_and_reports_a_missing_driver(monkeypatch, tmp_path):
    """What can be checked of the GPU path without a GPU: nvcc builds the library with
    its launchers and it loads; the first CUDA call names the runtime's error."""
    import convgen.codegen.cuda as cuda
    monkeypatch.setattr(cuda, "runner", lambda: "gpu sm_80")
    kernel = convgen.build(CONV, "cuda", cache=False, workdir=tmp_path)
    assert kernel.device == "on the GPU (sm_80)" and (tmp_path / "gpu_gpu.so").exists()
    with pytest.raises(convgen.KernelCallError, match="CUDA runtime: cudaMalloc\\(.*\\) failed: cudaError"):
        convgen.check(kernel, 1)


class _HostAsDevice:
    """cuda-bindings' few calls (convgen/gpu.py) played by host memory, and nvcc's library
    by the emulator's: what the GPU path does in Python (copies in and out around each
    stage, the prepared workspace, timing on device-resident arrays) runs without a GPU."""

    def __init__(self):
        self.blocks = {}

    def allocate(self, nbytes):
        block = np.empty(max(nbytes, 1), np.uint8)
        block.fill(0xFF)   # not zero: an input the path fails to copy shows
        self.blocks[block.ctypes.data] = block
        return block.ctypes.data

    def free(self, address):
        del self.blocks[address]

    @staticmethod
    def copy(destination, source, nbytes):
        import ctypes
        ctypes.memmove(destination, source, nbytes)

    @staticmethod
    def elapsed_ms(run, repeats):
        import time
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        return (time.perf_counter() - start) * 1e3 / repeats


@pytest.fixture
def host_as_device(monkeypatch):
    import convgen.codegen.cuda as cuda
    from convgen import gpu
    from convgen.native import load_cpp
    fake = _HostAsDevice()
    monkeypatch.setattr(cuda, "runner", lambda: "gpu sm_80")
    monkeypatch.setattr(cuda, "load_cuda", lambda files, name, arch, workdir: load_cpp(
        {**files, f"{name}.cpp": files[f"{name}.cu"]}, name, cuda.emulator_header(), workdir))
    monkeypatch.setattr(gpu, "allocate", fake.allocate)
    monkeypatch.setattr(gpu, "free", fake.free)
    monkeypatch.setattr(gpu, "to_device", fake.copy)
    monkeypatch.setattr(gpu, "to_host", fake.copy)
    monkeypatch.setattr(gpu, "elapsed_ms", fake.elapsed_ms)
    return fake


@pytest.mark.parametrize("path", [p for p in spec_paths() if p.stem in (
    "vgg_3x3_64_relu_maxpool", "resnet_3x3_64", "ds_cnn_pw_int8", "maxpool_2x2")], ids=lambda p: p.stem)
def test_the_gpu_path_in_python_copies_in_and_out_around_each_stage(host_as_device, path):
    """A workspace between two stages (the fused pool), int8, pooling: each through DeviceStage."""
    kernel = convgen.build(path, "cuda", cache=False)
    assert kernel.device == "on the GPU (sm_80)"
    assert all(stage.convention == "cuda-device" for stage in kernel.stages)
    _assert_matches(kernel, 5)
    assert not host_as_device.blocks   # every device buffer freed


def test_the_gpu_benchmark_times_the_kernel_on_device_arrays(host_as_device, monkeypatch):
    import convgen.bench as bench
    monkeypatch.setattr(bench, "_torch_on_gpu", lambda *args: bench.Entry("torch (cuDNN)", note="not run here"))
    spec = convgen.load_spec(next(p for p in spec_paths() if p.stem == "vgg_3x3_64_relu_maxpool"))
    mine, peer = bench.bench_cuda(spec, repeats=2, rounds=1)
    assert mine.name == "convgen (cuda)" and mine.seconds > 0 and mine.error < 1e-5, mine
    assert "shared tile" in mine.schedule and peer.note == "not run here"
    assert not host_as_device.blocks


USER_PROGRAM = """/* A C program that calls a convgen CUDA kernel, as a user's would. */
#include "vgg_3x3_64_relu_maxpool.h"

int main(void)
{
    void *x, *w, *b, *y, *workspace;
    cudaMalloc(&x, 1 * 64 * 56 * 56 * sizeof(float));
    cudaMalloc(&w, 64 * 64 * 3 * 3 * sizeof(float));
    cudaMalloc(&b, 64 * sizeof(float));
    cudaMalloc(&y, 1 * 64 * 28 * 28 * sizeof(float));
    cudaMalloc(&workspace, VGG_3X3_64_RELU_MAXPOOL_WORKSPACE_BYTES);
    cudaError_t status = vgg_3x3_64_relu_maxpool(x, w, b, y, workspace, 0);
    cudaDeviceSynchronize();
    return status != cudaSuccess;
}
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason=NO_NVCC)
def test_a_c_program_builds_against_the_emitted_header_and_kernel(tmp_path):
    """The .cu and .h as a user drops them into a project: the kernel built by nvcc, a C99
    caller (-Wall -Wextra -Werror) built against the header, linked into an executable."""
    import subprocess
    files = emit(plan(convgen.load_spec(next(p for p in spec_paths() if p.stem == "vgg_3x3_64_relu_maxpool")),
                      SM80), "cuda")
    for name, text in files.files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "user.c").write_text(USER_PROGRAM)
    for command in (["nvcc", "-arch=sm_80", "-c", f"{files.name}.cu", "-o", "kernel.o"],
                    ["nvcc", "-c", "user.c", "-o", "user.o", "-Xcompiler", "-std=c99,-Wall,-Wextra,-Werror"],
                    ["nvcc", "-arch=sm_80", "kernel.o", "user.o", "-o", "app"]):
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stderr}"
    assert (tmp_path / "app").exists()
