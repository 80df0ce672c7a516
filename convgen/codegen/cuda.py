"""CUDA backend: the C-like emitter's walk with GPU hooks, writing a .cu and a .h.

Each stage of the program becomes a `__global__` kernel. A loop bound to a
GPU block or thread index (schedule/bind.py) reads blockIdx or threadIdx;
the launch gives each axis the largest extent bound to it, and a bound loop
of fewer iterations checks its index. Shared buffers are `__shared__`
arrays, barriers `__syncthreads()`, local buffers a thread's own arrays
(registers, once unrolled). Serial, unrolled and transposed loops are
written as in C; vectorized and parallel loops are CPU steps, refused here.

A host launcher per stage (`<stage>_launch`, static) and the entry
`<name>(arguments..., [workspace,] stream)` run the stages in order on a
stream; templates/cuda/ holds the boilerplate.

What the renderer refuses, because a GPU would run it wrongly: a launch
past the target's limits (threads per block, grid size, shared memory); a
store to a caller's or workspace buffer outside the loops bound to threads
(every thread of the block would run it); a local buffer declared outside
the thread loops that use it where the uses do not say which thread's part
they are (see CUDAEmitter); a barrier inside a loop bound to threads.

`CUDABackend.load` runs the emitted code on a GPU where one is here (and
cuda-bindings and nvcc: `runner()`): nvcc builds the .cu into a shared
library, and each stage is launched by its emitted host code, the arrays
copied to and from device memory around it (convgen/gpu.py). Elsewhere the
.cu is compiled as C++ with templates/cuda/emulator.h, which runs every CUDA
thread of a block as a fiber with real barriers (see there). `Kernel.device`
says which.
"""

from __future__ import annotations

import ctypes
import math
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from .. import gpu, ir
from ..errors import CodegenError
from ..native import load_c_image, load_cpp, load_cuda
from ..target import GPUTarget
from .c import C_TYPES, CLikeEmitter, argument_doc, c_name, c_table, helper_definition, helpers_in_order
from .render import TEMPLATE_DIRS, render

# gridDim and blockDim limits of every architecture since sm_30 (CUDA C++ Programming Guide)
GRID_LIMITS = {"x": 2**31 - 1, "y": 65535, "z": 65535}
BLOCK_LIMITS = {"x": 1024, "y": 1024, "z": 64}
EMULATION = "emulated on the host CPU (templates/cuda/emulator.h)"


@dataclass(frozen=True)
class Launch:
    """One stage's kernel: its grid and block sizes (x, y, z) and static shared memory."""

    name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int

    @property
    def threads(self) -> int:
        return math.prod(self.block)


@dataclass(frozen=True)
class CUDAFiles:
    """An emitted kernel: `<name>.h` and `<name>.cu`."""

    name: str
    header: str
    source: str
    arch: str
    launches: tuple[Launch, ...]   # per stage, prepare then run
    param_types: tuple[str, ...]   # what each stage takes, as C types (const float *, ...)
    param_bytes: tuple[int, ...]   # each one's size
    param_written: tuple[bool, ...]   # whether a stage may write it (outputs, workspace)

    @property
    def files(self) -> dict[str, str]:
        return {f"{self.name}.h": self.header, f"{self.name}.cu": self.source}


def emit_cuda(program: ir.Func | ir.Program, target: GPUTarget) -> CUDAFiles:
    """Render a program as a CUDA header and source file: a kernel and a
    launcher per stage, and the entry function that launches them in order."""
    if isinstance(program, ir.Func):
        program = ir.split(program)
    emitter = CUDAEmitter(program.name, _index_type(program))
    takes = list(program.buffers)
    outputs = program.outputs
    writable = [b.name in outputs or b.scope == "workspace" for b in takes]
    params = [_param(b, w, "__restrict__ ") for b, w in zip(takes, writable)]
    functions, launches = [], []
    for stage in program.stages:
        launch = _launch(stage, target)
        emitter.lines, emitter.launch = [], launch
        used = {node.buffer.name for node in ir.find_all(stage.body, (ir.Load, ir.Store))}
        for buffer in takes:
            if buffer.name not in used:
                emitter.emit(1, f"(void){buffer.name};")
        emitter.stmt(stage.body, 1)
        functions.append(dict(name=stage.name, body="\n".join(emitter.lines), threads=launch.threads,
                              grid=", ".join(map(str, launch.grid)), block=", ".join(map(str, launch.block)),
                              shared=launch.shared_bytes))
        launches.append(launch)
    arguments = list(program.params)
    workspace = program.prepared + program.scratch
    workspace_bytes = program.workspace_bytes
    entry_params = [_param(p, p.name in outputs, "") for p in arguments] + (
        ["void *workspace"] if workspace_bytes else []) + ["cudaStream_t stream"]
    steps = [dict(name=f"{program.name}_prepare", stages=[f.name for f in program.prepare]),
             dict(name=f"{program.name}_run", stages=[f.name for f in program.run])] if program.prepare else []
    context = dict(
        name=program.name, arch=target.arch,
        guard=f"CONVGEN_{program.name.upper()}_CUH",
        doc_lines=program.doc.splitlines() or [program.name],
        entry_params=entry_params,
        arg_names=[p.name for p in arguments] + (["workspace"] if workspace_bytes else []) + ["stream"],
        args=[argument_doc(p, p.name in outputs) for p in arguments],
        workspace_bytes=workspace_bytes,
        workspace=[dict(name=s.buffer.name, offset=s.offset, ctype=C_TYPES[s.buffer.dtype],
                        doc=argument_doc(s.buffer, False)) for s in workspace],
        functions=functions, steps=steps, params=params, stage_args=[b.name for b in takes],
    )
    tables = {b.name: b for stage in program.stages for b in ir.constant_buffers(stage.body)}
    source = render("cuda/kernel.cu.j2", includes=sorted(emitter.includes),
                    tables=[c_table(emitter.c_array_name(b), b.dtype, b.values, storage="static __device__ const")
                            for b in tables.values()],
                    helpers=[_device_helper(key, emitter.index_type) for key in helpers_in_order(emitter.helpers)], **context)
    header = render("cuda/kernel.h.j2", **context)
    return CUDAFiles(program.name, header, source, target.arch, tuple(launches),
                     tuple(f"{'' if w else 'const '}{C_TYPES[b.dtype]} *" for b, w in zip(takes, writable)),
                     tuple(b.nbytes for b in takes), tuple(writable))


def _param(buffer: ir.Buffer, writable: bool, restrict: str) -> str:
    return f"{'' if writable else 'const '}{C_TYPES[buffer.dtype]} *{restrict}{buffer.name}"


def _device_helper(key, index_type: str) -> str:
    """A C helper as a device function (it is called from kernels only), on the kernel's index type:
    each of its definitions (a helper may define itself apart for some C compilers)."""
    text = helper_definition(key).replace("static inline", "static __device__ __forceinline__")
    return text.replace("ptrdiff_t", index_type)


# Index arithmetic in 32 bits where it cannot overflow: a GPU does 64-bit integer
# division and modulo (fused loops' indices) in many instructions.
INT_INDEX_LIMIT = 2**30


def _index_type(program: ir.Program) -> str:
    """int where every buffer has fewer than INT_INDEX_LIMIT elements (every
    index, and every partial sum of one, stays below it), else ptrdiff_t."""
    buffers = list(program.buffers) + [a.buffer for stage in program.stages
                                       for a in ir.find_all(stage.body, ir.Allocate)]
    loops = [loop.extent for stage in program.stages for loop in ir.find_all(stage.body, ir.Loop)]
    largest = max([b.size for b in buffers] + loops + [1])
    return "int" if largest < INT_INDEX_LIMIT else "ptrdiff_t"


def _launch(stage: ir.Func, target: GPUTarget) -> Launch:
    """The grid and block a stage's bound loops ask for, checked against the GPU's limits."""
    extents = {}
    for loop in ir.find_all(stage.body, ir.Loop):
        if loop.kind in ir.GPU_KINDS:
            key = (loop.kind, loop.axis)
            extents[key] = max(extents.get(key, 1), loop.extent)
    grid = tuple(extents.get(("gpu_block", axis), 1) for axis in ir.GPU_AXES)
    block = tuple(extents.get(("gpu_thread", axis), 1) for axis in ir.GPU_AXES)
    where = f"CUDA backend: stage {stage.name}"
    for axis, size in zip(ir.GPU_AXES, grid):
        if size > GRID_LIMITS[axis]:
            raise CodegenError(f"{where}: {size} blocks along {axis}; a grid takes at most {GRID_LIMITS[axis]}")
    for axis, size in zip(ir.GPU_AXES, block):
        if size > BLOCK_LIMITS[axis]:
            raise CodegenError(f"{where}: {size} threads along {axis}; a block takes at most {BLOCK_LIMITS[axis]}")
    if math.prod(block) > target.max_threads_per_block:
        raise CodegenError(f"{where}: {math.prod(block)} threads a block; {target.name} runs at most "
                           f"{target.max_threads_per_block}")
    shared = sum(a.buffer.nbytes for a in ir.find_all(stage.body, ir.Allocate) if a.buffer.scope == "shared")
    if shared > target.shared_bytes_per_block:
        raise CodegenError(f"{where}: {shared} bytes of shared memory a block; {target.name} gives at most "
                           f"{target.shared_bytes_per_block} to static __shared__ arrays")
    return Launch(stage.name, grid, block, shared)


class CUDAEmitter(CLikeEmitter):
    """The C emitter's walk, with loops bound to blocks and threads, shared
    memory and barriers, and the checks that keep a kernel race-free.

    A local buffer declared outside the loops bound to threads (a block's
    register tile, which cache_write makes at a block loop so that it lives
    across a loop of shared-memory stages) is held by the threads in parts:
    where every use inside thread loops indexes an axis with the index of a
    thread loop bound to one GPU axis, of the axis's extent, each thread
    keeps only its own part along it, and that axis is left out of the
    array the thread declares."""

    language = "CUDA"

    def __init__(self, name: str, index_type: str = "ptrdiff_t"):
        super().__init__(name)
        self.index_type = index_type
        self.launch: Launch | None = None
        self.thread_depth = 0                      # loops bound to threads around the statement being written
        self.parts: dict[str, tuple[int, ...]] = {}   # local buffer -> the axes its threads hold in parts

    def loop_header(self, node: ir.Loop, var: str) -> list[str]:
        if node.kind in ("vectorized", "parallel"):
            raise CodegenError(f"CUDA backend: loop {node.var.name} is {node.kind}, a CPU step; "
                               f"bind it to GPU blocks or threads instead")
        if node.kind not in ir.GPU_KINDS:
            return super().loop_header(node, var)
        block = node.kind == "gpu_block"
        index = f"{'blockIdx' if block else 'threadIdx'}.{node.axis}"
        sizes = self.launch.grid if block else self.launch.block
        if node.extent < sizes[ir.GPU_AXES.index(node.axis)]:
            return [f"if (const {self.index_type} {var} = {index}; {var} < {node.extent}) {{"]
        return [f"{{ const {self.index_type} {var} = {index};"]

    def dot_loop(self, node: ir.Loop, depth: int) -> None:
        """A GPU thread runs a dot loop as the plain loop it means."""
        super().stmt_Loop(replace(node, kind="serial"), depth)

    def lanes_loop(self, node: ir.Loop, depth: int) -> bool:
        return False   # a vectorized loop is a CPU step, which loop_header refuses

    def stmt_Loop(self, node: ir.Loop, depth: int) -> None:
        bound = node.kind == "gpu_thread"
        self.thread_depth += bound
        start = len(self.lines)
        super().stmt_Loop(node, depth)
        self.thread_depth -= bound
        var = c_name(node.var.name)
        if node.kind in ir.GPU_KINDS and not any(re.search(rf"\b{var}\b", line) for line in self.lines[start + 1:]):
            # where the index picks only a thread's part of a block's tile, the code may not name it
            self.lines[start] += f" (void){var};"

    def stmt_Allocate(self, node: ir.Allocate, depth: int) -> None:
        if node.buffer.scope == "local":
            self.parts[node.buffer.name] = _thread_parts(node)
        super().stmt_Allocate(node, depth)

    def declare_local(self, buffer: ir.Buffer) -> str:
        if buffer.scope == "shared":
            return f"__shared__ {C_TYPES[buffer.dtype]} {buffer.name}[{buffer.size}];"
        own = _own_part(buffer, self.parts.get(buffer.name, ()))
        return f"{C_TYPES[buffer.dtype]} {buffer.name}[{own.size}];"

    def barrier(self) -> str:
        if self.thread_depth:
            raise CodegenError("CUDA backend: a barrier inside a loop bound to threads; every thread of the "
                               "block must reach it, so it goes between thread loops")
        return "__syncthreads();"

    def stmt_Store(self, node: ir.Store, depth: int) -> None:
        scope = node.buffer.scope
        if scope in ("global", "workspace") and not self.thread_depth and self.launch.threads > 1:
            raise CodegenError(f"CUDA backend: the store to {node.buffer.name} is outside the loops bound to "
                               f"threads, so all {self.launch.threads} threads of a block would run it; "
                               f"bind a loop around it to threads")
        super().stmt_Store(node, depth)

    def access(self, buffer: ir.Buffer, indices) -> str:
        parts = self.parts.get(buffer.name, ()) if buffer.scope == "local" else ()
        if parts:
            buffer = _own_part(buffer, parts)
            indices = [index for k, index in enumerate(indices) if k not in parts]
        return super().access(buffer, indices)


def _own_part(buffer: ir.Buffer, parts: tuple[int, ...]) -> ir.Buffer:
    """A local buffer as one thread declares it: without the axes its threads hold in parts."""
    if not parts:
        return buffer
    axes = tuple(a for k, a in enumerate(buffer.axes) if k not in parts)
    shape = tuple(e for k, e in enumerate(buffer.shape) if k not in parts)
    return ir.Buffer(buffer.name, buffer.dtype, axes or ("i",), shape or (1,), ir.plain_layout(axes or ("i",)),
                     scope="local")


def _thread_parts(allocation: ir.Allocate) -> tuple[int, ...]:
    """The axes of a local buffer that its threads hold in parts (see CUDAEmitter):
    none where no use is inside a thread loop of the allocation; refused where
    some use inside one does not say which thread's part it is."""
    buffer = allocation.buffer
    uses = list(_uses(allocation.body, buffer.name, {}))
    threaded = [(indices, bound) for indices, bound in uses if bound]
    if not threaded:
        return ()
    parts = {}
    for k, extent in enumerate(buffer.shape):
        axes = {bound.get(index.name) if isinstance(index, ir.Var) else None for index, (_, bound) in
                zip((indices[k] for indices, _ in threaded), threaded)}
        if len(axes) == 1 and None not in axes and next(iter(axes))[1] == extent:
            parts[k] = next(iter(axes))[0]
    held = set(parts.values())
    if len(held) != len(parts) or any(set(a for a, _ in bound.values()) - held for _, bound in threaded) \
            or len(threaded) != len(uses):
        raise CodegenError(f"CUDA backend: local buffer {buffer.name} is declared outside a loop bound to threads "
                           f"and used inside it, where not every use says which thread's part it is (an axis "
                           f"indexed by the thread loop's own index): each thread would have its own copy; "
                           f"allocate it inside the thread loops (e.g. cache_write at a thread loop)")
    return tuple(sorted(parts))


def _uses(stmt: ir.Stmt, name: str, bound: dict):
    """(indices, {thread loop var: (GPU axis, extent)} around it) of each load and store of `name`."""
    if isinstance(stmt, ir.Loop):
        inner = dict(bound, **{stmt.var.name: (stmt.axis, stmt.extent)}) if stmt.kind == "gpu_thread" else bound
        yield from _uses(stmt.body, name, inner)
        return
    children = {ir.Seq: lambda s: s.body, ir.If: lambda s: (s.then,) + ((s.orelse,) if s.orelse else ()),
                ir.Allocate: lambda s: (s.body,), ir.Stage: lambda s: (s.body,)}
    for kind, get in children.items():
        if isinstance(stmt, kind):
            if isinstance(stmt, ir.If):
                yield from _expression_uses(stmt.cond, name, bound)
            for child in get(stmt):
                yield from _uses(child, name, bound)
            return
    if isinstance(stmt, ir.Store):
        if stmt.buffer.name == name:
            yield stmt.indices, bound
        yield from _expression_uses(stmt.value, name, bound)


def _expression_uses(expr: ir.Expr, name: str, bound: dict):
    for load in ir.find_all(expr, ir.Load):
        if load.buffer.name == name:
            yield load.indices, bound


# ---------------------------------------------------------------------------
# The backend interface: emitted CUDA, run on a GPU where there is one, else emulated
# ---------------------------------------------------------------------------

def emulator_header() -> Path:
    return next(d / "cuda" / "emulator.h" for d in TEMPLATE_DIRS if (d / "cuda" / "emulator.h").exists())


def runner() -> str:
    """Where a cuda kernel built now runs: "gpu sm_XY" (a GPU, cuda-bindings and
    nvcc are here), else "emulator"."""
    arch = gpu.present_arch()
    return f"gpu {arch}" if arch is not None and shutil.which("nvcc") else "emulator"


def _glue(emitted: CUDAFiles, emulated: bool) -> str:
    """A file that includes the .cu and exports each stage to ctypes: `<stage>_call`
    launches it on the default stream, waits for it and returns the status;
    `<stage>_enqueue` only launches it (for timing a sequence of launches)."""
    pointers = ", ".join(f"void *p{k}" for k in range(len(emitted.param_types)))
    casts = ", ".join(f"({t})p{k}" for k, t in enumerate(emitted.param_types))
    lines = [f'#include "{emitted.name}.cu"', ""]
    for launch in emitted.launches:
        lines.append(f'extern "C" int {launch.name}_call({pointers}) {{ cudaError_t status = '
                     f'{launch.name}_launch({casts}, 0); return status ? status : cudaDeviceSynchronize(); }}')
        lines.append(f'extern "C" int {launch.name}_enqueue({pointers}) {{ return {launch.name}_launch({casts}, 0); }}')
    if emulated:
        lines += ['extern "C" const char *convgen_emulation_failure() { return convgen_emulator::failure; }',
                  'extern "C" void convgen_emulation_reset() { convgen_emulator::failure[0] = 0; }']
    return "\n".join(lines + [""])


class CUDABackend:
    """emulate: run on the emulator even where a GPU is here (the emulator's own tests)."""

    name = "cuda"

    def __init__(self, emulate: bool = False):
        self.emulate = emulate

    def _runner(self) -> str:
        return "emulator" if self.emulate else runner()

    def emit(self, program: ir.Program, target: GPUTarget, baking=None) -> CUDAFiles:
        if baking is not None:
            raise CodegenError("CUDA backend: baked weights are for firmware C; a CUDA kernel takes them as "
                               "arguments in device memory")
        return emit_cuda(program, target)

    def load(self, emitted: CUDAFiles, target: GPUTarget, workdir: Path | None = None) -> "CUDALoaded":
        where = self._runner()
        if where == "emulator":
            files = dict(emitted.files, **{f"{emitted.name}_emulated.cpp": _glue(emitted, True)})
            library, image = load_cpp(files, f"{emitted.name}_emulated", emulator_header(), workdir)
        else:
            files = dict(emitted.files, **{f"{emitted.name}_gpu.cu": _glue(emitted, False)})
            library, image = load_cuda(files, f"{emitted.name}_gpu", where.split()[1], workdir)
        return self._loaded(emitted, library, image, where)

    def restore(self, emitted: CUDAFiles, image: bytes, target: GPUTarget,
                workdir: Path | None = None) -> "CUDALoaded":
        """The kernel cache keys cuda entries by runner() (cache.py), so the image is for this one."""
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            for file_name, text in emitted.files.items():
                (workdir / file_name).write_text(text)
        where = self._runner()
        suffix = "emulated" if where == "emulator" else "gpu"
        return self._loaded(emitted, load_c_image(image, f"{emitted.name}_{suffix}"), image, where)

    @staticmethod
    def _loaded(emitted: CUDAFiles, library, image: bytes, where: str) -> "CUDALoaded":
        stages = []
        for launch in emitted.launches:
            function = getattr(library, f"{launch.name}_call")
            function.argtypes = [ctypes.c_void_p] * len(emitted.param_types)
            function.restype = ctypes.c_int
            if where == "emulator":
                library.convgen_emulation_failure.restype = ctypes.c_char_p
                stages.append(EmulatedStage(function, library, launch))
            else:
                enqueue = getattr(library, f"{launch.name}_enqueue")
                enqueue.argtypes, enqueue.restype = function.argtypes, ctypes.c_int
                stages.append(DeviceStage(function, enqueue, launch, emitted.param_bytes, emitted.param_written))
        device = EMULATION if where == "emulator" else f"on the GPU ({where.split()[1]})"
        return CUDALoaded(tuple(stages), library, image, device)


@dataclass
class CUDALoaded:
    stages: tuple
    library: object
    image: bytes
    device: str


@dataclass
class EmulatedStage:
    function: object
    library: object
    launch_config: Launch
    convention = "serial"

    def launch(self, pointers: list[int], threads: int) -> None:
        """One launch, run on this CPU thread; a failed launch (a barrier not all threads reach) raises."""
        self.library.convgen_emulation_reset()
        status = self.function(*pointers)
        if status:
            failure = self.library.convgen_emulation_failure().decode()
            raise CodegenError(f"CUDA emulator: launch of {self.launch_config.name} failed: {failure}")


@dataclass
class DeviceStage:
    """A stage run on the GPU. `launch` takes the caller's host arrays (the
    runtime's protocol): it copies each into device memory, launches, waits,
    and copies back what the stage may write. `launch_on_device` takes device
    addresses, for timing."""

    function: object              # launch, wait, return the status
    enqueue: object               # launch only
    launch_config: Launch
    nbytes: tuple[int, ...]       # each parameter's size
    written: tuple[bool, ...]     # which parameters the stage may write (outputs, workspace)
    convention = "cuda-device"    # the call guard cannot run it (it passes host arrays)

    def launch(self, pointers: list[int], threads: int) -> None:
        device = [gpu.allocate(n) if host else 0 for host, n in zip(pointers, self.nbytes)]
        try:
            for host, address, n in zip(pointers, device, self.nbytes):
                if host:
                    gpu.to_device(address, host, n)
            self.launch_on_device(device)
            for host, address, n, written in zip(pointers, device, self.nbytes, self.written):
                if host and written:
                    gpu.to_host(host, address, n)
        finally:
            for address in device:
                if address:
                    gpu.free(address)

    def launch_on_device(self, device: list[int], wait: bool = True) -> None:
        """One launch on device addresses; wait=False returns once it is queued."""
        status = (self.function if wait else self.enqueue)(*device)
        if status:
            raise CodegenError(f"CUDA: launch of {self.launch_config.name} failed with cudaError {status}")
