"""Firmware: build emitted C for a microcontroller target, run it under QEMU,
and report what it costs (code size, stack, caller RAM, instructions).

This sits beside the runtime: where the runtime calls kernels in process,
this module cross-compiles them with the target's compiler (arm-none-eabi-gcc)
into a bare-metal program (templates/firmware/: vector table, linker script,
a main that feeds baked-in inputs and prints the outputs over semihosting) and
runs it on the emulated board named by the target's `qemu` field.

Instructions are counted, not cycles: QEMU runs with `-icount shift=0` (one
instruction per virtual nanosecond), and main reads SysTick, which counts the
board's clock (`qemu_clock_hz`), before and after each call. A count is good to
one tick (40 instructions at 25 MHz). QEMU is not cycle-accurate: a load, a
multiply-accumulate and a taken branch count one each.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import ir
from .check import output_fills
from .codegen.c import C_TYPES, Baking, CFiles, c_literals
from .codegen.render import TEMPLATE_DIRS, render
from .driver import emit, plan
from .errors import CompileError, ConvgenError
from .spec import Spec
from .target import Target

STRICT_FLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffreestanding")


def require_tool(command: str) -> str:
    """The path of a command, or a clear error naming the Debian package that has it."""
    found = shutil.which(command)
    if found is None:
        package = {"arm-none-eabi-gcc": "gcc-arm-none-eabi", "arm-none-eabi-size": "binutils-arm-none-eabi",
                   "qemu-system-arm": "qemu-system-arm"}.get(command, command)
        raise ConvgenError(f"{command}: not found; install it (Debian: apt-get install {package})")
    return found


def _template_file(name: str) -> Path:
    return next(d / "firmware" / name for d in TEMPLATE_DIRS if (d / "firmware" / name).exists())


def compile_object(files: CFiles, target: Target, folder: Path) -> Path:
    """Compile the kernel's .c alone with the target's compiler and the strict flags
    (and -fstack-usage, whose .su file `report` reads)."""
    require_tool(target.cc[0])
    folder = folder.resolve()  # the compiler runs in folder; relative paths would be read from there
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{files.name}.h").write_text(files.header)
    source = folder / f"{files.name}.c"
    source.write_text(files.source)
    obj = folder / f"{files.name}.o"
    _run([*target.cc, *target.cflags, *STRICT_FLAGS, "-fstack-usage", "-c", str(source), "-o", str(obj)],
         cwd=folder)
    return obj


@dataclass(frozen=True)
class Report:
    """What a kernel costs on a target: bytes of code and constants (text), of
    initialised (data) and zeroed (bss) memory, the kernel's own stack frame,
    and the bytes of the arrays the caller passes in and out."""

    target: str
    text: int
    data: int
    bss: int
    stack: int
    stack_kind: str
    caller_bytes: int
    workspace_bytes: int = 0
    instructions: int | None = None   # per call, under QEMU; None where not run
    macs: int = 0                     # multiply-adds per call, for instructions per MAC
    not_run: str = ""                 # why instructions were not counted

    def lines(self) -> list[str]:
        lines = [f"target {self.target}",
                 f"code size: text {self.text} B (code and const data), data {self.data} B, bss {self.bss} B",
                 f"stack: {self.stack} B ({self.stack_kind}, the kernel's own frame)",
                 f"caller RAM: {self.caller_bytes} B of argument arrays, {self.workspace_bytes} B workspace"]
        if self.instructions is not None:
            per_mac = f", {self.instructions / self.macs:.2f} per MAC" if self.macs else ""
            lines.append(f"instructions: {self.instructions:,} per call{per_mac} (executed under QEMU -icount, "
                         f"counted by SysTick to one tick; not cycles)")
        elif self.not_run:
            lines.append(f"instructions: not counted ({self.not_run})")
        return lines


def report(func: ir.Func, files: CFiles, target: Target, folder: Path,
           arrays: dict[str, np.ndarray] | None = None, macs: int = 0) -> Report:
    """Compile the kernel for the target and measure it; baked arrays count in
    text (they are const data), not in the caller's RAM. With `arrays` (the
    arguments it reads, as for run_on_qemu), the kernel also runs on the
    target's emulated board, where there is one and QEMU is installed, and
    the report counts the instructions of a call."""
    obj = compile_object(files, target, folder)
    size_tool = target.cc[0].replace("gcc", "size") if target.cc[0].endswith("gcc") else "size"
    require_tool(size_tool)
    out = _run([size_tool, str(obj)], cwd=folder)
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    usage = (folder / f"{files.name}.su").read_text()
    frames = {}
    for function in dict.fromkeys((files.name,) + files.stages):
        match = re.search(rf":{re.escape(function)}\s+(\d+)\s+(\S+)", usage)
        if match is None:
            raise CompileError(f"{folder / files.name}.su: no stack figure for {function}: {usage.strip()!r}")
        frames[function] = (int(match.group(1)), match.group(2))
    # the entry function's frame, and under it the deepest of the stages it calls in turn
    stages = [frames[f] for f in files.stages if f != files.name]
    depth = frames[files.name][0] + max((size for size, _ in stages), default=0)
    kinds = {kind for _, kind in [frames[files.name]] + stages}
    caller = sum(p.nbytes for p in func.params if p.name in files.arguments)
    counted, why = None, ""
    if arrays is not None:
        if not target.qemu:
            why = f"QEMU emulates no board for {target.name}"
        elif shutil.which("qemu-system-arm") is None:
            why = "qemu-system-arm not found; Debian: apt-get install qemu-system-arm"
        else:
            counted = run_on_qemu(func, files, target, arrays, folder / "run").instructions[0]
    return Report(target.name, text, data, bss, depth, ",".join(sorted(kinds)), caller, files.workspace_bytes,
                  counted, macs, why)


@dataclass(frozen=True)
class BoardRun:
    """What a program on the emulated board gave: each output's flat values,
    one array per call (per output fill), by name; the instructions each
    call executed; and those of the calibration loop, where one ran."""

    outputs: dict[str, list[np.ndarray]]
    instructions: tuple[int, ...]
    calibration: int | None = None


def run_on_qemu(func: ir.Func, files: CFiles, target: Target, arrays: dict[str, np.ndarray], folder: Path,
                timeout: float = 60.0, calibrate: int = 0) -> BoardRun:
    """Build a program that calls the kernel on `arrays` (each argument that
    is read, as the caller holds it) once per output fill, and run it on the
    target's emulated board. calibrate: first time a loop of that many
    iterations of two instructions, the check that ticks count instructions."""
    if not target.qemu or not target.qemu_clock_hz:
        raise ConvgenError(f"target {target.name}: no `qemu` board (and its `qemu_clock_hz`) named, so it cannot "
                           f"run under emulation")
    require_tool("qemu-system-arm")
    outputs = func.written_buffers()
    arguments = [p for p in func.params if p.name in files.arguments]
    inputs = [dict(name=p.name, ctype=C_TYPES[p.dtype],
                   literals=c_literals(p.dtype, np.ascontiguousarray(arrays[p.name], dtype=p.dtype).ravel().tolist()))
              for p in arguments if p.name not in outputs]
    outs = [dict(name=p.name, ctype=C_TYPES[p.dtype], count=p.size) for p in func.params if p.name in outputs]
    dtype = next(p.dtype for p in func.params if p.name in outputs)
    fills = [_fill_byte(value) for value in output_fills(dtype)]
    folder = Path(folder).resolve()  # the link step runs inside it, so a relative path would point elsewhere
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.c").write_text(render("firmware/main.c.j2", name=files.name, inputs=inputs, outputs=outs,
                                          fills=fills, workspace_bytes=files.workspace_bytes, calibrate=calibrate,
                                          arg_names=[f"{p.name}_data" for p in arguments] +
                                          (["workspace"] if files.workspace_bytes else [])))
    compile_object(files, target, folder)
    elf = folder / "program.elf"
    _run([*target.cc, *target.cflags, "-std=c99", "--specs=rdimon.specs", "-T", str(_template_file("link.ld")),
          str(_template_file("startup.c")), "main.c", f"{files.name}.o", "-o", str(elf)], cwd=folder)
    try:
        result = subprocess.run(["qemu-system-arm", "-M", target.qemu, "-nographic", "-semihosting",
                                 "-icount", "shift=0", "-kernel", str(elf)],
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CompileError(f"{target.name}: the program did not finish within {timeout:.0f} s under QEMU "
                           f"(a fault spins forever)") from None
    if result.returncode != 0 or "done" not in result.stdout:
        raise CompileError(f"{target.name}: QEMU exited with {result.returncode}: "
                           f"{(result.stdout + result.stderr)[-400:]}")
    types = {p.name: p.dtype for p in func.params}
    ticks = _parse_ticks(result.stdout, target)
    return BoardRun(_parse_outputs(result.stdout, types), ticks["ticks"], (ticks.get("calibration") or (None,))[0])


def run_layer(spec: Spec, target: Target, inputs: dict[str, np.ndarray], folder: Path,
              schedule=None, bake_weights: bool = False) -> list[np.ndarray]:
    """The layer's output for `inputs` (x, w, b in the caller's layouts, as for
    a Kernel), computed by its emitted C on the target's emulated board: one
    result per output fill (float32: one, NaN; int8: check.INT8_FILLS).
    schedule: as for convgen.build (default: the spec's, else the target's
    default). bake_weights: w and b go into the kernel's .c as const arrays."""
    chosen = plan(spec, target, schedule)
    y = ir.signature(chosen.func)["y"]
    baking = Baking({k: v for k, v in inputs.items() if k in ("w", "b")}) if bake_weights else None
    runs = run_on_qemu(chosen.func, emit(chosen, "c", baking), target, inputs, folder).outputs["y"]
    return [flat.reshape(y.shape) for flat in runs]


def _fill_byte(value) -> str:
    """The byte memset repeats to fill an output: all ones is a NaN for float32;
    an int8 fill is its own byte."""
    return "0xff" if np.isnan(value) else f"0x{int(value) & 0xff:02x}"


def _parse_ticks(stdout: str, target: Target) -> dict[str, tuple[int, ...]]:
    """The instructions each timed call took, by what main called it
    (`ticks`, `calibration`), from its lines `WHAT TICKS`; a count past
    SysTick's 24 bits (main adds `wrapped`) is an error, not a number."""
    found: dict[str, list[int]] = {}
    for line in stdout.replace("\r", "").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("ticks", "calibration"):
            if "wrapped" in words:
                raise CompileError(f"{target.name}: a call ran past SysTick's 2^24 ticks "
                                   f"({2**24 * 10**9 // target.qemu_clock_hz:,} instructions), too long to count")
            found.setdefault(words[0], []).append(round(int(words[1]) * 10**9 / target.qemu_clock_hz))
    return {what: tuple(counts) for what, counts in found.items()}


def _parse_outputs(stdout: str, types: dict[str, str]) -> dict[str, list[np.ndarray]]:
    """The arrays main.c printed, by name, one per run: a line `output NAME COUNT`,
    then COUNT values (float32 as hex bit patterns, integers in decimal)."""
    lines = [line.strip() for line in stdout.replace("\r", "").splitlines() if line.strip()]
    found: dict[str, list[np.ndarray]] = {}
    i = 0
    while i < len(lines):
        if lines[i].startswith("output "):
            _, name, count = lines[i].split()
            values = lines[i + 1:i + 1 + int(count)]
            if types[name] == ir.FLOAT32:
                array = np.array([int(v, 16) for v in values], dtype=np.uint32).view(np.float32)
            else:
                array = np.array([int(v) for v in values], dtype=types[name])
            found.setdefault(name, []).append(array)
            i += 1 + int(count)
        else:
            i += 1
    return found


def _run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        raise CompileError(f"{' '.join(command)} failed:\n{result.stderr.strip()[-2000:]}")
    return result.stdout


def run_network(network, target: Target, x: np.ndarray, folder: Path) -> tuple[list[np.ndarray], Report]:
    """A network's output for x (N x C x H x W, the network's dtype),
    computed by its emitted C, one function with the weights baked, on the
    target's emulated board: one result per output fill (as run_layer); and
    what it costs there (code and const data, stack, the arena)."""
    from .driver import plan_network
    chosen = plan_network(network, target)
    files = emit(chosen, "c", Baking(chosen.weights))
    runs = run_on_qemu(chosen.func, files, target, {"x": x}, Path(folder) / "run").outputs["y"]
    shape = network.shape[network.output]
    return [flat.reshape(shape) for flat in runs], report(chosen.func, files, target, Path(folder) / "report")
