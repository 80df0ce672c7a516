"""Backends, one module per output language, each behind one small interface.

A backend renders the IR it is given and decides nothing: the schedule and
the passes (convgen/passes.py) made every choice before it runs. A backend
that meets a node it cannot render refuses with a CodegenError naming it.

The interface (`Backend`):
- `emit(program, target, baking=None)` -> the emitted files for an
  ir.Program (a function per stage): an object with `name` (the
  program's), `source` (the main file's text) and `files` (file name ->
  text);
- `load(emitted, target, workdir=None)` -> a `Loaded` program: compiled for
  this machine and loaded into the process (files kept in workdir if given),
  its `stages` in the program's order (prepare, then run), and its `image`,
  the compiled code as bytes (the kernel cache keeps it: convgen/cache.py);
- `restore(emitted, image, target, workdir=None)` -> the same `Loaded`
  program from an image `load` gave, without compiling;
- `LoadedStage.launch(pointers, threads)`: one call of a stage, the
  program's buffers' addresses in order (`program.buffers`: arguments, then
  workspace buffers), a parallel loop on `threads` threads.

The CPU backends take a Target (target.py), the CUDA backend a GPUTarget.

The driver (convgen/driver.py) is the one caller of emit and load.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import CodegenError, ConvgenError

CPU_BACKENDS = ("llvm", "c")        # run on this machine's CPU: what `convgen check` and `build` try by default
BACKENDS = CPU_BACKENDS + ("cuda",)  # cuda runs on a GPU, or emulated on the CPU (codegen/cuda.py)


class LoadedStage(Protocol):
    function: object      # the ctypes function (the call guard calls its address)
    convention: str       # how a call starts it: "serial", "openmp" (LLVM's entry), "c-openmp"

    def launch(self, pointers: list[int], threads: int) -> None: ...


class Loaded(Protocol):
    stages: tuple[LoadedStage, ...]
    image: bytes


class Backend(Protocol):
    name: str

    def emit(self, program, target, baking=None): ...

    def load(self, emitted, target, workdir=None) -> Loaded: ...

    def restore(self, emitted, image: bytes, target, workdir=None) -> Loaded: ...


def refuse_gpu(backend_name: str, node) -> None:
    """A CPU backend's refusal of what only a GPU runs: a loop bound to GPU
    blocks or threads, a buffer in shared memory, a barrier."""
    from .. import ir
    if isinstance(node, ir.Loop) and node.kind in ir.GPU_KINDS:
        what = f"loop {node.var.name} is bound to a GPU {node.kind[4:]} index ({node.kind}.{node.axis})"
    elif isinstance(node, ir.Allocate) and node.buffer.scope == "shared":
        what = f"buffer {node.buffer.name} is in GPU shared memory"
    elif isinstance(node, ir.Barrier):
        what = "a barrier synchronizes the threads of a GPU block"
    else:
        return
    raise CodegenError(f"{backend_name} backend: {what}; a CPU backend cannot run it (schedule it for a GPU "
                       f"target, or leave out bind and shared caches)")


def backend(name: str) -> Backend:
    """The backend called `name` (one of BACKENDS)."""
    if name == "llvm":
        from .llvm import LLVMBackend
        return LLVMBackend()
    if name == "c":
        from .c import CBackend
        return CBackend()
    if name == "cuda":
        from .cuda import CUDABackend
        return CUDABackend()
    raise ConvgenError(f"backend: expected one of {', '.join(BACKENDS)}; got {name!r}")
