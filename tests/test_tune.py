"""The tuner: its space, its searches, safe measurement, the records database,
builds that use the records, resuming a killed run, and a Dask cluster."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import convgen
from convgen.errors import ConvgenWarning
from convgen.schedule import knobs
from convgen.schedule.space import default_recipe, schedule_for
from convgen.spec import load_spec
from convgen.target import host, load_target
from convgen.tune import measure
from convgen.tune.records import Records, convgen_version, spec_fingerprint
from convgen.tune.tuner import tune

from conftest import SPECS

TESTS = Path(__file__).resolve().parent

# small enough that a candidate builds, checks and times in well under a second
SMALL = {"name": "tune_small", "op": "conv2d", "in_channels": 8, "out_channels": 32, "input_size": [12, 12],
         "kernel_size": [3, 3], "padding": [1, 1], "bias": True, "activation": "relu"}


@pytest.fixture
def small():
    return load_spec(SMALL)


@pytest.fixture
def records_at(tmp_path, monkeypatch):
    """A records database of the test's own, where builds look too."""
    path = tmp_path / "records.sqlite"
    monkeypatch.setenv("CONVGEN_RECORDS", str(path))
    return path


class Timed:
    """A measurer that times nothing: a point's 'seconds' come from its knobs, so searches are repeatable."""

    parallel = 1

    def __init__(self):
        self.seen = []

    def measure(self, tasks):
        out = []
        for task in tasks:
            text = repr(task.steps)
            self.seen.append(text)
            out.append(measure.Outcome("ok", 1e-3 * (1 + (zlib.crc32(text.encode()) % 997) / 997), machine=_machine()))
        return out

    def compare(self, task):
        return [1e-3 * (1 + (zlib.crc32(repr(steps).encode()) % 997) / 997) for steps in task.schedules]

    def close(self):
        pass


def _machine():
    here = host()
    return (here.cpu, here.features, here.cores)


def _layers():
    return [load_spec(SPECS / "bench" / name) for name in
            ("resnet_3x3_64.yaml", "resnet_1x1_256_64.yaml", "mobilenetv2_dw_144.yaml", "grouped_3x3_128.yaml",
             "mobilenetv2_pw_144_24.yaml")] + [load_spec(SPECS / "layers" / "maxpool_2x2.yaml"),
                                                 load_spec(SPECS / "layers" / "ds_cnn_dw_int8.yaml")]


# ---------------------------------------------------------------------------
# The space
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
def test_the_space_starts_at_the_default_and_rebuilds_it_exactly(threads):
    target = host()
    for spec in _layers():
        space = knobs.points(spec, target, threads)
        recipe = default_recipe(spec, target, threads)
        assert space[0] == recipe.config, spec.name
        assert len(space) == len(set(space)) > 1, spec.name
        assert schedule_for(spec, target, recipe.config).steps == recipe.steps, spec.name


def test_neighbours_differ_in_one_knob_by_one_step():
    spec = load_spec(SPECS / "bench" / "resnet_3x3_64.yaml")
    space = knobs.points(spec, host(), 1)
    start = dict(space[0])
    near = [dict(p) for p in knobs.neighbours(space[0], space)]
    assert near
    for point in near:
        changed = [k for k in start if start[k] != point[k]]
        assert len(changed) == 1
        if changed[0] == "tile":
            assert abs(point["tile"] - start["tile"]) == 1   # every tile width up to 16 is in the space
    assert {k for p in near for k in p if p[k] != start[k]} >= {"tile", "vectors", "order"}


def test_a_scalar_target_has_its_one_recipe():
    spec = load_spec(SPECS / "layers" / "ds_cnn_pw_int8.yaml")
    target = load_target("cortex-m4")
    assert knobs.points(spec, target, 1) == [default_recipe(spec, target, 1).config]


def test_the_model_ranks_a_full_register_tile_above_a_single_accumulator():
    spec = load_spec(SPECS / "bench" / "resnet_3x3_64.yaml")
    target = host()
    space = knobs.points(spec, target, 1)
    one = next(p for p in space if dict(p).get("tile") == 1 and dict(p).get("vectors") == 1)
    assert knobs.predicted_seconds(spec, target, space[0]) < knobs.predicted_seconds(spec, target, one) / 4


# ---------------------------------------------------------------------------
# Searches
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["guided", "random"])
def test_the_same_seed_proposes_the_same_candidates(tmp_path, small, strategy):
    runs = []
    for run, seed in enumerate((5, 5, 6)):
        timed = Timed()
        tune(small, budget=600, threads=1, db=tmp_path / f"{run}.sqlite", seed=seed, strategy=strategy,
             max_candidates=10, measurer=timed)
        runs.append(timed.seen)
    assert len(runs[0]) >= 5 and runs[0] == runs[1]   # refused points never reach the measurer
    if strategy == "random":   # the guided search's seed only breaks the model's ties
        assert runs[2] != runs[0]


def test_the_guided_search_follows_the_measurements(tmp_path):
    """With times that fall as the tile grows, coordinate descent climbs the tile knob."""
    spec = load_spec(SPECS / "bench" / "resnet_3x3_64.yaml")

    class TileTimed(Timed):
        def measure(self, tasks):
            return [measure.Outcome("ok", 1e-3 / (1 + _tile_of(t.steps)), machine=_machine()) for t in tasks]

        def compare(self, task):
            return [1e-3 / (1 + _tile_of(s)) for s in task.schedules]

    result = tune(spec, budget=600, threads=1, db=tmp_path / "r.sqlite", max_candidates=25, measurer=TileTimed())
    assert json.loads(result.winner.config)["tile"] == max(
        dict(p)["tile"] for p in knobs.points(spec, host(), 1) if dict(p).get("recipe") == "direct")


def _tile_of(steps) -> int:
    """The register tile's columns: the factor of the split of ow that makes ow.i."""
    return next((s.args[1] for s in steps if s.primitive == "split" and s.args[0] == "ow"), 0)


# ---------------------------------------------------------------------------
# Measuring safely
# ---------------------------------------------------------------------------

@pytest.fixture
def jobs_importable(monkeypatch):
    """The worker process can import tests/tune_jobs.py."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


def test_a_crash_a_hang_and_a_wrong_result_are_recorded_and_the_worker_goes_on(small, jobs_importable):
    steps = default_recipe(small, host(), 1).steps
    worker = measure.Worker(timeout=20)
    try:
        crashed = worker.run(measure.Task(small, steps, 1, job="tune_jobs:crash"))
        hung = worker.run(measure.Task(small, steps, 1, job="tune_jobs:hang"), timeout=2)
        wrong = worker.run(measure.Task(small, steps, 1, job="tune_jobs:off_by_one"))
        good = worker.run(measure.Task(small, steps, 1))
    finally:
        worker.close()
    assert crashed.status == "crashed" and "SIGSEGV" in crashed.detail
    assert hung.status == "timeout" and 2 <= hung.cost_seconds < 10
    assert wrong.status == "wrong" and "does not match the reference" in wrong.detail
    assert good.status == "ok" and good.seconds > 0 and good.machine == _machine()


def test_the_tuner_survives_bad_candidates(tmp_path, small):
    """Every third candidate comes back crashed, hung or wrong (as the worker above reports them):
    each is recorded with its status, none is a winner, and the search finishes."""
    bad = ["crashed", "timeout", "wrong"]

    class Sabotaged(Timed):
        def measure(self, tasks):
            out = super().measure(tasks)
            return [measure.Outcome(bad[len(self.seen) // 3 % 3], detail="sabotaged", machine=_machine())
                    if len(self.seen) % 3 == 0 else o for o in out]

    result = tune(small, budget=600, threads=1, db=tmp_path / "r.sqlite", max_candidates=16, measurer=Sabotaged())
    with Records(tmp_path / "r.sqlite") as records:
        statuses = [r.status for r in records.all()]
    assert {"crashed", "timeout", "wrong"} <= set(statuses) and statuses.count("ok") >= 6
    assert result.winner is not None and result.winner.status == "ok" and result.failed >= 3


# ---------------------------------------------------------------------------
# Records and builds
# ---------------------------------------------------------------------------

def test_a_build_uses_the_winner_says_so_replays_it_byte_for_byte_and_not_when_stale(small, records_at):
    before = convgen.build(small, threads=1)
    assert before.schedule_source == "default" and "no tuned record" in before.tuned
    result = tune(small, budget=600, threads=1, max_candidates=4, min_seconds=0.005)
    after = convgen.build(small, threads=1)
    assert after.schedule_source == "tuned" and f"record {result.winner.id}" in after.tuned
    replayed = convgen.build(small, "llvm", schedule=schedule_for(small, host(), _point(result.winner)).steps,
                             threads=1)
    assert after.source == replayed.source
    x, w, b = (np.random.default_rng(3).standard_normal(shape).astype(np.float32)
               for shape in (small.input_shape, small.weight_shape, (small.out_channels,)))
    out = np.full(small.output_shape, np.nan, np.float32)
    np.testing.assert_allclose(after(x, w, b, out=out), convgen.reference(small, x, w, b), rtol=1e-4, atol=1e-4)
    # another thread count is another record: none yet, and the plan says so
    assert "no tuned record" in convgen.build(small, threads=2).tuned
    # a winner from another convgen is stale: it warns, and the default is used
    with sqlite3.connect(records_at) as db:
        db.execute("UPDATE winners SET convgen_version = '0.0.1+old'")
    with pytest.warns(ConvgenWarning, match="stale"):
        kernel = convgen.build(small, threads=1)
    assert kernel.schedule_source == "default" and "stale" in kernel.tuned


def test_tune_report_and_the_records_commands(tmp_path):
    spec = tmp_path / "small.yaml"
    spec.write_text(json.dumps(SMALL))
    plot, first = tmp_path / "curve.png", tmp_path / "a.sqlite"
    result = _cli("tune", spec, "--threads", "1", "--max-candidates", "4", "--min-time", "0.005s", "--db", first,
                  "--report", "--plot", plot)
    assert result.returncode == 0, result.stderr
    assert "tune_small: default" in result.stdout and "GFLOP/s" in result.stdout and "winner: record" in result.stdout
    assert "4 measured" in result.stderr and "best" in result.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    exported = _cli("records", "export", "--db", first)
    lines = exported.stdout.splitlines()
    assert exported.returncode == 0 and len(lines) >= 4 and json.loads(lines[0])["spec_name"] == "tune_small"
    (tmp_path / "r.jsonl").write_text(exported.stdout)
    second = tmp_path / "b.sqlite"
    assert f"imported {len(lines)} records" in _cli("records", "import", tmp_path / "r.jsonl", "--db", second).stdout
    assert "imported 0 records" in _cli("records", "import", tmp_path / "r.jsonl", "--db", second).stdout
    listed = _cli("records", "list", "--db", first).stdout
    assert "tune_small" in listed and "*" in listed
    (tmp_path / "bad.jsonl").write_text('{"spec_name": "x"}\n')
    bad = _cli("records", "import", tmp_path / "bad.jsonl", "--db", second)
    assert bad.returncode == 2 and "line 1: expected a record exported by" in bad.stderr


# ---------------------------------------------------------------------------
# Killed and resumed
# ---------------------------------------------------------------------------

def test_killing_the_tuner_loses_no_record_and_a_rerun_resumes(tmp_path):
    spec = tmp_path / "small.yaml"
    spec.write_text(json.dumps(SMALL))
    db = tmp_path / "r.sqlite"
    args = [sys.executable, "-m", "convgen.cli", "tune", str(spec), "--threads", "1", "--min-time", "0.005",
            "--db", str(db), "--budget", "10m"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while _count(db) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Records(db) as records:
        kept = records.all()
    assert len(kept) >= 3 and all(r.status in ("ok", "refused") for r in kept)
    rerun = subprocess.run(args[:-2] + ["--max-candidates", str(len(kept) + 3)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(kept)} resumed" in rerun.stderr
    with Records(db) as records:
        after = records.all()
    assert after[:len(kept)] == kept                              # nothing lost or rewritten
    assert len(after) == len(kept) + 3                            # three more, none measured twice
    assert len({r.config for r in after}) == len(after)
    assert [r.sequence for r in after] == list(range(len(after)))
    with Records(db) as records:
        assert records.winner(spec_fingerprint(load_spec(SMALL)), kept[0].target_fingerprint, 1,
                              convgen_version()) is not None


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT count(*) FROM records").fetchone()[0]
    except sqlite3.Error:
        return 0


# ---------------------------------------------------------------------------
# A cluster
# ---------------------------------------------------------------------------

def test_a_local_dask_cluster_measures_candidates(tmp_path, small):
    distributed = pytest.importorskip("distributed", reason="Dask distributed is the cluster extra (convgen[cluster])")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result = tune(small, budget=600, threads=1, db=tmp_path / "r.sqlite", cluster=cluster.scheduler_address,
                      max_candidates=3, min_seconds=0.005)
    with Records(tmp_path / "r.sqlite") as records:
        measured = records.all()
    assert len(measured) >= 3 and sum(r.status == "ok" for r in measured) >= 2
    assert result.winner is not None and result.tuned_gflops > 0
    assert all(r.target.startswith(host().cpu) for r in measured)


def _point(record):
    return tuple(sorted(json.loads(record.config).items()))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "convgen.cli", *map(str, args)], capture_output=True, text=True)
