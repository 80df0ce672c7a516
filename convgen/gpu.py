"""A CUDA GPU from Python: whether one is here, device memory, copies and
timing, through NVIDIA's own binding of the CUDA runtime API, cuda-bindings
(the `gpu` extra; chosen over CuPy because convgen needs only these few
calls of the runtime API, not an array library, and it is the binding NVIDIA
maintains). The kernels themselves come from nvcc (native.load_cuda) and
are launched by their emitted host code. Nothing here knows about layers.

Without cuda-bindings, a driver or a device, `present_arch()` is None and
convgen runs CUDA kernels on its emulator (codegen/cuda.py).
"""

from __future__ import annotations

from functools import lru_cache

from .errors import KernelCallError


def _runtime():
    from cuda.bindings import runtime
    return runtime


@lru_cache(maxsize=None)
def present_arch() -> str | None:
    """The first GPU's architecture as nvcc names it (sm_90), or None where
    none can run kernels here (no cuda-bindings, no driver, no device)."""
    try:
        runtime = _runtime()
        error, count = runtime.cudaGetDeviceCount()
        if error != runtime.cudaError_t.cudaSuccess or count < 1:
            return None
        attribute = runtime.cudaDeviceAttr
        major = _checked(runtime.cudaDeviceGetAttribute(attribute.cudaDevAttrComputeCapabilityMajor, 0), "attribute")
        minor = _checked(runtime.cudaDeviceGetAttribute(attribute.cudaDevAttrComputeCapabilityMinor, 0), "attribute")
    except (ImportError, RuntimeError, KernelCallError):
        return None
    return f"sm_{major}{minor}"


def _checked(result, what: str):
    """A cuda-bindings call's value, its error code (the first of what it returns) checked."""
    runtime = _runtime()
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != runtime.cudaError_t.cudaSuccess:
        raise KernelCallError(f"CUDA runtime: {what} failed: {error.name if hasattr(error, 'name') else error}")
    return values[0] if values else None


def allocate(nbytes: int) -> int:
    """Device memory of nbytes (at least one byte); its address."""
    return int(_checked(_runtime().cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes})"))


def free(address: int) -> None:
    _checked(_runtime().cudaFree(address), "cudaFree")


def to_device(device: int, host: int, nbytes: int) -> None:
    runtime = _runtime()
    _checked(runtime.cudaMemcpy(device, host, nbytes, runtime.cudaMemcpyKind.cudaMemcpyHostToDevice),
             "cudaMemcpy to the device")


def to_host(host: int, device: int, nbytes: int) -> None:
    runtime = _runtime()
    _checked(runtime.cudaMemcpy(host, device, nbytes, runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost),
             "cudaMemcpy to the host")


def elapsed_ms(run, repeats: int) -> float:
    """Milliseconds a call of `run` takes on the GPU: CUDA events around
    `repeats` calls on the default stream, divided by repeats."""
    runtime = _runtime()
    start, end = (_checked(runtime.cudaEventCreate(), "cudaEventCreate") for _ in range(2))
    try:
        _checked(runtime.cudaEventRecord(start, 0), "cudaEventRecord")
        for _ in range(repeats):
            run()
        _checked(runtime.cudaEventRecord(end, 0), "cudaEventRecord")
        _checked(runtime.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(_checked(runtime.cudaEventElapsedTime(start, end), "cudaEventElapsedTime")) / repeats
    finally:
        runtime.cudaEventDestroy(start)
        runtime.cudaEventDestroy(end)
