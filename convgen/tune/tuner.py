"""`convgen tune`: search a layer's schedules within a time budget, keep every
measurement, and confirm the winner against the default.

For each layer: list the space (schedule/knobs.py), replay what the records
database already holds for the layer (a rerun of a killed search continues
where it stopped: the same seed proposes the same candidates, and those
already measured are not measured again), then measure candidates the
strategy proposes (search.py) until the budget is spent, each in a worker
process (measure.py) and recorded as it completes. Last, the default and
the best two found are timed again in turn in one worker, and the fastest
becomes the layer's winner: `convgen.build` uses it from then on. The
default stays the winner unless a candidate beats it there, so a tuned
kernel is never slower than the default as measured.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from ..errors import ConvgenError, ScheduleError
from ..schedule import knobs
from ..schedule.space import Config, schedule_for
from ..spec import Spec
from ..target import Target, host
from .measure import DEFAULT_TIMEOUT, Cluster, Compare, Local, Outcome, Task
from .records import (Record, Records, convgen_version, machine_description, machine_fingerprint, now, schedule_text,
                      spec_fingerprint, target_fingerprint)
from .search import STRATEGIES


@dataclass
class Progress:
    """What a search has done so far, for a progress bar."""

    layer: str
    measured: int                   # candidates measured (timed or failed), this search and resumed
    best_gflops: float | None
    default_gflops: float | None
    seconds_left: float
    resumed: int = 0


@dataclass
class LayerResult:
    spec: Spec
    threads: int
    search: str                     # "guided:0"
    default_gflops: float | None    # confirmed: timed in turn with the winner
    tuned_gflops: float | None
    winner: Record | None
    curve: list = field(default_factory=list)   # (candidates measured, seconds spent, best GFLOP/s so far)
    measured: int = 0
    resumed: int = 0
    failed: int = 0


def tune(spec: Spec, budget: float = 60.0, threads: int | None = None, db=None, seed: int = 0,
         strategy: str = "guided", cluster: str | None = None, timeout: float = DEFAULT_TIMEOUT,
         max_candidates: int | None = None, progress: Callable[[Progress], None] | None = None,
         measurer=None, min_seconds: float = 0.1) -> LayerResult:
    """Tune one layer for this machine (see the module's doc). budget: seconds
    of search for the layer, counting what earlier runs of the same search
    (strategy and seed) spent on it. threads: what the kernel is tuned to run
    on (default: all cores, as convgen.build's default). db: the records
    database (default: records.default_path()). cluster: a Dask scheduler's
    address to measure on its workers. max_candidates: stop after this many
    measured. measurer: instead of a worker here or a cluster (tests).
    min_seconds: how long each candidate's calls are timed (a median of
    those calls, at least five), and each contender in each round of the
    winner's confirmation."""
    if strategy not in STRATEGIES:
        raise ConvgenError(f"tune: strategy: expected one of {', '.join(STRATEGIES)}; got {strategy!r}")
    target = host()
    threads = threads or target.cores
    space = knobs.points(spec, target, threads)   # the default's point first, whatever the layer
    own = measurer is None
    measurer = measurer or (Cluster(cluster, timeout) if cluster else Local(timeout))
    try:
        with Records(db) as records:
            return _Search(spec, target, threads, space, records, measurer, seed, strategy, progress,
                           min_seconds).run(budget, max_candidates)
    finally:
        if own:
            measurer.close()


class _Search:
    def __init__(self, spec: Spec, target: Target, threads: int, space: list[Config], records: Records, measurer,
                 seed: int, strategy: str, progress, min_seconds: float):
        self.spec, self.target, self.threads, self.records, self.measurer = spec, target, threads, records, measurer
        self.min_seconds = min_seconds
        self.seed, self.key = seed, f"{strategy}:{seed}"
        self.start = knobs.start(spec, target, threads)
        self.strategy = STRATEGIES[strategy](spec, target, space, self.start, seed)
        self.progress = progress or (lambda p: None)
        self.layer, self.machine = spec_fingerprint(spec), target_fingerprint(target)
        self.flops = 2 * spec.macs
        earlier = records.layer(self.layer, self.machine, threads, convgen_version())
        # what is known of each point: its latest record with a time, else its latest
        self.known: dict[str, Record] = {}
        for record in earlier:
            if record.config not in self.known or record.seconds is not None or self.known[record.config].seconds is None:
                self.known[record.config] = record
        self.mine = [r for r in earlier if r.search == self.key]   # this search's records, in order
        self.spent = sum(r.cost_seconds for r in self.mine)
        self.resumed = len(self.mine)

    def run(self, budget: float, max_candidates: int | None) -> LayerResult:
        begin = time.perf_counter()
        costs: list[float] = []
        while True:
            spent = self.spent + time.perf_counter() - begin
            reserve = min(0.2 * budget, 3 * (sum(costs) / len(costs) if costs else 2.0) + 2.0)
            if spent >= budget - reserve or (max_candidates is not None and len(self.mine) >= max_candidates):
                break
            batch = self._next_batch()
            if not batch:
                break
            for record in self._measure(batch):
                costs.append(record.cost_seconds)
            self._report(budget - (self.spent + time.perf_counter() - begin))
        return self._confirm()

    def _next_batch(self) -> list[Config]:
        """Up to the measurer's parallel width of points not measured yet; what the
        records already know is told to the strategy as it comes up."""
        batch = []
        while len(batch) < self.measurer.parallel:
            point = self.strategy.propose()
            if point is None:
                break
            known = self.known.get(_as_json(point))
            if known is not None:
                self.strategy.tell(point, known.seconds)
                if known.search != self.key:   # measured by another search: this one's too now, at no cost
                    self.mine.append(known)
                continue
            self.strategy.measured[point] = None   # pending: not proposed twice
            batch.append(point)
        return batch

    def _measure(self, batch: list[Config]) -> list[Record]:
        """Build each point's schedule here and measure it in a worker; record
        each with its share of the wall time the batch took."""
        begin = time.perf_counter()
        tasks, refused, schedules = [], {}, {}
        for point in batch:
            try:
                steps = schedule_for(self.spec, self.target, point).steps
            except ScheduleError as err:
                refused[point] = Outcome("refused", detail=err.message)
                continue
            schedules[point] = steps
            tasks.append(Task(self.spec, steps, self.threads, self.seed, self.min_seconds))
        outcomes = dict(zip(schedules, self.measurer.measure(tasks))) if tasks else {}
        outcomes.update(refused)
        share = (time.perf_counter() - begin) / len(batch)
        written = []
        for point in batch:
            outcome = replace(outcomes[point], cost_seconds=share)
            record = self._record(point, schedules.get(point, ()), outcome)
            self.strategy.tell(point, record.seconds)
            self.known[record.config] = record
            self.mine.append(record)
            written.append(record)
        return written

    def _record(self, point: Config, steps: tuple, outcome: Outcome) -> Record:
        # the machine that measured it (a cluster's worker), else this one
        machine = outcome.machine or (self.target.cpu, self.target.features, self.target.cores)
        seconds = outcome.seconds if outcome.status == "ok" else None
        return self.records.add(Record(
            spec_fingerprint=self.layer, spec_name=self.spec.name, target_fingerprint=machine_fingerprint(*machine),
            target=machine_description(*machine), threads=self.threads, convgen_version=convgen_version(), search=self.key,
            sequence=len(self.mine), config=_as_json(point), schedule=schedule_text(steps), status=outcome.status,
            seconds=seconds, gflops=self.flops / seconds / 1e9 if seconds else None, detail=outcome.detail,
            cost_seconds=outcome.cost_seconds, created=now()))

    def _report(self, left: float) -> None:
        timed = [r for r in self.mine if r.gflops]
        default = self.known.get(_as_json(self.start))
        self.progress(Progress(self.spec.name, len(self.mine), max((r.gflops for r in timed), default=None),
                               default.gflops if default else None, max(0.0, left), self.resumed))

    def _confirm(self) -> LayerResult:
        """Time the default and the best two found in turn, in one worker; the fastest wins."""
        timed = sorted((r for r in self.mine if r.seconds is not None), key=lambda r: r.seconds)
        default = self.known.get(_as_json(self.start))
        contenders = ([default] if default is not None and default.seconds is not None else [])
        contenders += [r for r in timed if r.config not in {c.config for c in contenders}][:2]
        result = LayerResult(self.spec, self.threads, self.key, None, None, None, self._curve(),
                             len(self.mine), self.resumed, sum(r.seconds is None for r in self.mine))
        if not contenders:
            return result
        steps = tuple(r.steps() for r in contenders)
        times = self.measurer.compare(Compare(self.spec, steps, self.threads, self.seed,
                                              min_seconds=self.min_seconds))
        confirmed = [(t, i) for i, t in enumerate(times) if t is not None]
        if not confirmed:
            return result
        seconds, best = min(confirmed)
        default_seconds = times[0] if default is not None and contenders[0] is default else None
        if default_seconds is not None and default_seconds <= seconds:
            seconds, best = default_seconds, 0
        winner = contenders[best]
        self.records.set_winner(winner, seconds, default_seconds)
        result.winner = winner
        result.tuned_gflops = self.flops / seconds / 1e9
        result.default_gflops = self.flops / default_seconds / 1e9 if default_seconds else None
        return result

    def _curve(self) -> list:
        points, best, spent = [], None, 0.0
        for count, record in enumerate(self.mine, 1):
            spent += record.cost_seconds if record.search == self.key else 0.0
            if record.gflops:
                best = max(best or 0.0, record.gflops)
            points.append((count, spent, best))
        return points


def _as_json(point: Config) -> str:
    return json.dumps(dict(point), sort_keys=True)
