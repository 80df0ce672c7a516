"""Every backend against the reference: random specs (property test), the specs
in specs/, strict C compilation, and the emitted C under address and
undefined-behaviour sanitizers."""

import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convgen
from c_harness import SANITIZE_FLAGS, STRICT_FLAGS, build_program, run_program
from conftest import spec_paths
from convgen import ir
from convgen.check import compare, compare_runs, output_fills, random_inputs, tolerance
from convgen.codegen.c import emit_c
from convgen.codegen.llvm import emit_llvm
from convgen.driver import plan
from convgen.errors import CodegenError
from convgen.lower import lower
from convgen.reference import reference
from convgen.codegen import CPU_BACKENDS
from convgen.native import llvm_assembly
from convgen.target import host
from strategies import quantized_specs, specs

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


def _assert_matches(kernel, seed):
    result = convgen.check(kernel, seed)
    assert result.passed, (f"{kernel.target}: max error {result.max_abs_error} > {result.max_allowed}, "
                           f"{result.unwritten} unwritten\n{kernel.spec}")


@pytest.mark.parametrize("half", [1, 2])
@settings(max_examples=150)
@given(spec=specs(), seed=st.integers(0, 2**32 - 1))
def test_random_specs_match_reference(half, spec, seed):
    """300 random specs (two halves of 150, so that the two workers share them), each on every CPU
    backend with the default schedule for the host, as convgen.build gives it (every step verified
    by ir.verify); the backends share the recipe's search."""
    for backend in CPU_BACKENDS:
        _assert_matches(convgen.build(spec, backend), seed)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
# 60 a backend: the float32 tests take the 300 the issue asked for, and the suite must stay under
# ten minutes on two cores (int8 layers share lowering, schedules and backends with them)
@settings(max_examples=60)
@given(spec=quantized_specs(), seed=st.integers(0, 2**32 - 1))
def test_random_int8_specs_match_reference_bit_for_bit(backend, spec, seed):
    _assert_matches(convgen.build(spec, backend), seed)


@pytest.mark.parametrize("path", spec_paths(), ids=lambda p: p.stem)
def test_spec_files_match_reference(backend, path):
    _assert_matches(convgen.build(path, backend), np.random.SeedSequence().entropy)


def test_check_catches_an_unwritten_output():
    kernel = convgen.build({"name": "k", "op": "maxpool2d", "in_channels": 1, "input_size": [4, 4],
                            "kernel_size": 2})
    inputs = random_inputs(kernel.spec, np.random.default_rng(0))
    out = np.full(kernel.spec.output_shape, np.nan, dtype=np.float32)
    kernel(**inputs, out=out)
    out[0, 0, 1, 1] = np.nan  # as if the kernel had skipped one element
    result = compare(out, reference(kernel.spec, **inputs), tolerance(kernel.spec, inputs))
    assert not result.passed and result.unwritten == 1


def test_check_catches_a_wrong_value():
    kernel = convgen.build({"name": "k", "op": "conv2d", "in_channels": 2, "out_channels": 2,
                            "input_size": [5, 5], "kernel_size": 3})
    inputs = random_inputs(kernel.spec, np.random.default_rng(1))
    out = kernel(**inputs)
    out[0, 1, 2, 2] += 1e-4
    assert not compare(out, reference(kernel.spec, **inputs), tolerance(kernel.spec, inputs)).passed


def _run_sanitized(spec, folder, seed, schedule="naive"):
    """The emitted C built with the address and undefined-behaviour sanitizers,
    each array (and the workspace) in a buffer of exactly its size; the
    workspace starts as all-ones bytes (NaN floats): the kernel must not
    depend on what it holds."""
    program = plan(spec, host(), schedule).program
    files = emit_c(program)
    sizes = [(p.name, p.nbytes) for p in program.params]
    workspace = np.full(program.workspace_bytes, 0xff, dtype=np.uint8)
    if program.workspace_bytes:
        sizes.append(("workspace", program.workspace_bytes))
    built = build_program(files, sizes, folder, SANITIZE_FLAGS, output="y")
    inputs = random_inputs(spec, np.random.default_rng(seed))
    expected = reference(spec, **inputs)

    def run(fill):
        out = np.full(spec.output_shape, fill, dtype=spec.array_dtypes["y"])
        arrays = {p.name: inputs.get(p.name, out) for p in program.params}
        if program.workspace_bytes:
            arrays["workspace"] = workspace
        return run_program(built, arrays, out)

    result = compare_runs(spec, [run(fill) for fill in output_fills(spec.array_dtypes["y"])], expected, inputs)
    assert result.passed, f"max error {result.max_abs_error}, {result.unwritten} unwritten\n{spec}"


@needs_gcc
@pytest.mark.parametrize("path", spec_paths(), ids=lambda p: p.stem)
def test_spec_files_c_under_sanitizers(tmp_path, path):
    _run_sanitized(convgen.load_spec(path), tmp_path, 0)


@needs_gcc
@settings(max_examples=25)
@given(spec=specs(), seed=st.integers(0, 2**32 - 1))
def test_random_specs_c_under_sanitizers(tmp_path_factory, spec, seed):
    _run_sanitized(spec, tmp_path_factory.mktemp("asan"), seed)


@needs_gcc
@settings(max_examples=25)
@given(spec=specs(), seed=st.integers(0, 2**32 - 1))
def test_random_specs_c_with_the_default_schedule_under_sanitizers(tmp_path_factory, spec, seed):
    """What users get (stages, workspace, prepare and run) read and write nothing out of bounds."""
    _run_sanitized(spec, tmp_path_factory.mktemp("asan"), seed, schedule="default")


@needs_gcc
@pytest.mark.parametrize("steps", [
    [{"layout": ["x", "NCHW4c"]}, {"pad_input": "x"}, {"layout": ["w", "OIHW4o"]}, {"layout": ["y", "NHWC"]}],
    [{"pad_input": "x"}, {"layout": ["x", "NHWC"]}, {"layout": ["w", "HWIO"]}, {"layout": ["y", "NCHW4c"]}],
], ids=["blocked-then-padded", "padded-then-permuted"])
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_packed_and_padded_copies_in_the_workspace_under_sanitizers(tmp_path, steps, mode):
    """Every copy stage at once, with blocks that do not divide the channels (tails filled)."""
    spec = convgen.load_spec({"name": "packed", "op": "conv2d", "in_channels": 5, "out_channels": 6,
                              "input_size": [7, 9], "kernel_size": 3, "padding": [1, 2, 0, 1], "padding_mode": mode,
                              "bias": True, "activation": "relu"})
    _run_sanitized(spec, tmp_path, 3, schedule=steps)


@needs_gcc
@settings(max_examples=25)
@given(spec=quantized_specs(), seed=st.integers(0, 2**32 - 1))
def test_random_int8_specs_c_under_sanitizers(tmp_path_factory, spec, seed):
    """Also catches undefined behaviour (shifts, overflow) in the requantization helper."""
    _run_sanitized(spec, tmp_path_factory.mktemp("asan"), seed)


@needs_gcc
@pytest.mark.parametrize("path", spec_paths(), ids=lambda p: p.stem)
def test_emitted_c_compiles_without_warnings(tmp_path, path):
    """-std=c99 -Wall -Wextra -Werror -pedantic, as a firmware project would build it."""
    files = emit_c(lower(convgen.load_spec(path)))
    (tmp_path / f"{files.name}.h").write_text(files.header)
    (tmp_path / f"{files.name}.c").write_text(files.source)
    result = subprocess.run(["gcc", *STRICT_FLAGS, "-O2", "-c", f"{files.name}.c"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_c_header_documents_the_kernel():
    spec = convgen.load_spec({"name": "doc", "op": "conv2d", "in_channels": 3, "out_channels": 8,
                              "input_size": [10, 12], "kernel_size": 3, "layout": "NHWC"})
    header = emit_c(lower(spec)).header
    assert "MACs: 17,280" in header                       # 8 * 8 * 10 * 3 * 9
    assert "x  input  float32 [1, 10, 12, 3] NHWC, 1440 bytes" in header
    assert "w  input  float32 [8, 3, 3, 3] OIHW, 864 bytes" in header
    assert "y  output float32 [1, 8, 10, 8] NHWC, 2560 bytes" in header
    assert "void doc(const float *CONVGEN_RESTRICT x" in header


def test_emitted_c_has_no_heap_or_mutable_globals():
    for path in spec_paths():
        source = emit_c(lower(convgen.load_spec(path))).source
        assert "malloc" not in source and "static float" not in source and "static ptrdiff_t" not in source


def test_llvm_source_is_kept_on_the_kernel():
    kernel = convgen.build({"name": "ll", "op": "avgpool2d", "in_channels": 1, "input_size": [4, 4],
                            "kernel_size": 2}, "llvm")
    assert "define void @\"ll\"" in kernel.source or "define void @ll" in kernel.source
    assert "noalias" in kernel.source


def test_llvm_targets_the_host_cpu():
    spec = convgen.load_spec({"name": "asm", "op": "conv2d", "in_channels": 1, "out_channels": 1,
                              "input_size": [8, 8], "kernel_size": 3})
    assembly = llvm_assembly(emit_llvm(lower(spec), host()), host())
    assert "asm:" in assembly and "ret" in assembly
    if host().has("avx"):
        assert "vmovss" in assembly or "vfmadd" in assembly or "vmulss" in assembly  # VEX encoding: host features used


@pytest.mark.parametrize("emit", [emit_c, lambda func: emit_llvm(func, host())], ids=["c", "llvm"])
def test_division_that_might_truncate_wrongly_is_refused(emit):
    """C and LLVM division truncates; the IR's // floors. A possibly negative dividend is refused."""
    i = ir.Var("i")
    y = ir.Buffer("y", ir.FLOAT32, ("i",), (4,), ir.plain_layout("i"))
    x = ir.Buffer("x", ir.FLOAT32, ("i",), (4,), ir.plain_layout("i"))
    body = ir.Loop(i, 4, ir.Store(y, (i,), ir.Load(x, ((i - 3) // 2 + 1,))))
    with pytest.raises(CodegenError, match="cannot prove"):
        emit(ir.Func("f", (x, y), body))


@needs_gcc
def test_layer_that_reads_only_padding(tmp_path):
    """Every tap of this 1x1 kernel lands in padding, so x and w are never read: the
    C must still build warning-free (found by the random sanitizer test)."""
    spec = convgen.load_spec({"name": "all_padding", "op": "conv2d", "in_channels": 1, "out_channels": 1,
                              "input_size": [1, 1], "kernel_size": 1, "stride": [1, 3], "padding": 1,
                              "bias": False})
    _run_sanitized(spec, tmp_path, 0)
    for backend in CPU_BACKENDS:
        _assert_matches(convgen.build(spec, backend), 0)


def test_llvm_keeps_a_fused_max_pooling_window_right():
    """LLVM's own loop vectorizer got this reduction wrong at O3 (3 instead of 5);
    convgen's pipeline leaves vectorization to the schedule."""
    from convgen.schedule import Schedule
    spec = convgen.load_spec({"name": "r", "op": "maxpool2d", "batch": 2, "in_channels": 1, "input_size": [3, 2],
                              "kernel_size": [4, 3], "stride": 1, "padding": [1, 2, 1, 1],
                              "padding_mode": "reflect"})
    x = np.arange(12, dtype=np.float32).reshape(2, 1, 3, 2)
    y = convgen.build(spec, "llvm", schedule=Schedule.for_spec(spec).fuse("kh", "kw"))(x)
    np.testing.assert_array_equal(y, convgen.reference(spec, x))


@pytest.mark.parametrize("pad_input", [False, True])
def test_llvm_guarded_tail_uses_masked_vector_memory_and_a_register_tile(pad_input):
    """A vector of columns split with a guarded tail (13 columns, 8 lanes): x and y
    are read and written with masked vector loads and stores, not lane by lane,
    the stack tile is blended instead (so it can stay in registers), and the
    columns past the end of y are never written. Where the input is padded, the
    tile's only guard is the tail's, a condition of the column each element is for,
    so masked-off lanes may write the tile unblended; with padding checked in the
    kernel, a column's lane is masked for some taps and not others, so it may not."""
    from convgen.schedule import Schedule
    spec = convgen.load_spec({"name": "tail", "op": "conv2d", "in_channels": 3, "out_channels": 2,
                              "input_size": [5, 13], "kernel_size": 3, "padding": 1})
    s = (Schedule.for_spec(spec).split("ow", 8).reorder("oc", "oh", "ow.o", "ow.i").cache_write("ow.o")
         .reorder("ic", "kh", "kw", "ow.i").vectorize("ow.i").vectorize("ow.i.init").vectorize("ow.i.out"))
    s = s.pad_input() if pad_input else s
    source = emit_llvm(s.func, host())
    assert "call void @\"llvm.masked.store.v8f32.p0\"" in source or "call void @llvm.masked.store.v8f32.p0" in source
    assert "llvm.masked.load.v8f32.p0" in source
    from convgen.codegen.llvm import masked_lanes_unread
    (tile,) = ir.find_all(s.func, ir.Allocate)
    assert masked_lanes_unread(tile) == pad_input
    kernel = convgen.build(spec, "llvm", schedule=s)
    rng = np.random.default_rng(3)
    inputs = random_inputs(spec, rng)
    out = np.full((1, 3) + spec.output_shape[2:], np.nan, np.float32)[:, :2]   # y, then a channel never written
    whole = out.base if out.base is not None else out
    kernel(inputs["x"], inputs["w"], inputs["b"], out=out)
    np.testing.assert_allclose(out, reference(spec, **inputs), rtol=1e-5, atol=1e-5)
    assert np.isnan(whole[:, 2]).all()


@pytest.mark.parametrize("columns, channels, activation", [(5, 16, "relu"), (14, 32, "none"), (3, 8, "none")])
def test_tile_written_back_by_transpose_matches_reference(columns, channels, activation):
    """A register tile of channel vectors written to NCHW columns: the LLVM backend
    transposes the block with shuffles; odd sizes pad to a power of two with poison."""
    from convgen.schedule import Schedule
    spec = convgen.load_spec({"name": "wb", "op": "conv2d", "in_channels": 3, "out_channels": channels,
                              "input_size": [4, 2 * columns], "kernel_size": 3, "padding": 1,
                              "activation": activation})
    lanes = min(channels, 16)
    schedule = (Schedule.for_spec(spec).split("oc", lanes, tail="perfect").split("ow", columns, tail="perfect")
                .reorder("oc.o", "oh", "ow.o", "ow.i", "oc.i").cache_write("ow.o")
                .reorder("ic", "kh", "kw", "ow.i", "oc.i").unroll("ow.i").vectorize("oc.i")
                .reorder("ow.i.init", "oc.i.init").vectorize("oc.i.init")
                .reorder("oc.i.out", "ow.i.out").vectorize("ow.i.out"))
    kernel = convgen.build(spec, "llvm", schedule=schedule)
    assert "shufflevector" in kernel.source
    for seed in range(3):
        _assert_matches(kernel, seed)


@needs_gcc
def test_baked_weights_are_what_the_prepare_step_fills(tmp_path):
    """--bake-weights runs the prepare step at build time: the packed weights are const
    data, the entry takes neither w nor a workspace, and the results still match."""
    from convgen.codegen.c import Baking
    from convgen.driver import emit
    spec = convgen.load_spec({"name": "baked", "op": "conv2d", "in_channels": 3, "out_channels": 6,
                              "input_size": [5, 7], "kernel_size": 3, "padding": 1})
    inputs = random_inputs(spec, np.random.default_rng(4))
    chosen = plan(spec, host(), [{"layout": ["w", "OIHW4o"]}])
    assert [f.name for f in chosen.program.prepare] == ["baked_pack_w_1", "baked_pack_w_2"]
    files = emit(chosen, "c", Baking({"w": inputs["w"], "b": inputs["b"]}))
    assert files.arguments == ("x", "y") and set(files.baked) == {"w_packed", "b"} and files.workspace_bytes == 0
    program = build_program(files, [("x", inputs["x"].nbytes), ("y", 4 * int(np.prod(spec.output_shape)))],
                            tmp_path, STRICT_FLAGS)
    out = np.full(spec.output_shape, np.nan, dtype=np.float32)
    result = compare(run_program(program, {"x": inputs["x"], "y": out}, out), reference(spec, **inputs),
                     tolerance(spec, inputs))
    assert result.passed, result


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_fused_max_pool_over_a_padded_edge(backend):
    """Found by the random specs: GCC 12.2 at -O3 with AVX2 miscompiled this
    pool's guarded max (0 where no padding was involved) until target.py
    turned its loop if-conversion off for the host's C."""
    spec = convgen.load_spec({"name": "edge_pool", "op": "conv2d", "in_channels": 1, "out_channels": 1,
                              "input_size": [5, 3], "kernel_size": 1, "bias": False,
                              "pool": {"op": "maxpool2d", "kernel_size": [3, 1], "stride": 1, "padding": [1, 0, 0, 0]}})
    for seed in range(3):
        _assert_matches(convgen.build(spec, backend), seed)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_an_int8_average_pool_whose_last_window_hangs_past_the_input(backend):
    """Found by the random int8 specs: the vectorized division by each
    window's count read 0 in lanes past the last output (masked loads of the
    count table) and trapped (SIGFPE) until the LLVM backend divided those by 1."""
    spec = convgen.load_spec({"name": "ceil_pool", "op": "avgpool2d", "in_channels": 3, "input_size": [7, 7],
                              "kernel_size": 2, "stride": 2, "activation": "relu6", "dtype": "int8",
                              "layout": {"input": "NHWC", "output": "NCHW"}, "count_include_pad": False,
                              "ceil_mode": True, "quantization": {"input": {"scale": 0.0623, "zero_point": -55}}})
    kernel = convgen.build(spec, backend)
    for seed in range(3):
        result = convgen.check(kernel, seed)
        assert result.passed, result
