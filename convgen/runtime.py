"""Runtime: compile emitted code, load it, and call it with NumPy arrays.

`build(spec, target)` is the one entry point: it lowers the spec, emits code
for the backend, compiles it (LLVM: optimised at O3 for the host CPU and
JIT-compiled in process; C: the host C compiler into a shared object) and
returns a callable Kernel.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np

from . import ir
from .codegen.c import CFiles, emit_c
from .codegen.llvm import emit_llvm
from .errors import CompileError, ConvgenError, KernelCallError
from .lower import lower
from .spec import Spec, load_spec
from .target import Target, host, llvm_target_machine

BACKENDS = ("llvm", "c")


def build(spec: Spec | str | os.PathLike | dict, target: str = "llvm", schedule=None,
          workdir: str | os.PathLike | None = None) -> "Kernel":
    """Compile a layer into a callable kernel.

    spec: a Spec, or a path or dict for load_spec. target: "llvm" (JIT for the
    host CPU) or "c" (emitted C built with the host C compiler). schedule: not
    yet supported; the naive loop nest is compiled. workdir: a folder to keep
    the emitted files (and the C shared object) in; by default nothing is written.
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    if target not in BACKENDS:
        raise ConvgenError(f"build: target: expected one of {', '.join(BACKENDS)}; got {target!r}")
    if schedule is not None:
        raise ConvgenError("build: schedule: schedules are not supported yet; pass schedule=None")
    func = lower(spec)
    machine = host()
    workdir = Path(workdir) if workdir is not None else None
    if target == "llvm":
        source = emit_llvm(func, machine)
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / f"{func.name}.ll").write_text(source)
        function, keepalive = _jit(source, func.name, machine)
    else:
        files = emit_c(func)
        source = files.source
        function, keepalive = _load_c(files, machine, workdir)
    function.argtypes = [ctypes.c_void_p] * len(func.params)
    function.restype = None
    return Kernel(spec, target, func, source, function, keepalive)


def llvm_assembly(llvm_ir: str, target: Target) -> str:
    """Host assembly for LLVM IR text, after the same O3 pipeline the JIT uses."""
    module = _optimized_module(llvm_ir, target)
    return llvm_target_machine(target).emit_assembly(module)


def _optimized_module(llvm_ir: str, target: Target) -> llvm.ModuleRef:
    machine = llvm_target_machine(target)
    try:
        module = llvm.parse_assembly(llvm_ir)
        module.verify()
    except RuntimeError as err:
        raise CompileError(f"LLVM rejected the emitted IR: {err}") from None
    module.triple = target.triple
    module.data_layout = str(machine.target_data)
    options = llvm.create_pipeline_tuning_options(speed_level=3)
    builder = llvm.create_pass_builder(machine, options)
    builder.getModulePassManager().run(module, builder)
    return module


def _jit(llvm_ir: str, name: str, target: Target):
    module = _optimized_module(llvm_ir, target)
    engine = llvm.create_mcjit_compiler(module, llvm_target_machine(target))
    engine.finalize_object()
    address = engine.get_function_address(name)
    if not address:
        raise CompileError(f"LLVM JIT: function {name} not found after compilation")
    return ctypes.CFUNCTYPE(None)(address), engine


def compile_c_shared(files: CFiles, directory: Path, target: Target, extra_flags=()) -> Path:
    """Write the .c/.h pair into directory and build <name>.so from them."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{files.name}.h").write_text(files.header)
    (directory / f"{files.name}.c").write_text(files.source)
    library = directory / f"{files.name}.so"
    command = [*target.cc, "-std=c99", *target.cflags, "-fPIC", "-shared", *extra_flags,
               "-o", str(library), str(directory / f"{files.name}.c")]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise CompileError(f"C compiler failed ({' '.join(command)}):\n{result.stderr.strip()}")
    return library


def _load_c(files: CFiles, target: Target, workdir: Path | None):
    # Built and loaded from a fresh folder each time: dlopen caches by path, so
    # reloading a rebuilt library from the same path would run the old code.
    with tempfile.TemporaryDirectory(prefix="convgen-") as tmp:
        built = compile_c_shared(files, Path(tmp), target)
        library = ctypes.CDLL(str(built))
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            for path in Path(tmp).iterdir():
                shutil.copy(path, workdir / path.name)
    return getattr(library, files.name), library


@dataclass
class Kernel:
    """A compiled layer. Call it as kernel(x, w, b) for conv2d (w and b default
    to the spec's own weights when it has them) or kernel(x) for pooling.
    `source` holds the emitted LLVM IR or C text."""

    spec: Spec
    target: str
    func: ir.Func
    source: str
    _function: object
    _keepalive: object

    def __call__(self, x: np.ndarray, w: np.ndarray | None = None, b: np.ndarray | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
        spec = self.spec
        arrays = {"x": _checked("x", x, spec.input_shape)}
        if spec.is_conv:
            arrays["w"] = _checked("w", spec.weight_array() if w is None else w, spec.weight_shape)
            if spec.bias:
                arrays["b"] = _checked("b", spec.bias_array() if b is None else b, (spec.out_channels,))
            elif b is not None:
                raise KernelCallError(f"{spec.name}: b: this layer has no bias (bias: false); got an array")
        elif w is not None or b is not None:
            raise KernelCallError(f"{spec.name}: {spec.op} takes only x")
        if out is None:
            out = np.empty(spec.output_shape, dtype=np.float32)
        elif not (isinstance(out, np.ndarray) and out.flags.c_contiguous and out.flags.writeable):
            raise KernelCallError(f"{spec.name}: out: expected a writeable C-contiguous float32 array")
        arrays["y"] = _checked("out", out, spec.output_shape)
        if any(np.may_share_memory(out, a) for n, a in arrays.items() if n != "y"):
            raise KernelCallError(f"{spec.name}: out: must not overlap an input array")
        self._function(*(arrays[p.name].ctypes.data for p in self.func.params))
        return out


def _checked(name: str, array, shape) -> np.ndarray:
    if array is None:
        raise KernelCallError(f"{name}: required (the spec gives no values for it); got None")
    if not isinstance(array, np.ndarray):
        raise KernelCallError(f"{name}: expected a float32 NumPy array of shape {list(shape)}; "
                              f"got {type(array).__name__}")
    if array.dtype != np.float32:
        raise KernelCallError(f"{name}: expected dtype float32; got {array.dtype}")
    if array.shape != tuple(shape):
        raise KernelCallError(f"{name}: expected shape {list(shape)}; got {list(array.shape)}")
    return np.ascontiguousarray(array)
