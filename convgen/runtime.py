"""Runtime: call a compiled kernel with NumPy arrays, and time it.

The driver (driver.py) builds a Kernel: a backend's loaded code and the
scheduled program. The kernel takes the caller's arrays as they are (any
layout change, padding or weight transform is a stage of its program) and
a workspace, which the Kernel keeps per calling thread. Parallel loops of
both backends run on the OpenMP runtime's thread pool (libgomp), outside
the GIL; its threads spin briefly between calls, so back-to-back calls do
not wait for threads to wake.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass

import numpy as np

from . import ir
from .callguard import C_CONTIGUOUS, WRITEABLE, Operand, array_fields, builtin, guard_module, python_api
from .errors import KernelCallError
from .native import jit_function, openmp
from .spec import Spec
from .target import host

# Arrays the runtime allocates start on a cache line: a 64-byte vector load or store
# from a misaligned address touches two lines (NumPy's large arrays start 16 bytes
# past one): 1-3% on dense layers, up to 2x on the depthwise default, whose loops
# walk one channel block (one line per pixel when aligned) across the image.
ALIGNMENT = 64


def empty(shape, dtype=np.float32) -> np.ndarray:
    """Like np.empty, with the data starting on a 64-byte boundary. Kernels take
    any C-contiguous array; x and out allocated here make them faster."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(shape)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + size].view(dtype).reshape(shape)


def full(shape, value, dtype=np.float32) -> np.ndarray:
    """Like np.full, in storage from `empty`."""
    array = empty(shape, dtype)
    array.fill(value)
    return array


def aligned_copy(array: np.ndarray, dtype=None) -> np.ndarray:
    """A C-contiguous copy of array in storage from `empty`."""
    copy = empty(array.shape, dtype or array.dtype)
    np.copyto(copy, array, casting="unsafe" if dtype else "no")
    return copy


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------

@dataclass
class Kernel:
    """A compiled layer. Call it as kernel(x, w, b) for conv2d (w and b default
    to the spec's own weights when it has them) or kernel(x) for pooling; pass
    out= to reuse an output array and threads= to override the thread count.
    `source` holds the emitted LLVM IR or C text; `func` the scheduled IR
    (its stages); `program` its stage functions, prepare then run;
    `signature` what it takes, read from `func` (shapes, layouts, dtypes,
    workspace bytes).

    Every argument is the caller's array as the spec describes it: layout
    changes, padding and weight transforms are stages of the program, run
    by the kernel in its workspace. A call runs the prepare step (the stages
    that read only weights) and then the run step; `bind` runs the prepare
    step once."""

    spec: Spec
    target: str
    func: ir.Func
    program: ir.Program
    source: str
    _loaded: object           # the backend's loaded code (codegen/__init__.py: Loaded)
    steps: tuple = ()
    schedule_source: str = ""  # where the steps came from (driver.SCHEDULE_SOURCES)
    recipe: object = None      # the default recipe chosen (schedule.space.Recipe), if that is where they came from
    tuned: str = ""            # the tuner's record used, or why none was (driver.choose_schedule)
    from_cache: bool = False   # loaded from the kernel cache rather than compiled (cache.py)
    threads: int = 1
    device: str = ""           # where a cuda kernel runs (on a GPU, or emulated); "" for CPU backends

    @property
    def stages(self) -> tuple:
        """The backend's loaded stages, prepare then run (codegen/__init__.py: LoadedStage)."""
        return self._loaded.stages

    def __post_init__(self):
        self.signature = ir.signature(self.func)
        self._shapes = {a.name: a.shape for a in self.signature.arguments}
        self._dtypes = {a.name: np.dtype(a.dtype) for a in self.signature.arguments}
        prepared = len(self.program.prepare)
        self._prepare, self._run = self._loaded.stages[:prepared], self._loaded.stages[prepared:]
        self._scratch = threading.local()   # per calling thread: its workspace (a call runs outside the GIL)

    def __call__(self, x: np.ndarray, w: np.ndarray | None = None, b: np.ndarray | None = None,
                 out: np.ndarray | None = None, threads: int | None = None, r: np.ndarray | None = None) -> np.ndarray:
        arrays = self._inputs(x, w, b, r)
        threads = thread_count(threads, self.threads)
        prepared = self._thread_area("prepared", self.program.prepared_bytes)
        if self._prepare:
            self._launch(self._prepare, arrays, prepared, None, threads)
        return self._run_step(arrays, prepared, out, threads)

    def bind(self, w: np.ndarray | None = None, b: np.ndarray | None = None) -> "BoundKernel":
        """Fix the weights and run the prepare step on them once, here; call the result with x alone."""
        if not self.spec.is_conv:
            raise KernelCallError(f"{self.spec.name}: bind: {self.spec.op} has no weights")
        weights = {k: v for k, v in self._inputs(None, w, b, weights_only=True).items() if k != "x"}
        return BoundKernel(self, weights)

    def _inputs(self, x, w, b, r=None, weights_only: bool = False) -> dict[str, np.ndarray]:
        """The arguments, checked against the signature (weights_only: w and b alone, for bind)."""
        spec, takes = self.spec, self.signature
        given = {"x": x}
        if "r" in takes and not weights_only:
            given["r"] = r
        elif r is not None:
            raise KernelCallError(f"{spec.name}: r: this layer adds no residual (residual: false); got an array")
        if "w" not in takes and (w is not None or b is not None):
            raise KernelCallError(f"{spec.name}: {spec.op} takes only x")
        if "w" in takes:
            given["w"] = spec.weight_array() if w is None else w
        if "b" in takes:
            given["b"] = spec.bias_array() if b is None else b
        elif b is not None:
            raise KernelCallError(f"{spec.name}: b: this layer has no bias (bias: false); got an array")
        return {name: _checked(name, array, self._shapes[name], self._dtypes[name]) for name, array in given.items()
                if not (weights_only and name == "x")}

    def _thread_area(self, name: str, size: int) -> np.ndarray:
        """This thread's workspace area of `size` bytes, made on its first call and kept."""
        area = getattr(self._scratch, name, None)
        if area is None:
            area = empty(max(size, 1), np.uint8)
            setattr(self._scratch, name, area)
        return area

    def _pointers(self, arrays: dict[str, np.ndarray], prepared: np.ndarray, scratch: np.ndarray | None) -> list[int]:
        return stage_pointers(self.program, arrays, prepared, scratch)

    def _launch(self, stages, arrays, prepared, scratch, threads: int) -> None:
        pointers = self._pointers(arrays, prepared, scratch)
        for stage in stages:
            stage.launch(pointers, threads)

    def _run_step(self, arrays: dict[str, np.ndarray], prepared: np.ndarray, out: np.ndarray | None,
                  threads: int) -> np.ndarray:
        spec = self.spec
        dtype = self._dtypes["y"]
        if out is not None and not (isinstance(out, np.ndarray) and out.flags.c_contiguous and out.flags.writeable):
            raise KernelCallError(f"{spec.name}: out: expected a writeable C-contiguous {dtype} array")
        given, callers = out is not None, out   # returned as given, even as an ndarray subclass
        if not given:
            out = empty(self._shapes["y"], dtype)
        out = _checked("out", out, self._shapes["y"], dtype)
        if any(np.may_share_memory(out, a) for a in arrays.values()):
            raise KernelCallError(f"{spec.name}: out: must not overlap an input array")
        arrays = dict(arrays, y=out)
        self._launch(self._run, arrays, prepared, self._thread_area("scratch", self.program.workspace_bytes), threads)
        return callers if given else out


@dataclass
class BoundKernel:
    """A kernel with its weights fixed and its prepare step run on them once:
    call it with x alone.

    When x and out= are arrays the kernel can take as they are, a call goes
    through the guard (callguard.py): generated code that checks both arrays
    (type, dtype, shape, contiguity, writeability, no overlap) and calls the
    run step's stages on them and the calling thread's scratch area, nothing
    allocated. Anything else takes the general path (in Python, about 20 us
    more a call)."""

    kernel: Kernel
    weights: dict[str, np.ndarray]

    def __post_init__(self):
        k = self.kernel
        # owned copies, so no caller's array can alias them (out= is checked against x only)
        self.weights = {name: aligned_copy(array) for name, array in self.weights.items()}
        self._threads = k.threads
        self._prepared = empty(max(k.program.prepared_bytes, 1), np.uint8)
        if k._prepare:
            k._launch(k._prepare, self.weights, self._prepared, None, k.threads)
        self._guard, self._guard_code = _guard(k, self.weights, self._prepared)
        self._local = threading.local()   # per calling thread: its scratch area's address
        self._has_scratch = bool(k.program.scratch)

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None, threads: int | None = None,
                 r: np.ndarray | None = None) -> np.ndarray:
        if threads is not None:
            threads = thread_count(threads, self._threads)
        if r is None and out is not None and self._guard(x, out, threads or self._threads,
                                                         self._scratch() if self._has_scratch else 0) is out:
            return out   # a residual layer has no guard: it takes the path below, which checks r
        k = self.kernel
        arrays = dict(self.weights, x=_checked("x", x, k._shapes["x"], k._dtypes["x"]))
        if "r" in k._shapes or r is not None:
            if "r" not in k._shapes:
                raise KernelCallError(f"{k.spec.name}: r: this layer adds no residual (residual: false); got an array")
            arrays["r"] = _checked("r", r, k._shapes["r"], k._dtypes["r"])
        return k._run_step(arrays, self._prepared, out, threads or self._threads)

    def _scratch(self) -> int:
        """The address of the calling thread's scratch area (the kernel's, made on its first call)."""
        try:
            return self._local.address
        except AttributeError:
            area = self.kernel._thread_area("scratch", self.kernel.program.workspace_bytes)
            self._local.address = area.ctypes.data
            return self._local.address


def stage_pointers(program: ir.Program, arrays: dict[str, np.ndarray], prepared: np.ndarray,
                   scratch: np.ndarray | None) -> list[int]:
    """What every stage function takes: the arguments, the prepared buffers, the scratch buffers."""
    pointers = [arrays[p.name].ctypes.data if p.name in arrays else 0 for p in program.params]
    pointers += [prepared.ctypes.data + s.offset for s in program.prepared]
    pointers += [scratch.ctypes.data + s.offset for s in program.scratch] if scratch is not None else \
        [0] * len(program.scratch)
    return pointers


@dataclass
class NetworkKernel:
    """A compiled network with its weights bound: call it as net(x) -> y (x
    N x C x H x W, float32 or an int8 network's int8; y as the network's
    output tensor), out= to reuse
    an output array, threads= to override the thread count. The weights'
    prepare step ran once when it was built; a call runs every layer's run
    stages in order over the calling thread's arena (`plan.memory`).
    `plan` is the compose.NetworkPlan: the fused layers, the memory plan,
    the program; `source` the emitted LLVM IR or C."""

    plan: object
    target: str
    source: str
    _loaded: object
    threads: int = 1

    def __post_init__(self):
        program = self.plan.program
        self.program = program
        network = self.plan.network
        self.input_shape = network.shape[network.input]
        self.output_shape = network.shape[network.output]
        self.dtype = np.dtype(np.int8 if network.is_quantized else np.float32)
        self._weights = {name: aligned_copy(array) for name, array in self.plan.weights.items()}
        self._prepared = empty(max(program.prepared_bytes, 1), np.uint8)
        prepared = len(program.prepare)
        self._run = self._loaded.stages[prepared:]
        for stage in self._loaded.stages[:prepared]:
            stage.launch(stage_pointers(program, self._weights, self._prepared, None), self.threads)
        self._scratch = threading.local()

    @property
    def name(self) -> str:
        return self.program.name

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
        threads = thread_count(threads, self.threads)
        x = _checked("x", x, self.input_shape, self.dtype)
        if out is None:
            out = empty(self.output_shape, self.dtype)
        elif not (isinstance(out, np.ndarray) and out.flags.c_contiguous and out.flags.writeable):
            raise KernelCallError(f"{self.name}: out: expected a writeable C-contiguous {self.dtype} array")
        out = _checked("out", out, self.output_shape, self.dtype)
        if np.may_share_memory(out, x):
            raise KernelCallError(f"{self.name}: out: must not overlap x")
        arena = getattr(self._scratch, "area", None)
        if arena is None:   # all-ones bytes, NaN as floats: a value read before it is written shows
            arena = self._scratch.area = full(max(self.program.workspace_bytes, 1), 0xFF, np.uint8)
        pointers = stage_pointers(self.program, dict(self._weights, x=x, y=out), self._prepared, arena)
        for stage in self._run:
            stage.launch(pointers, threads)
        return out


def _refuse(x, out, threads: int, scratch: int) -> None:
    """The guard of a kernel without one: every call takes the general path."""
    return None


def _guard(kernel: Kernel, weights: dict[str, np.ndarray], prepared: np.ndarray):
    """The guarded entry of a kernel, bound to these weights and prepared
    buffers, and what must live as long as it (the engine that holds its
    code, its method definition); no guard where NumPy's array fields could
    not be found, or for a kernel that runs on a GPU."""
    fields = array_fields()
    if fields is None or "r" in kernel._shapes or any(stage.convention == "cuda-device" for stage in kernel._run):
        return _refuse, None   # a GPU stage copies the arrays to the device: the general path does that
    program = kernel.program
    names = [p.name for p in program.params]
    runtime = python_api()
    if any(stage.convention != "serial" for stage in kernel._run):
        library = openmp()
        runtime.update({name: ctypes.cast(getattr(library, name), ctypes.c_void_p).value
                        for name in ("GOMP_parallel", "omp_set_num_threads")})
    first_scratch = len(program.params) + len(program.prepared)
    source = guard_module(
        fields,
        Operand(kernel._dtypes["x"], tuple(kernel._shapes["x"]), C_CONTIGUOUS),
        Operand(kernel._dtypes["y"], tuple(kernel._shapes["y"]), C_CONTIGUOUS | WRITEABLE),
        kernel._pointers(weights, prepared, None), names.index("x"), names.index("y"),
        [(ctypes.cast(stage.function, ctypes.c_void_p).value, stage.convention) for stage in kernel._run],
        [(first_scratch + i, slot.offset) for i, slot in enumerate(program.scratch)], runtime)
    function, engine = jit_function(source, "guard", host())
    guard, definition = builtin(ctypes.cast(function, ctypes.c_void_p).value, f"{kernel.spec.name}_guard")
    return guard, (engine, definition)


def is_thread_count(threads) -> bool:
    """A whole number of at least one (not a bool, not a float)."""
    return not isinstance(threads, bool) and isinstance(threads, (int, np.integer)) and threads >= 1


def thread_count(threads, default: int) -> int:
    """threads as given to a call (None: the kernel's default), checked."""
    if threads is None:
        return default
    if not is_thread_count(threads):
        raise KernelCallError(f"threads: expected a whole number of at least 1; got {threads!r}")
    return int(threads)


def poison(dtype: np.dtype):
    """A fill that marks unwritten output: NaN for floats; for ints, where every
    value is a result, the minimum (check.py instead fills `out` twice, -128 and 127)."""
    dtype = np.dtype(dtype)
    return np.nan if dtype.kind == "f" else np.iinfo(dtype).min


def _checked(name: str, array, shape, dtype: np.dtype) -> np.ndarray:
    if array is None:
        raise KernelCallError(f"{name}: required (the spec gives no values for it); got None")
    if not isinstance(array, np.ndarray):
        raise KernelCallError(f"{name}: expected a {dtype} NumPy array of shape {list(shape)}; "
                              f"got {type(array).__name__}")
    if array.dtype != dtype:
        raise KernelCallError(f"{name}: expected dtype {dtype}; got {array.dtype}")
    if array.shape != tuple(shape):
        raise KernelCallError(f"{name}: expected shape {list(shape)}; got {list(array.shape)}")
    return np.ascontiguousarray(array)


def measure(call, min_seconds: float = 0.2, max_runs: int = 100, warmup: int = 2) -> float:
    """Median seconds per call of a no-argument callable: warm-up calls first,
    then runs until min_seconds have passed (at least 5, at most max_runs)."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_seconds and len(times) < max_runs):
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return float(np.median(times))
