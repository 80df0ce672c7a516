"""Native code in this process: LLVM IR optimised and JIT-compiled for a
target, C built into a shared object and loaded, and the OpenMP runtime that
parallel kernels of both backends run on. The backends' `load` and the
call guard use these; nothing here knows about layers or the IR.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import llvmlite.binding as llvm

from .errors import CompileError
from .target import Target, llvm_target_machine


@lru_cache(maxsize=None)
def openmp() -> ctypes.CDLL:
    """The OpenMP runtime, loaded once and visible to JIT-compiled code."""
    name = ctypes.util.find_library("gomp")
    if name is None:
        raise CompileError("parallel loops run on the OpenMP runtime, and libgomp was not found "
                           "(Debian: apt-get install libgomp1)")
    library = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    llvm.load_library_permanently(name)
    library.GOMP_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    library.GOMP_parallel.restype = None
    library.omp_set_num_threads.argtypes = [ctypes.c_int]
    return library


def llvm_assembly(llvm_ir: str, target: Target) -> str:
    """Assembly for LLVM IR text, after the same O3 pipeline the JIT uses."""
    module = optimized_module(llvm_ir, target)
    return llvm_target_machine(target).emit_assembly(module)


def optimized_module(llvm_ir: str, target: Target) -> llvm.ModuleRef:
    machine = llvm_target_machine(target)
    try:
        module = llvm.parse_assembly(llvm_ir)
        module.verify()
    except RuntimeError as err:
        raise CompileError(f"LLVM rejected the emitted IR: {err}") from None
    module.triple = target.triple
    module.data_layout = str(machine.target_data)
    options = llvm.create_pipeline_tuning_options(speed_level=3)
    # Vector code comes from the schedule's vectorize steps, not from LLVM's own
    # loop vectorizer, which (LLVM 22, llvmlite 0.50) miscompiles some maxnum
    # reductions at O2+ and can abort on an internal assertion.
    options.loop_vectorization = False
    builder = llvm.create_pass_builder(machine, options)
    passes = builder.getModulePassManager()
    passes.run(module, builder)
    # Dispose in dependency order now rather than whenever the collector gets to them.
    passes.close()
    builder.close()
    options.close()
    machine.close()
    return module


def jit_function(llvm_ir: str, name: str, target: Target):
    """(a no-argument ctypes function at `name`, the engine that keeps its code alive)."""
    functions, engine, _ = jit_functions(llvm_ir, [name], target)
    return functions[0], engine


def jit_functions(llvm_ir: str, names, target: Target):
    """([a no-argument ctypes function at each name], the engine that keeps
    their code alive, the object code it compiled, which `jit_object` loads)."""
    module = optimized_module(llvm_ir, target)
    engine = llvm.create_mcjit_compiler(module, llvm_target_machine(target))
    compiled = []
    engine.set_object_cache(notify_func=lambda _, image: compiled.append(bytes(image)))
    engine.finalize_object()
    return _functions(engine, names), engine, b"".join(compiled)


def jit_object(object_code: bytes, names, target: Target):
    """([a no-argument ctypes function at each name], the engine that keeps their
    code alive): object code from `jit_functions` loaded, without compiling."""
    empty = llvm.parse_assembly("")
    empty.triple = target.triple
    engine = llvm.create_mcjit_compiler(empty, llvm_target_machine(target))
    engine.add_object_file(llvm.ObjectFileRef.from_data(object_code))
    engine.finalize_object()
    return _functions(engine, names), engine


def _functions(engine, names) -> list:
    functions = []
    for name in names:
        address = engine.get_function_address(name)
        if not address:
            raise CompileError(f"LLVM JIT: function {name} not found after compilation")
        functions.append(ctypes.CFUNCTYPE(None)(address))
    return functions


def compile_c_shared(files: dict[str, str], name: str, directory: Path, target: Target, flags=()) -> Path:
    """Write `files` (file name -> text) into directory and build <name>.so from <name>.c."""
    directory.mkdir(parents=True, exist_ok=True)
    for file_name, text in files.items():
        (directory / file_name).write_text(text)
    library = directory / f"{name}.so"
    command = [*target.cc, "-std=c99", *target.cflags, "-fPIC", "-shared", *flags,
               "-o", str(library), str(directory / f"{name}.c")]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise CompileError(f"C compiler failed ({' '.join(command)}):\n{result.stderr.strip()}")
    return library


def load_c(files: dict[str, str], name: str, target: Target, workdir: Path | None, flags=()):
    """(the shared library built from `files` (<name>.c), loaded; its bytes, which `load_c_image` loads)."""
    # Built and loaded from a fresh folder each time: dlopen caches by path, so
    # reloading a rebuilt library from the same path would run the old code.
    with tempfile.TemporaryDirectory(prefix="convgen-") as tmp:
        built = compile_c_shared(files, name, Path(tmp), target, flags)
        library = ctypes.CDLL(str(built))
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            for path in Path(tmp).iterdir():
                shutil.copy(path, workdir / path.name)
        return library, built.read_bytes()


def load_cpp(files: dict[str, str], name: str, prelude: Path, workdir: Path | None):
    """(the shared library built from `files` (<name>.cpp) as C++17 with the
    header `prelude` included first, loaded; its bytes). The C++ compiler is
    $CXX, else c++."""
    compiler = shlex.split(os.environ.get("CXX", "c++"))
    return _load_built(files, name, workdir, "C++ compiler", lambda source, built: [
        *compiler, "-std=c++17", "-O2", "-fPIC", "-shared", "-include", str(prelude), "-DCONVGEN_CUDA_EMULATION",
        "-o", str(built), str(source.with_suffix(".cpp"))])


def load_c_image(image: bytes, name: str) -> ctypes.CDLL:
    """A shared object from `load_c`, `load_cpp` or `load_cuda`, loaded again without compiling."""
    with tempfile.TemporaryDirectory(prefix="convgen-") as tmp:   # a fresh path: see load_c
        path = Path(tmp) / f"{name}.so"
        path.write_bytes(image)
        return ctypes.CDLL(str(path))


def load_cuda(files: dict[str, str], name: str, arch: str, workdir: Path | None):
    """(the shared library nvcc builds from `files` (<name>.cu) for `arch`, loaded; its bytes)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise CompileError("nvcc was not found on PATH (it comes with the CUDA toolkit)")
    return _load_built(files, name, workdir, "nvcc", lambda source, built: [
        nvcc, f"-arch={arch}", "-O3", "-shared", "-Xcompiler", "-fPIC", "-o", str(built), str(source.with_suffix(".cu"))])


def _load_built(files: dict[str, str], name: str, workdir: Path | None, compiler: str, command):
    """(the shared library `command(source, built)` builds from `files` in a fresh
    folder, loaded; its bytes): see load_c for why a fresh folder. source is
    <name> without suffix in that folder, built the <name>.so to write."""
    with tempfile.TemporaryDirectory(prefix="convgen-") as tmp:
        directory = Path(tmp)
        for file_name, text in files.items():
            (directory / file_name).write_text(text)
        built = directory / f"{name}.so"
        arguments = command(directory / name, built)
        result = subprocess.run(arguments, capture_output=True, text=True)
        if result.returncode != 0:
            raise CompileError(f"{compiler} failed ({' '.join(arguments)}):\n{result.stderr.strip()}")
        library = ctypes.CDLL(str(built))
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            for path in directory.iterdir():
                shutil.copy(path, workdir / path.name)
        return library, built.read_bytes()


@dataclass(frozen=True)
class KernelResources:
    """What ptxas reports of one compiled CUDA kernel."""

    name: str
    registers: int
    shared_bytes: int
    stack_bytes: int
    spill_bytes: int   # stores and loads


NVCC_STRICT = ("-Werror", "all-warnings", "-Xptxas", "-v,--warn-on-spills,--warning-as-error")


def nvcc_compile(source: Path, arch: str, flags=NVCC_STRICT, device_only: bool = False) -> list[KernelResources]:
    """Compile a .cu with nvcc for `arch` (an object file next to it) and
    return ptxas's report per kernel; by default any warning, spills
    included, fails the build. device_only: the device code alone (a
    .cubin), a third of the time, which is all ptxas's report needs; the
    host side goes uncompiled. CompileError where nvcc is missing or fails."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise CompileError("nvcc was not found on PATH (it comes with the CUDA toolkit)")
    output = ("-cubin", source.with_suffix(".cubin")) if device_only else ("-c", source.with_suffix(".o"))
    command = [nvcc, f"-arch={arch}", output[0], *flags, "-o", str(output[1]), str(source)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise CompileError(f"nvcc failed ({' '.join(command)}):\n{result.stderr.strip()}")
    return parse_ptxas(result.stderr + result.stdout)


def parse_ptxas(text: str) -> list[KernelResources]:
    """The kernels of `ptxas -v` output, in the order it reports them."""
    found, name, stack, spills = [], None, 0, 0
    for line in text.splitlines():
        if (match := re.search(r"Compiling entry function '([^']+)'", line)):
            name, stack, spills = match.group(1), 0, 0
        elif (match := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            stack, spills = int(match.group(1)), int(match.group(2)) + int(match.group(3))
        elif name is not None and (match := re.search(r"Used (\d+) registers", line)):
            shared = re.search(r"(\d+) bytes smem", line)
            found.append(KernelResources(name, int(match.group(1)), int(shared.group(1)) if shared else 0,
                                         stack, spills))
            name = None
    return found
