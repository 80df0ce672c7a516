"""Building, checking and timing candidates where a bad one cannot hurt the tuner.

A candidate runs in a worker process of its own (`python -m
convgen.tune.measure`, tasks and results as pickles over its stdin and
stdout): it builds the kernel for the host, runs it on fresh random inputs
into outputs poisoned with NaN (and, for int8, two fills) and compares it
with the float64 reference, and only then times it on the same inputs
(median of calls after warm-up). A candidate that crashes the worker, or
runs past the timeout, is recorded as such and the worker is started again.

`Local` runs one worker on this machine, one candidate at a time (timings
from two at once would disturb each other). `Cluster` sends candidates to
the workers of a Dask distributed cluster, each of which runs its own local
worker process the same way, one candidate per worker at a time.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

DEFAULT_TIMEOUT = 120.0   # seconds to build, check and time one candidate
_HEADER = struct.Struct("<Q")


@dataclass(frozen=True)
class Task:
    """One candidate: the layer, its schedule's steps, the threads to time it on."""

    spec: object                # a Spec
    steps: tuple                # schedule Steps
    threads: int
    seed: int = 0               # of the random inputs
    min_seconds: float = 0.1    # of timed calls
    job: str = "convgen.tune.measure:measure"   # module:function the worker runs (tests swap it)


@dataclass(frozen=True)
class Outcome:
    status: str                 # records.STATUSES
    seconds: float | None = None
    detail: str = ""
    machine: tuple = ()         # (cpu, features, cores) of the machine that measured it
    cost_seconds: float = 0.0


@dataclass(frozen=True)
class Compare:
    """Several schedules of one layer timed in turn, `rounds` times, in one
    worker: their median times, comparable with each other."""

    spec: object
    schedules: tuple            # of step tuples
    threads: int
    seed: int = 0
    rounds: int = 5
    min_seconds: float = 0.1
    job: str = "convgen.tune.measure:compare"


# ---------------------------------------------------------------------------
# In the worker process
# ---------------------------------------------------------------------------

_LAYERS: dict = {}   # (spec, seed) -> (inputs, expected): the reference once per layer


def _layer(spec, seed: int):
    from ..check import random_inputs
    from ..reference import reference
    from ..runtime import aligned_copy
    key = (repr(spec), seed)
    if key not in _LAYERS:
        inputs = {k: aligned_copy(v) for k, v in random_inputs(spec, np.random.default_rng(seed)).items()}
        _LAYERS.clear()
        _LAYERS[key] = (inputs, reference(spec, **inputs))
    return _LAYERS[key]


def _checked_call(spec, steps, threads: int, seed: int):
    """(a no-argument call of the built kernel on the layer's inputs, None), or
    (None, Outcome) where it does not build or does not match the reference."""
    from ..check import compare_runs, output_fills, tolerance, weight_transform
    from ..driver import build
    from ..errors import ConvgenError
    from ..runtime import empty
    inputs, expected = _layer(spec, seed)
    try:
        kernel = build(spec, "llvm", schedule=list(steps), threads=threads, cache=False)
    except ConvgenError as err:
        return None, Outcome("failed", detail=f"did not build: {str(err).splitlines()[0]}")
    dtype = spec.array_dtypes["y"]
    extra = {"r": inputs["r"]} if "r" in inputs else {}
    outputs = [kernel(**inputs, out=np.full(spec.output_shape, fill, dtype=dtype)) for fill in output_fills(dtype)]
    allowed = None if spec.is_quantized else tolerance(spec, inputs, weight_transform(kernel.func))
    result = compare_runs(spec, outputs, expected, inputs, allowed)
    if not result.passed:
        return None, Outcome("wrong", detail=f"does not match the reference: max error {result.max_abs_error:.3g}, "
                                             f"{result.unwritten} elements unwritten")
    call = kernel.bind(inputs["w"], inputs.get("b")) if spec.is_conv else kernel
    out = empty(spec.output_shape, dtype)
    return (lambda: call(inputs["x"], out=out, **extra)), None


def measure(task: Task) -> Outcome:
    """Build, check, then time one candidate (runs in the worker)."""
    from ..runtime import measure as timed
    call, failed = _checked_call(task.spec, task.steps, task.threads, task.seed)
    if failed is not None:
        return failed
    return Outcome("ok", timed(call, min_seconds=task.min_seconds, max_runs=1000))


def compare(task: Compare) -> list:
    """Median seconds of each schedule (None where it fails), timed in turn round by round."""
    from ..runtime import measure as timed
    calls = [_checked_call(task.spec, steps, task.threads, task.seed)[0] for steps in task.schedules]
    times = [[] for _ in calls]
    for _ in range(task.rounds):
        for call, kept in zip(calls, times):
            if call is not None:
                kept.append(timed(call, min_seconds=task.min_seconds, max_runs=1000))
    return [float(np.median(t)) if t else None for t in times]


def _machine() -> tuple:
    from ..target import host
    here = host()
    return (here.cpu, here.features, here.cores)


def _serve() -> None:
    """The worker's loop: a task from stdin, its result to stdout, until stdin closes."""
    import importlib
    import warnings
    from ..errors import ConvgenWarning
    warnings.simplefilter("ignore", ConvgenWarning)
    results = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)   # what anything prints goes to stderr, not into the results
    tasks = sys.stdin.buffer
    while True:
        header = tasks.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        task = pickle.loads(tasks.read(_HEADER.unpack(header)[0]))
        module, name = task.job.split(":")
        try:
            result = getattr(importlib.import_module(module), name)(task)
        except Exception as err:   # a candidate that raises is a failed candidate, not a dead worker
            result = Outcome("failed", detail=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        if isinstance(result, Outcome):
            result = Outcome(result.status, result.seconds, result.detail, _machine())
        body = pickle.dumps(result)
        results.write(_HEADER.pack(len(body)) + body)
        results.flush()


# ---------------------------------------------------------------------------
# In the tuner's process
# ---------------------------------------------------------------------------

class Worker:
    """A worker process, started again after a crash or a timeout."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT):
        self.timeout = timeout
        self._proc = None
        self._log = None

    def _start(self):
        self._log = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._proc = subprocess.Popen([sys.executable, "-m", "convgen.tune.measure"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._log, env=env, start_new_session=True)

    def run(self, task, timeout: float | None = None):
        """The task's result, or an Outcome "crashed" / "timeout"."""
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        self._log.seek(0)
        self._log.truncate()   # what the worker prints from here on is this task's
        timeout = timeout or self.timeout
        begin = time.perf_counter()
        body = pickle.dumps(task)
        result = hung = None
        try:
            self._proc.stdin.write(_HEADER.pack(len(body)) + body)
            self._proc.stdin.flush()
            result = self._receive(timeout)
        except TimeoutError:
            hung = True
        except (BrokenPipeError, EOFError, pickle.UnpicklingError):
            pass   # the worker died
        spent = time.perf_counter() - begin
        if isinstance(result, Outcome):
            return Outcome(result.status, result.seconds, result.detail, result.machine, spent)
        if result is not None:
            return result
        if hung:
            self.close()
            return Outcome("timeout", detail=f"no result within {timeout:g} s", cost_seconds=spent)
        return self._crashed(spent)

    def _receive(self, timeout: float):
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        header = self._proc.stdout.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise EOFError
        return pickle.loads(self._proc.stdout.read(_HEADER.unpack(header)[0]))

    def _crashed(self, spent: float) -> Outcome:
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:   # its output closed, yet it runs: stop it
            self.close()
            code = None
        self._log.seek(0)
        last = [line for line in self._log.read().decode(errors="replace").splitlines() if line.strip()][-1:]
        self._proc = None
        how = ("still running" if code is None else f"killed by signal {signal.Signals(-code).name}" if code < 0
               else f"exit status {code}")
        return Outcome("crashed", detail=f"the worker died ({how})" + (f": {last[0][:200]}" if last else ""),
                       cost_seconds=spent)

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
            self._proc = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Local:
    """Candidates measured one at a time by a worker process on this machine."""

    parallel = 1

    def __init__(self, timeout: float = DEFAULT_TIMEOUT):
        self.worker = Worker(timeout)

    def measure(self, tasks: list) -> list:
        return [self.worker.run(task) for task in tasks]

    def compare(self, task: Compare) -> list:
        result = self.worker.run(task, timeout=self.worker.timeout * (1 + len(task.schedules)))
        return result if isinstance(result, list) else [None] * len(task.schedules)

    def close(self) -> None:
        self.worker.close()


_DASK_WORKER: list = []            # the Dask worker's own worker process, once started
_DASK_LOCK = threading.Lock()      # one candidate at a time, whatever the Dask worker's threads


def _on_worker(task, timeout: float):
    """Run on a Dask worker: the task in that machine's own worker process."""
    with _DASK_LOCK:
        if not _DASK_WORKER:
            _DASK_WORKER.append(Worker(timeout))
        return _DASK_WORKER[0].run(task, timeout)


class Cluster:
    """Candidates measured on the workers of a Dask distributed cluster (the
    scheduler at `address`), one candidate per worker at a time, each in
    that worker's own worker process. Records come back here."""

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT):
        try:
            from distributed import Client
        except ImportError as err:
            from ..errors import ConvgenError
            raise ConvgenError("tune --cluster: Dask distributed is not installed "
                               "(pip install 'convgen[cluster]')") from err
        try:
            self.client = Client(address, timeout=30)
        except (OSError, TimeoutError) as err:
            from ..errors import ConvgenError
            raise ConvgenError(f"tune --cluster: expected a Dask scheduler at {address}; {err}") from err
        self.timeout = timeout
        self.parallel = max(1, len(self.client.scheduler_info()["workers"]))

    def measure(self, tasks: list) -> list:
        futures = [self.client.submit(_on_worker, task, self.timeout, pure=False) for task in tasks]
        return [self._result(f, task) for f, task in zip(futures, tasks)]

    def _result(self, future, task):
        try:
            return future.result()
        except Exception as err:   # a worker lost: the candidate is recorded as crashed, the search goes on
            return Outcome("crashed", detail=f"the Dask worker failed: {type(err).__name__}: {err}"[:300])

    def compare(self, task: Compare) -> list:
        future = self.client.submit(_on_worker, task, self.timeout * (1 + len(task.schedules)), pure=False)
        result = self._result(future, task)
        return result if isinstance(result, list) else [None] * len(task.schedules)

    def close(self) -> None:
        self.client.close()


if __name__ == "__main__":
    # run as `python -m`: serve from the module as imported, so that results are its classes, not __main__'s
    from convgen.tune.measure import _serve as serve
    serve()
