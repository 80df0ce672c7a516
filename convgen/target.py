"""What the hardware is: the CPU as LLVM sees it (name, features, vector
width), its cores and caches, and the C compiler and flags for it; for CUDA,
the GPU's architecture and the limits its schedules must respect.

Hardware facts live here only; schedules and backends read them from a
Target. `host()` detects the machine convgen runs on; `load_target(name)`
reads a named target from specs/targets/<name>.yaml, so a new CPU is a new
file, not edits across backends. `load_gpu_target(arch)` reads a GPU's
description (`kind: gpu`, e.g. specs/targets/sm_80.yaml) into a GPUTarget.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import llvmlite.binding as llvm
import yaml

from .errors import SpecError

# An installed convgen ships the descriptions as package data (convgen/targets/); a checkout
# keeps them in specs/targets/.
_PACKAGE = Path(__file__).resolve().parent
TARGETS_DIR = next((d for d in (_PACKAGE / "targets", _PACKAGE.parent / "specs" / "targets") if d.is_dir()),
                   _PACKAGE / "targets")
_VECTOR_BITS = (("avx512f", 512), ("avx", 256), ("sse2", 128), ("neon", 128))


@dataclass(frozen=True)
class Target:
    name: str
    triple: str
    cpu: str
    features: str           # LLVM feature string, e.g. "+avx2,+fma,..."
    cores: int
    cc: tuple[str, ...]     # C compiler command
    cflags: tuple[str, ...]
    caches: tuple[tuple[str, int], ...] = ()   # (level, bytes) per core, e.g. ("L1d", 49152)
    openmp_flags: tuple[str, ...] = ("-fopenmp",)          # for `omp parallel for`
    simd_flags: tuple[str, ...] = ("-fopenmp-simd", "-DCONVGEN_OPENMP_SIMD")  # `omp simd` only
    registers: int = field(default=0)  # vector registers; 0 = from the features
    qemu: str = ""          # microcontrollers: the QEMU board that emulates the core
    qemu_clock_hz: int = 0  # and the clock its SysTick counts, which times instructions (firmware.py)

    def has(self, feature: str) -> bool:
        return f"+{feature}" in self.features.split(",")

    @property
    def vector_bits(self) -> int:
        """Width of the widest vector registers."""
        return next((bits for feature, bits in _VECTOR_BITS if self.has(feature)), 32)

    @property
    def vector_lanes(self) -> int:
        """float32 lanes per vector register."""
        return self.vector_bits // 32

    @property
    def vector_registers(self) -> int:
        if self.registers:
            return self.registers
        return 32 if self.has("avx512f") or self.has("neon") else 16

    def cache(self, level: str) -> int:
        """Bytes of a cache level ("L1d", "L2", "L3"), 0 if unknown."""
        return dict(self.caches).get(level, 0)

    def describe(self) -> str:
        return self.name + (f" ({self.cpu})" if self.cpu != self.name else "")


@dataclass(frozen=True)
class GPUTarget:
    """An NVIDIA GPU architecture, as its CUDA schedules and renderer need it:
    nvcc's arch name (sm_80) and the per-block limits a launch must keep."""

    name: str
    arch: str                       # nvcc -arch, e.g. sm_80
    warp_size: int = 32
    max_threads_per_block: int = 1024
    shared_bytes_per_block: int = 49152   # static __shared__ arrays
    registers_per_block: int = 65536
    max_registers_per_thread: int = 255
    multiprocessors: int = 1

    def describe(self) -> str:
        return f"{self.name} (CUDA GPU)"


@lru_cache(maxsize=None)
def _initialize_llvm() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


def _host_caches() -> tuple[tuple[str, int], ...]:
    """Data and unified caches of cpu0, from Linux's sysfs (empty elsewhere)."""
    found = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        units = {"K": 1024, "M": 1024 ** 2}
        found.append((f"L{level}{'d' if kind == 'Data' else ''}",
                      int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)))
    return tuple(found)


@lru_cache(maxsize=None)
def host() -> Target:
    """The machine convgen runs on. CC and CFLAGS in the environment override the C compiler."""
    _initialize_llvm()
    return Target(
        name="host",
        triple=llvm.get_process_triple(),
        cpu=llvm.get_host_cpu_name(),
        features=llvm.get_host_cpu_features().flatten(),
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        cc=tuple(shlex.split(os.environ.get("CC", "cc"))),
        cflags=tuple(shlex.split(os.environ.get("CFLAGS", "-O3 -march=native"))) + _gcc_workarounds(
            tuple(shlex.split(os.environ.get("CC", "cc")))),
        caches=_host_caches(),
    )


# GCC 12.2 at -O3 with AVX2 or AVX-512 miscompiles a guarded max reduction once it if-converts the
# loop to vectorize it (a fused max pool's window over a padded edge came out 0 where no padding was
# involved; clang and GCC at -O2 get it right): its loop if-conversion is off for the host's C.
_GCC_WORKAROUNDS = ("-fno-tree-loop-if-convert",)


@lru_cache(maxsize=None)
def _gcc_workarounds(cc: tuple[str, ...]) -> tuple[str, ...]:
    """The flags that keep GCC's known miscompilations away, where the host's C compiler is GCC."""
    try:
        banner = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return _GCC_WORKAROUNDS if "Free Software Foundation" in banner and "clang" not in banner else ()


_TARGET_FIELDS = ("name", "triple", "cpu", "features", "cores", "cc", "cflags", "caches", "registers", "qemu",
                  "qemu_clock_hz")


def load_target(name: str) -> Target:
    """`host`, or a named target from specs/targets/<name>.yaml."""
    if name == "host":
        return host()
    path = TARGETS_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(["host"] + _described("cpu"))
        raise SpecError([f"target: expected one of {known}; got {name!r}"])
    data = yaml.safe_load(path.read_text()) or {}
    if data.get("kind") == "gpu":
        raise SpecError([f"target: {name} is a GPU (specs/targets/{name}.yaml); its code comes from the "
                         f"cuda backend (-t cuda --arch {name})"])
    unknown = [k for k in data if k not in _TARGET_FIELDS]
    missing = [k for k in ("triple", "cpu", "features") if k not in data]
    if unknown or missing or not isinstance(data.get("features"), list):
        raise SpecError([f"{path}: expected the fields {', '.join(_TARGET_FIELDS)} (triple, cpu and a list of "
                         f"features required); unknown {unknown}, missing {missing}"])
    return Target(
        name=data.get("name", name), triple=data["triple"], cpu=data["cpu"],
        features=",".join(data["features"]), cores=int(data.get("cores", 1)),
        cc=tuple(shlex.split(data.get("cc", "cc"))), cflags=tuple(shlex.split(data.get("cflags", "-O3"))),
        caches=tuple((level, int(size) * 1024) for level, size in (data.get("caches") or {}).items()),
        registers=int(data.get("registers", 0)), qemu=str(data.get("qemu", "")),
        qemu_clock_hz=int(data.get("qemu_clock_hz", 0)),
    )


_GPU_FIELDS = ("kind", "name", "arch", "warp_size", "max_threads_per_block", "shared_bytes_per_block",
               "registers_per_block", "max_registers_per_thread", "multiprocessors")


def gpu_arches() -> list[str]:
    """The GPU architectures specs/targets/ describes."""
    return _described("gpu")


def load_gpu_target(arch: str) -> GPUTarget:
    """A GPU from specs/targets/<arch>.yaml (`kind: gpu`)."""
    path = TARGETS_DIR / f"{arch}.yaml"
    data = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    if data.get("kind") != "gpu":
        raise SpecError([f"arch: expected one of {', '.join(gpu_arches())}; got {arch!r}"])
    unknown = [k for k in data if k not in _GPU_FIELDS]
    if unknown or "arch" not in data:
        raise SpecError([f"{path}: expected the fields {', '.join(_GPU_FIELDS)} (arch required); "
                         f"unknown {unknown}"])
    numbers = {k: int(v) for k, v in data.items() if k not in ("kind", "name", "arch")}
    return GPUTarget(name=str(data.get("name", arch)), arch=str(data["arch"]), **numbers)


def _described(kind: str) -> list[str]:
    """The names of specs/targets/ files of one kind: cpu (no `kind`) or gpu."""
    return sorted(p.stem for p in TARGETS_DIR.glob("*.yaml")
                  if (yaml.safe_load(p.read_text()) or {}).get("kind", "cpu") == kind)


def llvm_target_machine(target: Target) -> llvm.TargetMachine:
    """A fresh LLVM target machine (an MCJIT engine takes ownership of the one it is given)."""
    _initialize_llvm()
    return llvm.Target.from_triple(target.triple).create_target_machine(
        cpu=target.cpu, features=target.features, opt=3, codemodel="jitdefault", jit=True)
