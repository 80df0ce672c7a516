"""The Python API: building, calling, and refusing bad arguments."""

import ctypes
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import convgen
from convgen.callguard import array_fields
from convgen.errors import ConvgenError, KernelCallError
from convgen.schedule import Schedule

CONV = {"name": "api", "op": "conv2d", "in_channels": 2, "out_channels": 4, "input_size": [6, 5],
        "kernel_size": 3, "padding": 1, "layout": {"input": "NHWC", "output": "NCHW"}}


@pytest.fixture(scope="module", params=["llvm", "c"])
def kernel(request):
    return convgen.build(CONV, request.param)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (1, 6, 5, 2)).astype(np.float32),
            rng.uniform(-1, 1, (4, 2, 3, 3)).astype(np.float32),
            rng.uniform(-1, 1, 4).astype(np.float32))


def test_call_returns_output_in_the_spec_layout(kernel):
    x, w, b = _inputs()
    y = kernel(x, w, b)
    assert y.shape == (1, 4, 6, 5) and y.dtype == np.float32
    np.testing.assert_allclose(y, convgen.reference(kernel.spec, x, w, b), rtol=1e-5, atol=1e-5)


def test_out_argument_is_written_in_place(kernel):
    x, w, b = _inputs(1)
    out = np.full((1, 4, 6, 5), np.nan, dtype=np.float32)
    assert kernel(x, w, b, out=out) is out
    assert not np.isnan(out).any()


def test_non_contiguous_input_is_accepted(kernel):
    x, w, b = _inputs(2)
    wide = np.zeros((1, 6, 10, 2), dtype=np.float32)
    wide[:, :, ::2, :] = x
    np.testing.assert_array_equal(kernel(wide[:, :, ::2, :], w, b), kernel(x, w, b))


@pytest.mark.parametrize("change, message", [
    (lambda x, w, b: (x.astype(np.float64), w, b), "x: expected dtype float32; got float64"),
    (lambda x, w, b: (x[:, :5], w, b), "x: expected shape [1, 6, 5, 2]; got [1, 5, 5, 2]"),
    (lambda x, w, b: (x, w[:, :1], b), "w: expected shape [4, 2, 3, 3]"),
    (lambda x, w, b: (x, w, None), "b: required"),
    (lambda x, w, b: (x.tolist(), w, b), "x: expected a float32 NumPy array"),
])
def test_wrong_arguments_raise_clear_errors(kernel, change, message):
    with pytest.raises(KernelCallError, match=message.replace("[", r"\[").replace("]", r"\]")):
        kernel(*change(*_inputs()))


def test_out_must_not_alias_inputs():
    pool = convgen.build({"name": "same", "op": "maxpool2d", "in_channels": 1, "input_size": [4, 4],
                          "kernel_size": 1})
    x = np.random.default_rng(0).uniform(-1, 1, (1, 1, 4, 4)).astype(np.float32)
    with pytest.raises(KernelCallError, match="overlap"):
        pool(x, out=x)


def test_pooling_takes_only_x():
    pool = convgen.build({"name": "p", "op": "avgpool2d", "in_channels": 1, "input_size": [4, 4],
                          "kernel_size": 2})
    x = np.random.default_rng(0).uniform(-1, 1, (1, 1, 4, 4)).astype(np.float32)
    with pytest.raises(KernelCallError, match="takes only x"):
        pool(x, x)


def test_spec_weights_are_the_default():
    kernel = convgen.build({"name": "s", "op": "conv2d", "in_channels": 1, "out_channels": 1,
                            "input_size": [3, 3], "weights": "laplacian", "bias": [1.5]})
    x = np.random.default_rng(3).uniform(-1, 1, (1, 1, 3, 3)).astype(np.float32)
    expected = 8 * x[0, 0, 1, 1] - (x.sum() - x[0, 0, 1, 1]) + 1.5
    np.testing.assert_allclose(kernel(x)[0, 0, 0, 0], expected, rtol=1e-5)


def test_bad_target_is_refused():
    with pytest.raises(ConvgenError, match="target: expected one of llvm, c, cuda; got 'opencl'"):
        convgen.build(CONV, "opencl")


def test_workdir_keeps_the_emitted_files(tmp_path):
    convgen.build(CONV, "c", workdir=tmp_path / "c")
    convgen.build(CONV, "llvm", workdir=tmp_path / "llvm")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["api.c", "api.h", "api.so"]
    assert [p.name for p in (tmp_path / "llvm").iterdir()] == ["api.ll"]


def test_rebuilding_into_one_workdir_runs_the_new_code(tmp_path):
    x = np.random.default_rng(4).uniform(-1, 1, (1, 1, 4, 4)).astype(np.float32)
    base = {"name": "same_name", "op": "maxpool2d", "in_channels": 1, "input_size": [4, 4]}
    first = convgen.build({**base, "kernel_size": 2}, "c", workdir=tmp_path)
    second = convgen.build({**base, "kernel_size": 4}, "c", workdir=tmp_path)
    assert first(x).shape == (1, 1, 2, 2) and second(x)[0, 0, 0, 0] == x.max()


DIRECT = {"name": "direct", "op": "conv2d", "in_channels": 3, "out_channels": 3, "input_size": [7, 7],
          "kernel_size": 3, "bias": True}   # NCHW in and out, no padding: the bound call's direct path


def _without_general_path(kernel):
    """Make the kernel's general path fail, so that a call which succeeds went
    through the bound kernel's guard."""
    def general_path(*args):
        raise AssertionError("the call took the general path")
    kernel._run_step = general_path


def test_numpy_array_fields_are_found_for_the_guard():
    """Without them every bound call would quietly take the slow general path."""
    fields = array_fields()
    assert fields is not None
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert ctypes.c_uint64.from_address(id(x) + fields.data).value == x.ctypes.data


@pytest.mark.parametrize("backend", ["llvm", "c"])
def test_bound_kernel_direct_path_writes_every_output(backend):
    kernel = convgen.build(DIRECT, backend)
    rng = np.random.default_rng(5)
    w, b = rng.uniform(-1, 1, (3, 3, 3, 3)).astype(np.float32), rng.uniform(-1, 1, 3).astype(np.float32)
    bound = kernel.bind(w, b)
    _without_general_path(kernel)
    original, w[:] = w.copy(), 0   # bind keeps its own copy: later changes to w do not leak in
    out = np.full((1, 3, 5, 5), np.nan, dtype=np.float32)
    for seed in range(3):
        x = rng.uniform(-1, 1, (1, 3, 7, 7)).astype(np.float32)
        out[:] = np.nan
        assert bound(x, out=out) is out
        expected = convgen.reference(kernel.spec, x, original, b)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_bound_kernel_guard_keeps_reference_counts():
    """The guard is a builtin that returns out (a new reference) or None: calls leak
    no reference to either array, whether the guard runs the kernel or refuses."""
    rng = np.random.default_rng(12)
    bound = convgen.build(DIRECT, "llvm").bind(rng.uniform(-1, 1, (3, 3, 3, 3)).astype(np.float32),
                                               rng.uniform(-1, 1, 3).astype(np.float32))
    x, out = rng.uniform(-1, 1, (1, 3, 7, 7)).astype(np.float32), np.empty((1, 3, 5, 5), np.float32)
    fortran = np.asfortranarray(x)   # refused by the guard: the general path runs
    before = [sys.getrefcount(a) for a in (x, out, fortran)]
    for _ in range(100):
        bound(x, out=out)
        bound(fortran, out=out)
    assert [sys.getrefcount(a) for a in (x, out, fortran)] == before


PADDED = {**DIRECT, "name": "padded", "in_channels": 4, "out_channels": 32, "input_size": [9, 30], "padding": 1}


def _padded_schedule(spec, threads):
    """The naive loop nest reading a padded copy of x (the default direct schedule peels
    the borders instead), in parallel over output channels with threads."""
    schedule = Schedule.for_spec(spec).pad_input()
    return schedule.parallel("oc") if threads > 1 else schedule


@pytest.mark.parametrize("backend, threads", [("llvm", 1), ("llvm", 2), ("c", 2)])
def test_bound_kernel_with_padded_input_and_threads(backend, threads):
    """The padded copy of x is scratch workspace that the stage pack_x fills on
    each call (its border included), also for parallel kernels, whose thread
    count a call may change. The guard runs both stages (pack_x, then the
    convolution) on the calling thread's scratch: no call takes the general path."""
    kernel = convgen.build(PADDED, backend, schedule=_padded_schedule(convgen.load_spec(PADDED), threads),
                           threads=threads)
    rng = np.random.default_rng(8)
    w, b = rng.uniform(-1, 1, (32, 4, 3, 3)).astype(np.float32), rng.uniform(-1, 1, 32).astype(np.float32)
    bound = kernel.bind(w, b)
    _without_general_path(kernel)
    assert [s.buffer.name for s in kernel.program.scratch] == ["x_packed"] and len(kernel.program.run) >= 2
    out = np.empty((1, 32, 9, 30), np.float32)
    for call_threads in (None, 1, 3):   # the kernel's own count, then one and three threads for this call
        x = rng.uniform(-1, 1, (1, 4, 9, 30)).astype(np.float32)
        out[:] = np.nan
        assert bound(x, out=out, threads=call_threads) is out
        np.testing.assert_allclose(out, convgen.reference(kernel.spec, x, w, b), rtol=1e-5, atol=1e-5)


def test_padded_input_buffer_is_per_thread():
    """Calls from several Python threads at once each read their own x (a kernel
    runs outside the GIL, so a shared buffer would be overwritten mid-call)."""
    spec = convgen.load_spec({**PADDED, "in_channels": 16, "input_size": [40, 40]})
    rng = np.random.default_rng(9)
    kernel = convgen.build(spec, "llvm", schedule=_padded_schedule(spec, 1))
    assert [s.buffer.name for s in kernel.program.scratch] == ["x_packed"]
    bound = kernel.bind(rng.uniform(-1, 1, (32, 16, 3, 3)).astype(np.float32),
                                             rng.uniform(-1, 1, 32).astype(np.float32))
    xs = [rng.uniform(-1, 1, (1, 16, 40, 40)).astype(np.float32) for _ in range(4)]
    expected = [bound(x) for x in xs]

    def repeat(i):
        out = np.empty_like(expected[i])
        for _ in range(30):
            out[:] = np.nan
            bound(xs[i], out=out)
            if not np.array_equal(out, expected[i]):
                return False
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(repeat, range(4)))


@pytest.mark.parametrize("bad, message", [
    (lambda x: x.astype(np.float64), "x: expected dtype float32"),
    (lambda x: x[:, :, :6], "x: expected shape"),
    (lambda x: x.astype(">f4"), "x: expected dtype float32"),
])
def test_bound_kernel_direct_path_still_refuses_bad_input(bad, message):
    bound = convgen.build(DIRECT, "llvm").bind(np.ones((3, 3, 3, 3), np.float32), np.ones(3, np.float32))
    x = np.random.default_rng(6).uniform(-1, 1, (1, 3, 7, 7)).astype(np.float32)
    with pytest.raises(KernelCallError, match=message):
        bound(bad(x), out=np.empty((1, 3, 5, 5), np.float32))


class _Subclass(np.ndarray):
    pass


@pytest.mark.parametrize("given", [
    lambda x, out: (np.asfortranarray(x), out),               # x not C-contiguous
    lambda x, out: (x.view(_Subclass), out),                    # not exactly an ndarray
    lambda x, out: (x, out.view(_Subclass)),
    lambda x, out: (x.astype(np.dtype(np.float32, metadata={"m": 1})), out),   # an equal dtype, another object
])
def test_bound_kernel_guard_leaves_other_arrays_to_the_general_path(given):
    """What the guard refuses the general path still computes, into out."""
    rng = np.random.default_rng(11)
    w, b = rng.uniform(-1, 1, (3, 3, 3, 3)).astype(np.float32), rng.uniform(-1, 1, 3).astype(np.float32)
    kernel = convgen.build(DIRECT, "llvm")
    bound = kernel.bind(w, b)
    x, out = given(rng.uniform(-1, 1, (1, 3, 7, 7)).astype(np.float32), np.full((1, 3, 5, 5), np.nan, np.float32))
    assert bound(x, out=out) is out
    np.testing.assert_allclose(out, convgen.reference(kernel.spec, np.asarray(x), w, b), rtol=1e-5, atol=1e-5)


def test_bound_kernel_refuses_a_read_only_out():
    bound = convgen.build(DIRECT, "llvm").bind(np.ones((3, 3, 3, 3), np.float32), np.ones(3, np.float32))
    out = np.empty((1, 3, 5, 5), np.float32)
    out.flags.writeable = False
    with pytest.raises(KernelCallError, match="writeable"):
        bound(np.ones((1, 3, 7, 7), np.float32), out=out)


def test_bound_kernel_direct_path_refuses_overlapping_out():
    conv = convgen.build({**DIRECT, "in_channels": 1, "out_channels": 1, "padding": 1, "bias": False}, "llvm")
    bound = conv.bind(np.ones((1, 1, 3, 3), np.float32))
    x = np.random.default_rng(7).uniform(-1, 1, (1, 1, 7, 7)).astype(np.float32)
    with pytest.raises(KernelCallError, match="overlap"):
        bound(x, out=x)


@pytest.mark.parametrize("shape, dtype", [((1, 3, 7, 7), np.float32), (5, np.int8), ((2, 33), np.int32)])
def test_empty_starts_on_a_cache_line(shape, dtype):
    array = convgen.empty(shape, dtype)
    assert array.ctypes.data % 64 == 0 and array.flags.c_contiguous and array.flags.writeable
    assert array.shape == (shape if isinstance(shape, tuple) else (shape,)) and array.dtype == dtype


def test_buffers_the_runtime_makes_start_on_a_cache_line():
    """The workspace (packed weights, the padded input) and an allocated output are
    aligned (a 64-byte vector access from a misaligned address touches two cache
    lines), and so is each buffer in it; the kernel reads and writes aligned
    arrays from convgen.empty correctly."""
    spec = convgen.load_spec(PADDED)
    kernel = convgen.build(spec, "llvm", schedule=_padded_schedule(spec, 1).layout("w", "OIHW8o"))
    rng = np.random.default_rng(10)
    w, b = rng.uniform(-1, 1, (32, 4, 3, 3)).astype(np.float32), rng.uniform(-1, 1, 32).astype(np.float32)
    bound = kernel.bind(w, b)
    assert all(array.ctypes.data % 64 == 0 for array in bound.weights.values())
    x = convgen.empty(spec.input_shape)
    x[...] = rng.uniform(-1, 1, spec.input_shape)
    out = convgen.empty(spec.output_shape)
    out.fill(np.nan)
    assert bound(x, out=out) is out
    assert bound._prepared.ctypes.data % 64 == 0 and kernel._thread_area("scratch", 0).ctypes.data % 64 == 0
    assert all(s.offset % 64 == 0 for s in kernel.program.prepared + kernel.program.scratch)
    np.testing.assert_allclose(out, convgen.reference(spec, x, w, b), rtol=1e-5, atol=1e-5)
    assert kernel(x, w, b).ctypes.data % 64 == 0


@pytest.mark.parametrize("threads", [-1, 0, 2.5, "2", True])
def test_a_bad_thread_count_is_a_kernel_call_error(kernel, threads):
    x, w, b = _inputs()
    with pytest.raises(KernelCallError, match=f"threads: expected a whole number of at least 1; got {threads!r}"):
        kernel(x, w, b, threads=threads)
    with pytest.raises(KernelCallError, match="threads: expected a whole number"):
        kernel.bind(w, b)(x, out=np.empty((1, 4, 6, 5), np.float32), threads=threads)


# ---------------------------------------------------------------------------
# Optimized by default: what the driver chooses when a spec brings no schedule
# ---------------------------------------------------------------------------

def test_a_spec_without_a_schedule_gets_the_default_for_the_host(backend):
    from convgen.schedule.space import default_schedule
    from convgen.target import host
    spec = convgen.load_spec(CONV)
    kernel = convgen.build(spec, backend, threads=1)
    assert kernel.schedule_source == "default" and kernel.steps == default_schedule(spec, host(), 1)
    assert any(loop.kind == "vectorized" for loop in convgen.ir.find_all(kernel.func.body, convgen.ir.Loop))
    assert convgen.check(kernel, 0).passed


@pytest.mark.parametrize("naive", ["naive", []])
def test_naive_is_an_explicit_choice(naive):
    kernel = convgen.build(CONV, "llvm", schedule=naive)
    assert kernel.steps == () and kernel.schedule_source == ("naive" if naive else "given")
    from_yaml = convgen.build(dict(CONV, schedule="naive"), "llvm")
    assert from_yaml.steps == () and from_yaml.schedule_source == "naive"
    assert {loop.kind for loop in convgen.ir.find_all(kernel.func.body, convgen.ir.Loop)} == {"serial"}


def test_a_layer_no_recipe_fits_warns_and_says_so():
    odd = {"name": "odd", "op": "conv2d", "in_channels": 1, "out_channels": 1, "input_size": [3, 3], "kernel_size": 3}
    with pytest.warns(convgen.ConvgenWarning, match="odd: no default recipe fits this layer on host"):
        kernel = convgen.build(odd, "llvm")
    assert kernel.schedule_source == "no recipe" and kernel.steps == ()


def test_a_spec_schedule_of_unknown_words_is_refused():
    with pytest.raises(convgen.SpecError, match="schedule: expected 'naive' or 'default' or a list of steps; got 'fast'"):
        convgen.load_spec(dict(CONV, schedule="fast"))


def test_build_and_bench_time_the_same_kernel():
    """bench's convgen entry is built by the driver as convgen.build is: same steps, same code."""
    from convgen import bench
    spec = convgen.load_spec(CONV)
    built = {}
    original = bench.build

    def spy(*args, **kwargs):
        kernel = original(*args, **kwargs)
        built["kernel"] = kernel
        return kernel
    try:
        bench.build = spy
        bench.bench(spec, threads=1, peers=(), rounds=1, min_seconds=0.0)
    finally:
        bench.build = original
    direct = convgen.build(spec, "llvm", threads=1)
    assert built["kernel"].steps == direct.steps and built["kernel"].source == direct.source


# ---------------------------------------------------------------------------
# Kernels describe themselves: the signature is read from the kernel's buffers
# ---------------------------------------------------------------------------

def test_the_signature_is_the_callers_arrays_whatever_the_schedule_did_to_the_buffers():
    spec = convgen.load_spec(CONV)
    s = Schedule.for_spec(spec).layout("x", "NCHW2c").layout("w", "OIHW4o").pad_input()
    kernel = convgen.build(spec, "llvm", schedule=s)
    takes = kernel.signature
    assert [(a.name, a.role, a.layout, a.shape) for a in takes.arguments] == [
        ("x", "input", "NHWC", (1, 6, 5, 2)), ("w", "input", "OIHW", (4, 2, 3, 3)), ("b", "input", "O", (4,)),
        ("y", "output", "NCHW", (1, 4, 6, 5))]
    assert takes["x"].buffer.layout_name == "NHWC" and not takes["x"].buffer.pad   # the caller's array
    copies = {b.name: b for b in kernel.func.workspace}
    assert copies["x_packed"].layout_name == "NCHW2c" and copies["x_packed"].pad
    assert takes.workspace_bytes >= copies["x_packed"].nbytes + copies["w_packed"].nbytes
    assert takes.prepared_bytes >= copies["w_packed"].nbytes
    x, w, b = _inputs()
    np.testing.assert_allclose(kernel(x, w, b), convgen.reference(spec, x, w, b), rtol=1e-5, atol=1e-5)


def test_a_winograd_kernel_takes_the_callers_oihw_weights():
    from convgen.schedule.space import winograd_schedule
    from convgen.target import host
    spec = convgen.load_spec({"name": "wg", "op": "conv2d", "in_channels": 16, "out_channels": 16,
                              "input_size": [8, 8], "kernel_size": 3, "padding": 1})
    kernel = convgen.build(spec, "llvm", schedule=winograd_schedule(spec, host(), 1, 2))
    w = kernel.signature["w"]
    assert (w.layout, w.shape, w.buffer.axes) == ("OIHW", (16, 16, 3, 3), ("O", "I", "H", "W"))
    (transformed,) = [s.buffer for s in kernel.program.prepared]
    assert transformed.axes == ("T", "O", "I") and transformed.transform == "winograd F(2x2,3x3)"


def test_a_hand_built_kernel_is_taken_as_its_buffers_say():
    from convgen import ir
    x = ir.Buffer("x", ir.FLOAT32, ("C", "W"), (2, 3), ir.parse_layout("WC", ("C", "W")))
    y = ir.Buffer("y", ir.FLOAT32, ("C", "W"), (2, 3), ir.plain_layout(("C", "W")))
    c, i = ir.Var("c"), ir.Var("i")
    func = ir.Func("k", (x, y), ir.Loop(c, 2, ir.Loop(i, 3, ir.Store(y, (c, i), ir.Load(x, (c, i))))))
    takes = ir.signature(func)
    assert [(a.name, a.role, a.layout, a.shape) for a in takes.arguments] == [
        ("x", "input", "WC", (3, 2)), ("y", "output", "CW", (2, 3))]


def test_a_residual_layer_takes_r_and_others_refuse_it():
    spec = convgen.load_spec({"name": "res", "op": "conv2d", "in_channels": 4, "out_channels": 4,
                              "input_size": [6, 6], "kernel_size": 3, "padding": 1, "residual": True,
                              "activation": "relu"})
    rng = np.random.default_rng(0)
    x, r = rng.uniform(-1, 1, (1, 4, 6, 6)).astype(np.float32), rng.uniform(-1, 1, (1, 4, 6, 6)).astype(np.float32)
    w, b = rng.uniform(-1, 1, (4, 4, 3, 3)).astype(np.float32), rng.uniform(-1, 1, 4).astype(np.float32)
    kernel = convgen.build(spec)
    expected = convgen.reference(spec, x, w, b, r)
    np.testing.assert_allclose(kernel(x, w, b, r=r), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernel.bind(w, b)(x, r=r), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(KernelCallError, match="r: required"):
        kernel(x, w, b)
    with pytest.raises(KernelCallError, match="r: required"):
        kernel.bind(w, b)(x)
    plain = convgen.build({"name": "plain", "op": "conv2d", "in_channels": 4, "out_channels": 4,
                           "input_size": [6, 6], "kernel_size": 3, "padding": 1})
    with pytest.raises(KernelCallError, match="r: this layer adds no residual"):
        plain(x, w, b, r=r)
    with pytest.raises(convgen.SpecError, match="residual: not supported with dtype int8"):
        convgen.load_spec({"name": "q", "op": "conv2d", "in_channels": 4, "out_channels": 4, "input_size": [6, 6],
                           "kernel_size": 3, "residual": True, "dtype": "int8",
                           "quantization": {"input": {"scale": 0.1, "zero_point": 0},
                                            "output": {"scale": 0.1, "zero_point": 0}, "weight_scales": 0.01}})
