"""What the hardware is: the host CPU as LLVM sees it, and the C compiler and flags for it.

Hardware facts live here only; schedules and backends read them from a Target.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from functools import lru_cache

import llvmlite.binding as llvm


@dataclass(frozen=True)
class Target:
    name: str
    triple: str
    cpu: str
    features: str           # LLVM feature string, e.g. "+avx2,+fma,..."
    cores: int
    cc: tuple[str, ...]     # C compiler command
    cflags: tuple[str, ...]
    openmp_flags: tuple[str, ...] = ("-fopenmp",)          # for `omp parallel for`
    simd_flags: tuple[str, ...] = ("-fopenmp-simd", "-DCONVGEN_OPENMP_SIMD")  # `omp simd` only

    def has(self, feature: str) -> bool:
        return f"+{feature}" in self.features.split(",")


@lru_cache(maxsize=None)
def _initialize_llvm() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


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
        cflags=tuple(shlex.split(os.environ.get("CFLAGS", "-O3 -march=native"))),
    )


def llvm_target_machine(target: Target) -> llvm.TargetMachine:
    """A fresh LLVM target machine (an MCJIT engine takes ownership of the one it is given)."""
    _initialize_llvm()
    return llvm.Target.from_triple(target.triple).create_target_machine(
        cpu=target.cpu, features=target.features, opt=3, codemodel="jitdefault", jit=True)
