"""Runtime: call a compiled kernel with NumPy arrays, and time it.

The driver (driver.py) builds a Kernel: a backend's loaded code and the
scheduled IR. A kernel's buffers may differ from the caller's arrays
(another layout, a padded input); the Kernel converts on the way in and
out. Parallel loops of both backends run on the OpenMP runtime's thread
pool (libgomp), outside the GIL; its threads spin briefly between calls, so
back-to-back calls do not wait for threads to wake.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, replace

import numpy as np

from . import ir
from .callguard import C_CONTIGUOUS, WRITEABLE, Operand, array_fields, guard_module
from .errors import KernelCallError
from .ir.signature import differs_from_caller
from .native import jit_function, openmp
from .schedule.winograd import WEIGHT_TRANSFORMS
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
# Converting between the caller's arrays and the kernel's buffers
# ---------------------------------------------------------------------------

_NUMPY_PAD = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def _split_axes(buffer: ir.Buffer) -> list[tuple[str, int]]:
    """(axis, block) for each axis in logical order, blocked axes as (outer 0, inner b)."""
    parts = []
    for axis in buffer.axes:
        block = buffer.block(axis)
        parts += [(axis, 0), (axis, block)] if block else [(axis, 0)]
    return parts


def _storage_order(buffer: ir.Buffer) -> list[int]:
    parts = _split_axes(buffer)
    return [parts.index((d.axis, d.block)) for d in buffer.layout]


def _pads_only(buffer: ir.Buffer, user_layout: str) -> bool:
    """The buffer holds the caller's axes in the caller's order: at most padding differs."""
    return buffer.layout == ir.parse_layout(user_layout, buffer.axes)


def _user_pad_widths(buffer: ir.Buffer, user_layout: str) -> list[tuple[int, int]]:
    """The buffer's padding per axis of the caller's array."""
    return [buffer.pad[buffer.axes.index(a)] for a in user_layout]


def _pad(array: np.ndarray, widths, buffer: ir.Buffer) -> np.ndarray:
    """array padded as the buffer says; constant padding by filling a new array
    and copying the interior, which is several times faster than np.pad."""
    if buffer.pad_mode != "constant":
        return np.pad(array, widths, mode=_NUMPY_PAD[buffer.pad_mode])
    shape = tuple(n + lo + hi for n, (lo, hi) in zip(array.shape, widths))
    padded = full(shape, buffer.pad_value, array.dtype)
    padded[tuple(slice(lo, lo + n) for n, (lo, _) in zip(array.shape, widths))] = array
    return padded


def to_storage(array: np.ndarray, user_layout: str, buffer: ir.Buffer) -> np.ndarray:
    """The caller's array (axes in user_layout order) as the kernel's buffer: padded, blocked, reordered.
    The array itself when the buffer is laid out as the caller's."""
    if buffer.transform:  # e.g. Winograd's weights: the transform gives the buffer's logical axes
        array, user_layout = WEIGHT_TRANSFORMS[buffer.transform](array), "".join(buffer.axes)
    if not differs_from_caller(replace(buffer, transform=""), user_layout):
        return array
    if _pads_only(buffer, user_layout):
        return _pad(array, _user_pad_widths(buffer, user_layout), buffer)
    logical = np.transpose(array, [user_layout.index(a) for a in buffer.axes])
    if buffer.pad:
        logical = _pad(logical, buffer.pad, buffer)
    shape = []
    for axis, extent in zip(buffer.axes, logical.shape):
        block = buffer.block(axis)
        shape += [-(-extent // block), block] if block else [extent]
    rounded = [(0, -e % buffer.block(a)) if buffer.block(a) else (0, 0) for a, e in zip(buffer.axes, logical.shape)]
    if any(r for _, r in rounded):
        logical = np.pad(logical, rounded)  # blocks past the last channel hold zeros
    split = logical.reshape(shape)
    return aligned_copy(np.transpose(split, _storage_order(buffer)), buffer.dtype)


def from_storage(storage: np.ndarray, buffer: ir.Buffer, user_layout: str) -> np.ndarray:
    """The kernel's output buffer as the caller's array (inverse of to_storage, without padding)."""
    if not differs_from_caller(buffer, user_layout):
        return storage.reshape(buffer.storage_shape)
    split = np.transpose(storage, np.argsort(_storage_order(buffer)))
    merged = []
    for axis in buffer.axes:
        block = buffer.block(axis)
        merged.append(-(-buffer.extent(axis) // block) * block if block else buffer.extent(axis))
    logical = split.reshape(merged)[tuple(slice(0, e) for e in buffer.shape)]
    return np.transpose(logical, [buffer.axes.index(a) for a in user_layout])


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------

@dataclass
class Kernel:
    """A compiled layer. Call it as kernel(x, w, b) for conv2d (w and b default
    to the spec's own weights when it has them) or kernel(x) for pooling; pass
    out= to reuse an output array and threads= to override the thread count.
    `source` holds the emitted LLVM IR or C text; `func` the scheduled IR;
    `signature` what it takes, read from `func` (shapes, layouts, dtypes)."""

    spec: Spec
    target: str
    func: ir.Func
    source: str
    _loaded: object           # the backend's loaded code (codegen/__init__.py: Loaded)
    steps: tuple = ()
    schedule_source: str = ""  # where the steps came from (driver.SCHEDULE_SOURCES)
    threads: int = 1

    def __post_init__(self):
        self.signature = ir.signature(self.func)
        arguments = self.signature.arguments
        self._layouts = {a.name: a.layout for a in arguments}
        self._shapes = {a.name: a.shape for a in arguments}
        # decided once: which of the kernel's buffers differ from the caller's arrays
        self._params = {a.name: a.buffer for a in arguments}
        self._converts = {a.name: a.converts for a in arguments}
        self._dtypes = {a.name: np.dtype(a.dtype) for a in arguments}
        # an input that differs from the caller's only by constant padding is copied into a kept buffer
        x, x_layout = self._params["x"], self._layouts["x"]
        self._pads_only_x = (self._converts["x"] and not x.transform and x.pad_mode == "constant"
                             and _pads_only(x, x_layout))
        if self._pads_only_x:
            self._x_interior = tuple(slice(lo, lo + n) for (lo, _), n in
                                     zip(_user_pad_widths(x, x_layout), self._shapes["x"]))
        self._scratch = threading.local()

    def __call__(self, x: np.ndarray, w: np.ndarray | None = None, b: np.ndarray | None = None,
                 out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
        return self._run(self._inputs(x, w, b), out, threads)

    def bind(self, w: np.ndarray | None = None, b: np.ndarray | None = None) -> "BoundKernel":
        """Fix the weights (converted to the kernel's layout once, here); call the result with x alone."""
        if not self.spec.is_conv:
            raise KernelCallError(f"{self.spec.name}: bind: {self.spec.op} has no weights")
        return BoundKernel(self, {k: v for k, v in self._inputs(None, w, b).items() if k != "x"})

    def _inputs(self, x, w, b) -> dict[str, np.ndarray]:
        """The arguments checked against the caller's shapes and converted to the kernel's buffers."""
        spec, takes = self.spec, self.signature
        given = {"x": x}
        if "w" not in takes and (w is not None or b is not None):
            raise KernelCallError(f"{spec.name}: {spec.op} takes only x")
        if "w" in takes:
            given["w"] = spec.weight_array() if w is None else w
        if "b" in takes:
            given["b"] = spec.bias_array() if b is None else b
        elif b is not None:
            raise KernelCallError(f"{spec.name}: b: this layer has no bias (bias: false); got an array")
        return {name: self._convert(name, array) for name, array in given.items()
                if not (name == "x" and array is None)}

    def _convert(self, name: str, array) -> np.ndarray:
        array = _checked(name, array, self._shapes[name], self._dtypes[name])
        if name == "x" and self._pads_only_x:
            return self._padded_x(array)
        return to_storage(array, self._layouts[name], self._params[name]) if self._converts[name] else array

    def _padded_x(self, x: np.ndarray) -> np.ndarray:
        """x copied into this thread's padded input buffer, made (and its border
        filled) on the thread's first call: a fresh array per call would cost
        an allocation, page faults and a fill of the whole buffer every time.
        One buffer per thread, since a call runs outside the GIL."""
        padded = getattr(self._scratch, "x", None)
        if padded is None:
            padded = self._scratch.x = to_storage(x, self._layouts["x"], self._params["x"])
            return padded
        np.copyto(padded[self._x_interior], x)
        return padded

    def _run(self, arrays: dict[str, np.ndarray], out: np.ndarray | None, threads: int | None) -> np.ndarray:
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
        y, converting = self._params["y"], self._converts["y"]
        # A converted output starts as the caller's out (which check.py poisons) or poisoned, so an
        # element the kernel misses keeps that value rather than passing for a result.
        if converting:
            arrays["y"] = (to_storage(out, self._layouts["y"], y) if given   # a converted copy, aligned
                           else full(y.storage_shape, poison(dtype), dtype))
        else:
            arrays["y"] = out
        pointers = [arrays[p.name].ctypes.data for p in self.func.params]
        self._loaded.launch(pointers, thread_count(threads, self.threads))
        if converting:
            np.copyto(out, from_storage(arrays["y"], y, self._layouts["y"]))
        return callers if given else out


@dataclass
class BoundKernel:
    """A kernel with its weights fixed and converted once: call it with x alone.

    When x and out= are the kernel's own buffers (no layout change; x at
    most padded, into the kernel's kept buffer), a call goes through the
    guard (callguard.py): generated code that checks both arrays (type,
    dtype, shape, contiguity, writeability, no overlap) and calls the kernel,
    nothing allocated or converted. Anything else takes the general path."""

    kernel: Kernel
    weights: dict[str, np.ndarray]

    def __post_init__(self):
        k = self.kernel
        # owned copies, so no caller's array can alias them (out= is checked against x only)
        self.weights = {name: aligned_copy(array) for name, array in self.weights.items()}
        self._pads_x, self._threads = k._pads_only_x, k.threads
        self._x_shape, self._x_type = k._shapes["x"], k._dtypes["x"]
        direct = (k._pads_only_x or not k._converts["x"]) and not k._converts["y"]
        self._guard, self._guard_engine = _guard(k, self.weights) if direct else (_refuse, None)

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
        if threads is not None:
            threads = thread_count(threads, self._threads)
        if out is not None:
            if self._pads_x and type(x) is np.ndarray and x.shape == self._x_shape and x.dtype == self._x_type:
                if self._guard(id(self.kernel._padded_x(x)), id(out), threads or self._threads) == 0:
                    return out
            elif self._guard(id(x), id(out), threads or self._threads) == 0:
                return out
        arrays = dict(self.weights, x=self.kernel._convert("x", x))
        return self.kernel._run(arrays, out, threads)


def _refuse(x: int, y: int, threads: int) -> int:
    """The guard of a kernel without one: every call takes the general path."""
    return 1


def _guard(kernel: Kernel, weights: dict[str, np.ndarray]):
    """The guarded entry of a kernel whose x and y the caller may pass as they
    are, bound to these weights, and the engine that holds its code; no guard
    where NumPy's array fields could not be found."""
    fields = array_fields()
    if fields is None:
        return _refuse, None
    names = [p.name for p in kernel.func.params]
    x, y = kernel._params["x"], kernel._params["y"]
    runtime = {"ndarray": id(np.ndarray)}
    launch = kernel._loaded.convention
    if launch != "serial":
        library = openmp()
        runtime.update({name: ctypes.cast(getattr(library, name), ctypes.c_void_p).value
                        for name in ("GOMP_parallel", "omp_set_num_threads")})
    source = guard_module(
        fields,
        Operand(kernel._dtypes["x"], tuple(x.storage_shape), C_CONTIGUOUS),
        Operand(kernel._dtypes["y"], tuple(y.storage_shape), C_CONTIGUOUS | WRITEABLE),
        [weights[n].ctypes.data if n in weights else 0 for n in names], names.index("x"), names.index("y"),
        ctypes.cast(kernel._loaded.function, ctypes.c_void_p).value, launch, runtime)
    function, engine = jit_function(source, "guard", host())
    function.argtypes = [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function, engine


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
