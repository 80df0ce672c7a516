"""The driver: spec -> lower -> schedule -> passes -> backend, written once.

Every entry point goes through here: `convgen.build`, each CLI command, the
firmware harness and bench. `plan` lowers a layer and applies its schedule
(the one given, the spec's own, or the default for the target, which is what
a spec without a schedule gets) and then the passes (passes.py); `emit`
renders a plan with a backend; `build` also compiles and loads it into a
callable Kernel.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import yaml

from . import cache as kernel_cache, gpu, ir
from .codegen import BACKENDS, CPU_BACKENDS, backend as get_backend
from .compose import NetworkPlan, compose
from .errors import ConvgenError, ConvgenWarning
from .lower import lower
from .passes import run_passes
from .network import Network, is_network, load_network
from .runtime import Kernel, NetworkKernel, is_thread_count
from .schedule import Step, as_steps, trace
from .schedule.gpu import gpu_recipe
from .schedule.space import Recipe, default_recipe
from .schedule.steps import DEFAULT, NAIVE
from .spec import Spec, load_spec
from .target import GPUTarget, Target, gpu_arches, host, load_gpu_target
from .tune.records import tuned_schedule

_PACKAGE = str(Path(__file__).resolve().parent)
DEFAULT_ARCH = "sm_80"   # the GPU a cuda kernel is scheduled for when none is named


@dataclass(frozen=True)
class Plan:
    """A layer lowered, scheduled and through the passes: what a backend renders."""

    spec: Spec
    target: Target
    steps: tuple[Step, ...]
    schedule_source: str                        # where the steps came from: a key of SCHEDULE_SOURCES
    history: tuple[tuple[Step | None, ir.Func], ...]   # the kernel lowered (None), then after each step
    passes: tuple[tuple[str, ir.Func], ...]     # (pass name, the kernel after it)
    recipe: Recipe | None = None                # the default recipe chosen, with its parameters and reason
    tuned: str = ""                             # what the tuner's records gave: the record used, or why none

    @property
    def lowered(self) -> ir.Func:
        return self.history[0][1]

    @property
    def scheduled(self) -> ir.Func:
        return self.history[-1][1]

    def describe_schedule(self) -> str:
        count = f"{len(self.steps)} step{'s' * (len(self.steps) != 1)}"
        said = f"{SCHEDULE_SOURCES[self.schedule_source]}, on {self.target.describe()}: {count}"
        return said + (f" ({self.tuned})" if self.tuned else "")

    @property
    def func(self) -> ir.Func:
        """The kernel after the passes: its stages over its parameters and workspace."""
        return self.passes[-1][1] if self.passes else self.scheduled

    @cached_property
    def program(self) -> ir.Program:
        """The kernel split into stage functions, prepare and run: what a backend renders."""
        return ir.split(self.func)


# Where a plan's steps came from, and how to say it.
SCHEDULE_SOURCES = {
    "default": "the default for the target",
    "tuned": "the tuner's best for the layer and target",
    "spec": "the spec's own",
    "given": "as given",
    "naive": "none (naive, as asked)",
    "no recipe": "none: no default recipe fits this layer",
    "default, not the spec's": "the default for the target (the spec's own schedule binds no loop to the GPU)",
}


def choose_schedule(spec: Spec, target: Target, schedule=None, threads: int | None = None):
    """(steps, source, recipe, tuned), source a key of SCHEDULE_SOURCES,
    recipe the default recipe where one was chosen (else None), tuned what
    the tuner's records said (else ""). `schedule` overrides the spec's own;
    with neither, the tuner's best record for the layer, target and thread
    count (all its cores by default) where there is one, else the default
    for them; "default" gives the default, "naive" no steps. Where no
    default recipe fits the layer, a ConvgenWarning says so: never a silent
    naive kernel; a stale record warns too (records.tuned_schedule)."""
    chosen = schedule if schedule is not None else spec.schedule
    if isinstance(target, GPUTarget):
        return (*_choose_gpu_schedule(spec, target, chosen, schedule is None), "")
    tuned = ""
    if chosen is None:
        steps, tuned = tuned_schedule(spec, target, threads or target.cores, _user_stacklevel() + 1)
        if steps is not None:
            return steps, "tuned", None, tuned
    return (*_choose_cpu_schedule(spec, target, chosen, schedule is None, threads), tuned)


def _choose_cpu_schedule(spec: Spec, target: Target, chosen, own: bool, threads: int | None):
    if chosen is None or chosen == DEFAULT:
        recipe = default_recipe(spec, target, threads or target.cores)
        if recipe is not None:
            return tuple(recipe.steps), "default", recipe
        warnings.warn(f"{spec.name}: no default recipe fits this layer on {target.name}; "
                      f"it runs as the naive loop nest", ConvgenWarning, stacklevel=_user_stacklevel())
        return (), "no recipe", None
    if chosen == NAIVE:
        return (), "naive", None
    return as_steps(chosen), ("spec" if own else "given"), None


def _choose_gpu_schedule(spec: Spec, gpu: GPUTarget, chosen, own: bool):
    """choose_schedule for a GPU: a spec's own schedule is a CPU's unless it binds loops to the GPU."""
    if chosen == NAIVE:
        return (), "naive", None
    steps = as_steps(chosen) if chosen not in (None, DEFAULT) else ()
    for_a_cpu = own and not any(step.primitive == "bind" for step in steps)
    if steps and not for_a_cpu:
        return steps, ("spec" if own else "given"), None
    recipe = gpu_recipe(spec, gpu)
    return tuple(recipe.steps), ("default, not the spec's" if steps else "default"), recipe


def plan(spec: Spec, target: Target | None = None, schedule=None, threads: int | None = None,
         name: str | None = None, prefix: str = "") -> Plan:
    """Lower, schedule and run the passes. name: the kernel's function name
    (default: the spec's name). prefix: lowering's name prefix for every
    loop, stage and buffer but the arguments (for several layers in one
    program); the schedule's steps may name loops without it."""
    target = target or host()
    steps, source, recipe, tuned = choose_schedule(spec, target, schedule, threads)
    lowered = lower(spec, prefix)
    if name is not None:
        lowered = replace(lowered, name=name)
    ir.verify(lowered, f"{spec.name}: after lowering")
    history = _recipe_history(recipe, lowered) or trace(lowered, steps)
    _, passes = run_passes(history[-1][1])
    return Plan(spec, target, tuple(steps), source, tuple(history), passes, recipe, tuned)


def _recipe_history(recipe: Recipe | None, lowered: ir.Func) -> tuple | None:
    """The default recipe's own trace, renamed as the kernel, where the search
    for it scheduled this very nest (no prefix): its steps need not be
    applied twice. None otherwise."""
    if recipe is None or not recipe.history or replace(recipe.history[0][1], name=lowered.name) != lowered:
        return None
    return tuple((step, replace(func, name=lowered.name)) for step, func in recipe.history)


def emit(plan: Plan, backend: str, baking=None):
    """The plan rendered by a backend: its files (see codegen/__init__.py).
    baking (C only): a Baking of the weights, by argument name, in the
    caller's layouts; the prepare step runs on them here, at build time, and
    what it fills is baked in its stead."""
    program = plan.program
    if baking is not None:
        program, baking = _baked(program, baking)
    return get_backend(backend).emit(program, plan.target, baking)


def _baked(program: ir.Program, baking):
    """(the program without its prepare step, the Baking of what the run step
    reads of the weights and the prepared buffers, which leave the workspace
    for const data). The prepare step runs on this machine (LLVM JIT): it is
    plain data movement, whatever the target."""
    arrays = dict(baking.arrays)
    if program.prepare:
        arrays.update(run_prepare(program, arrays))
    read = {load.buffer.name for stage in program.run for load in ir.find_all(stage.body, ir.Load)}
    kept = {name: array for name, array in arrays.items() if name in read}
    prepared = tuple(slot for slot in program.prepared if slot.buffer.name in kept)
    params = tuple(p for p in program.params if p.name in read or p.name not in arrays)  # weights now baked
    return replace(program, params=params, prepare=(), prepared=prepared), replace(baking, arrays=kept)


def run_prepare(program: ir.Program, weights: dict) -> dict:
    """The prepared buffers (name -> flat array in storage order) that the
    program's prepare step fills from these weights (by argument name, in
    the caller's layouts), computed on this machine."""
    only_prepare = replace(program, run=())
    backend = get_backend("llvm")
    loaded = backend.load(backend.emit(only_prepare, host()), host())
    kernel_weights = {name: np.ascontiguousarray(array, dtype=next(p.dtype for p in program.params if p.name == name))
                      for name, array in weights.items()}
    area = np.zeros(max(program.prepared_bytes, 1), dtype=np.uint8)
    pointers = [kernel_weights[p.name].ctypes.data if p.name in kernel_weights else 0 for p in program.params]
    pointers += [area.ctypes.data + s.offset for s in program.prepared]
    pointers += [0 for _ in program.scratch]
    for stage in loaded.stages:
        stage.launch(pointers, 1)
    return {s.buffer.name: area[s.offset:s.offset + s.buffer.nbytes].view(s.buffer.dtype).copy()
            for s in program.prepared}


def build(spec: Spec | Network | str | os.PathLike | dict, target: str = "llvm", schedule=None,
          workdir: str | os.PathLike | None = None, threads: int | None = None, cache: bool = True,
          arch: str | None = None) -> Kernel | NetworkKernel:
    """Compile a layer into a callable kernel for this machine; a network spec
    (one with `layers:`) into a NetworkKernel, net(x) -> y (build_network).

    spec: a Spec, or a path or dict for load_spec. target: the backend, "llvm"
    (JIT for the host CPU), "c" (emitted C built with the host C compiler) or
    "cuda" (emitted CUDA for the GPU `arch` names, a file of specs/targets/:
    by default the GPU that is here where specs/targets/ describes it, else
    sm_80; it runs on that GPU where one is here, else on the CUDA emulator,
    and `kernel.device` says which).
    schedule: a Schedule, a list of Steps or of YAML step data, or "naive" /
    "default"; by default the spec's own `schedule:`, else the default
    schedule for the host (`kernel.steps` and `kernel.schedule_source` say
    what was applied: "default", "spec", "given", "naive", or "no recipe").
    workdir: a folder to keep the emitted files (and the C shared object)
    in; by default nothing is written. threads: how many
    threads a parallel loop uses by default, and what the default schedule
    is chosen for (the host's cores); a call may override it. cache: load
    the compiled kernel from the on-disk cache where it is there, and keep
    it there when built (convgen/cache.py; CONVGEN_CACHE=off turns it off).
    """
    spec = load_any(spec)
    if isinstance(spec, Network):
        if schedule is not None or arch is not None:
            raise ConvgenError(f"{spec.source}: a network takes each layer's default schedule, for the host's CPU "
                               f"(schedule= and arch= are for layers)")
        _check_threads(threads)
        return build_network(spec, target, workdir, threads, cache)
    if target not in BACKENDS:
        raise ConvgenError(f"build: target: expected one of {', '.join(BACKENDS)}; got {target!r}")
    _check_threads(threads)
    machine = load_gpu_target(arch or default_arch()) if target == "cuda" else host()
    return load(plan(spec, machine, schedule, threads), target, workdir, threads, cache)


def load(chosen: Plan, backend: str = "llvm", workdir: str | os.PathLike | None = None,
         threads: int | None = None, use_cache: bool = True) -> Kernel:
    """A plan for this machine emitted, compiled and loaded as a callable
    Kernel; from the kernel cache (cache.py) where it holds this program."""
    emitted, loaded, cached = _compiled(chosen, backend, workdir, use_cache)
    parallel = any(stage.convention in ("openmp", "c-openmp") for stage in loaded.stages)
    return Kernel(chosen.spec, backend, chosen.func, chosen.program, emitted.source, loaded, steps=chosen.steps,
                  schedule_source=chosen.schedule_source, recipe=chosen.recipe, tuned=chosen.tuned, from_cache=cached,
                  threads=threads or (chosen.target.cores if parallel else 1), device=getattr(loaded, "device", ""))


def _compiled(chosen, backend: str, workdir, use_cache: bool):
    """(the emitted files, the loaded program, whether it came from the kernel
    cache) of a Plan or NetworkPlan for this machine."""
    coder, folder = get_backend(backend), Path(workdir) if workdir is not None else None
    name = kernel_cache.key(chosen.program, backend, chosen.target) if use_cache else None
    stored = kernel_cache.get(name) if name else None
    if stored is not None:
        return stored.emitted, coder.restore(stored.emitted, stored.image, chosen.target, folder), True
    emitted = emit(chosen, backend)
    loaded = coder.load(emitted, chosen.target, folder)
    if name:
        kernel_cache.put(name, emitted, loaded.image)
    return emitted, loaded, False


# ---------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------

def load_any(source) -> Spec | Network:
    """A layer spec or a network spec, from a Spec or Network (as they are), a
    dict, or a YAML file (a network spec is the one with `layers:`)."""
    if isinstance(source, (Spec, Network)):
        return source
    if isinstance(source, dict):
        return load_network(source) if is_network(source) else load_spec(source)
    try:
        data = yaml.safe_load(Path(source).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        data = None   # load_spec says what is wrong with the file
    return load_network(source) if is_network(data) else load_spec(source)


def plan_network(network: Network, target: Target | None = None, threads: int | None = None,
                 weights: dict | None = None) -> NetworkPlan:
    """Fold and fuse the network, plan each layer (its default schedule for
    the target and thread count) and compose one program over a planned
    arena (compose.py). weights: by state-dict key; by default the network's
    .npz."""
    target = target or host()
    weights = network.load_weights() if weights is None else weights
    return compose(network, weights, target, lambda spec, prefix: plan(spec, target, threads=threads, prefix=prefix))


def build_network(network: Network, target: str = "llvm", workdir=None, threads: int | None = None,
                  cache: bool = True, weights: dict | None = None) -> NetworkKernel:
    """A network compiled as one program with its weights bound: net(x) -> y."""
    if target not in CPU_BACKENDS:
        raise ConvgenError(f"{network.source}: target: a network builds for {' or '.join(CPU_BACKENDS)}; "
                           f"got {target!r}")
    chosen = plan_network(network, host(), threads, weights)
    emitted, loaded, _ = _compiled(chosen, target, workdir, cache)
    parallel = any(stage.convention in ("openmp", "c-openmp") for stage in loaded.stages)
    return NetworkKernel(chosen, target, emitted.source, loaded, threads or (host().cores if parallel else 1))


def default_arch() -> str:
    """The GPU cuda kernels are scheduled for when none is named: the one that
    is here, where specs/targets/ describes it; else DEFAULT_ARCH."""
    present = gpu.present_arch()
    return present if present in gpu_arches() else DEFAULT_ARCH


def _user_stacklevel() -> int:
    """The stack level of the first caller outside convgen, so that a warning
    names the user's line, whichever entry point they called."""
    frame, level = sys._getframe(2), 2   # 1 is the function that warns
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def _check_threads(threads) -> None:
    if threads is not None and not is_thread_count(threads):
        raise ConvgenError(f"build: threads: expected a whole number of at least 1; got {threads!r}")
