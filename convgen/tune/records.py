"""Every measurement the tuner makes, kept in an SQLite database.

One row per candidate measured (or refused, or failed): the layer (a
fingerprint of its spec without name, schedule or weights, and its name),
the target (a fingerprint of CPU name, features and cores), the
thread count, convgen's version (its release and a digest of its source: a
record from another convgen is stale, since the same schedule may then emit
other code), the point of the space, the schedule as the YAML a user would
write, the median time and GFLOP/s, the status, the wall time it cost, and
when. A winner per layer, target, threads and version is kept once a search
has confirmed it against the default by measuring both again.

Each row is committed as it is written (SQLite's journal keeps the file
consistent when a process is killed mid-write), so a killed tuner loses at
most the candidate it was measuring.

Where: --db, else $CONVGEN_RECORDS, else the platform's user data folder
(platformdirs: ~/.local/share/convgen/records.sqlite on Linux).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import warnings
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from ..errors import ConvgenError
from ..spec import Spec
from ..target import Target

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec_fingerprint TEXT NOT NULL,
    spec_name TEXT NOT NULL,
    target_fingerprint TEXT NOT NULL,
    target TEXT NOT NULL,
    threads INTEGER NOT NULL,
    convgen_version TEXT NOT NULL,
    search TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    config TEXT NOT NULL,
    schedule TEXT NOT NULL,
    status TEXT NOT NULL,
    seconds REAL,
    gflops REAL,
    detail TEXT NOT NULL,
    cost_seconds REAL NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_layer ON records (spec_fingerprint, target_fingerprint, threads, convgen_version);
CREATE TABLE IF NOT EXISTS winners (
    spec_fingerprint TEXT NOT NULL,
    target_fingerprint TEXT NOT NULL,
    threads INTEGER NOT NULL,
    convgen_version TEXT NOT NULL,
    record_id INTEGER NOT NULL REFERENCES records (id),
    seconds REAL NOT NULL,
    default_seconds REAL,
    created TEXT NOT NULL,
    PRIMARY KEY (spec_fingerprint, target_fingerprint, threads, convgen_version)
);
"""

STATUSES = ("ok", "refused", "failed", "wrong", "crashed", "timeout")


@dataclass(frozen=True)
class Record:
    spec_fingerprint: str
    spec_name: str
    target_fingerprint: str
    target: str                 # what the fingerprint is of: "znver4, 2 cores"
    threads: int
    convgen_version: str
    search: str                 # the search that measured it: "guided:0", "random:3", "imported"
    sequence: int               # its place in that search
    config: str                 # the point of the space, as JSON
    schedule: str               # the steps, as the YAML a user would write in a spec's `schedule:`
    status: str                 # one of STATUSES
    seconds: float | None       # median seconds a call, status "ok" only
    gflops: float | None
    detail: str                 # why it failed; what it was
    cost_seconds: float         # wall time the tuner spent on it
    created: str                # ISO 8601, UTC
    id: int | None = None

    def steps(self) -> tuple:
        """The schedule's steps, parsed from its YAML (schedule_text wrote it)."""
        from ..schedule.steps import parse_steps
        return parse_steps(yaml.safe_load(self.schedule) or [], f"record {self.id}: schedule")

    def as_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self) if f.name != "id"}, sort_keys=True)


@dataclass(frozen=True)
class Winner:
    record: Record
    seconds: float              # the winner's time when confirmed, in the same run as the default's
    default_seconds: float | None
    created: str


def default_path() -> Path:
    configured = os.environ.get("CONVGEN_RECORDS", "").strip()
    if configured:
        return Path(configured)
    import platformdirs
    return Path(platformdirs.user_data_dir("convgen", appauthor=False)) / "records.sqlite"


def spec_fingerprint(spec: Spec) -> str:
    """The layer, whatever its file and name: what decides the schedules that
    apply and how fast they run (not the weights' values)."""
    layer = replace(spec, name="layer", schedule=None, source="", weights=None, bias_values=None)
    return hashlib.sha256(repr(layer).encode()).hexdigest()[:16]


def target_fingerprint(target: Target) -> str:
    return machine_fingerprint(target.cpu, target.features, target.cores)


def target_description(target: Target) -> str:
    return machine_description(target.cpu, target.features, target.cores)


def machine_fingerprint(cpu: str, features: str, cores: int) -> str:
    """What a measurement holds for: the CPU as LLVM names it, its features, its cores."""
    return hashlib.sha256(f"{cpu}|{features}|{cores}".encode()).hexdigest()[:16]


def machine_description(cpu: str, features: str, cores: int) -> str:
    return f"{cpu}, {cores} core{'s' * (cores != 1)}"


@lru_cache(maxsize=1)
def convgen_version() -> str:
    """convgen's release and a digest of its source: records from any other are stale."""
    from ..cache import _convgen_digest
    try:
        release = version("convgen")
    except PackageNotFoundError:
        release = "unknown"
    return f"{release}+{_convgen_digest()[:12]}"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Records:
    """The database: open with a path (created with its folder where missing)."""

    def __init__(self, path: str | os.PathLike | None = None, create: bool = True):
        self.path = Path(path) if path is not None else default_path()
        if not create and not self.path.exists():
            self._db = None
            return
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)   # autocommit: a row a commit
            if create:   # readers (a build looking for a winner) leave the file as it is
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_SCHEMA)
            self._db.execute("SELECT count(*) FROM winners").fetchone()
        except (OSError, sqlite3.Error) as err:
            raise ConvgenError(f"{self.path}: expected a convgen records database (SQLite); {err}") from err

    @property
    def exists(self) -> bool:
        return self._db is not None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add(self, record: Record) -> Record:
        names = [f.name for f in fields(Record) if f.name != "id"]
        cursor = self._db.execute(f"INSERT INTO records ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                                  [getattr(record, n) for n in names])
        return replace(record, id=cursor.lastrowid)

    def layer(self, spec_fp: str, target_fp: str, threads: int, convgen: str | None = None) -> list[Record]:
        """The records of one layer on one target and thread count (of this convgen, where given), oldest first."""
        query = "SELECT * FROM records WHERE spec_fingerprint=? AND target_fingerprint=? AND threads=?"
        args = [spec_fp, target_fp, threads]
        if convgen is not None:
            query += " AND convgen_version=?"
            args.append(convgen)
        return self._select(query + " ORDER BY id", args)

    def all(self) -> list[Record]:
        return self._select("SELECT * FROM records ORDER BY id", [])

    def set_winner(self, record: Record, seconds: float, default_seconds: float | None) -> None:
        self._db.execute("INSERT OR REPLACE INTO winners VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (record.spec_fingerprint, record.target_fingerprint, record.threads,
                          record.convgen_version, record.id, seconds, default_seconds, now()))

    def winner(self, spec_fp: str, target_fp: str, threads: int, convgen: str) -> Winner | None:
        if self._db is None:
            return None
        row = self._db.execute("SELECT record_id, seconds, default_seconds, created FROM winners WHERE "
                               "spec_fingerprint=? AND target_fingerprint=? AND threads=? AND convgen_version=?",
                               (spec_fp, target_fp, threads, convgen)).fetchone()
        if row is None:
            return None
        record = self._select("SELECT * FROM records WHERE id=?", [row[0]])[0]
        return Winner(record, row[1], row[2], row[3])

    def winners(self) -> list[Winner]:
        rows = self._db.execute("SELECT record_id, seconds, default_seconds, created FROM winners").fetchall()
        return [Winner(self._select("SELECT * FROM records WHERE id=?", [r[0]])[0], r[1], r[2], r[3]) for r in rows]

    def versions(self, spec_fp: str, target_fp: str, threads: int) -> list[str]:
        """The convgen versions that have a winner for this layer, target and threads."""
        if self._db is None:
            return []
        rows = self._db.execute("SELECT DISTINCT convgen_version FROM winners WHERE spec_fingerprint=? AND "
                                "target_fingerprint=? AND threads=?", (spec_fp, target_fp, threads)).fetchall()
        return [r[0] for r in rows]

    def _select(self, query: str, args: list) -> list[Record]:
        if self._db is None:
            return []
        cursor = self._db.execute(query, args)
        names = [d[0] for d in cursor.description]
        return [Record(**dict(zip(names, row))) for row in cursor.fetchall()]

    def import_lines(self, lines) -> tuple[int, int]:
        """(added, already there) from JSON lines of `export`; a record already here is not added twice."""
        added = skipped = 0
        known = {r.as_json() for r in self.all()}
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                record = Record(**{f.name: data[f.name] for f in fields(Record) if f.name != "id"})
            except (ValueError, KeyError, TypeError) as err:
                raise ConvgenError(f"line {number}: expected a record exported by `convgen records export`; {err}")
            if record.status not in STATUSES:
                raise ConvgenError(f"line {number}: status: expected one of {', '.join(STATUSES)}; got {record.status!r}")
            if record.as_json() in known:
                skipped += 1
                continue
            self.add(record)
            known.add(record.as_json())
            added += 1
        return added, skipped



def tuned_schedule(spec: Spec, target: Target, threads: int, stacklevel: int = 2) -> tuple[tuple | None, str]:
    """(the steps of the tuner's winner for this layer, target and thread count,
    what was used), or (None, why there is none). A winner from another
    convgen is stale: a ConvgenWarning says so and the default is used."""
    from ..errors import ConvgenWarning
    records = Records(create=False)
    try:
        if not records.exists:
            return None, f"no tuned record: no records database at {records.path}"
        layer, machine = spec_fingerprint(spec), target_fingerprint(target)
        winner = records.winner(layer, machine, threads, convgen_version())
        if winner is None:
            stale = [v for v in records.versions(layer, machine, threads) if v != convgen_version()]
            if stale:
                warnings.warn(f"{spec.name}: the tuned records for this layer on {target_description(target)} "
                              f"({threads} thread{'s' * (threads != 1)}) are from convgen {stale[-1]}, this is "
                              f"{convgen_version()}: they are stale, and the default schedule is used; run "
                              f"`convgen tune` again", ConvgenWarning, stacklevel=stacklevel)
                return None, f"tuned records stale (convgen {stale[-1]}), in {records.path}"
            return None, (f"no tuned record for this layer on {target_description(target)}, "
                          f"{threads} thread{'s' * (threads != 1)}, in {records.path}")
        record = winner.record
        steps = record.steps()
        against = f" against {_gflops(record, winner.default_seconds)} for the default" if winner.default_seconds else ""
        return steps, (f"record {record.id} of {records.path}: {_gflops(record, winner.seconds)}{against}, "
                       f"tuned {winner.created[:10]}")
    finally:
        records.close()


def _gflops(record: Record, seconds: float) -> str:
    return f"{record.gflops * record.seconds / seconds:.1f} GFLOP/s" if record.gflops and record.seconds else "?"


def schedule_text(steps: tuple) -> str:
    """Steps as the YAML a user writes in a spec's `schedule:`, a step a line."""
    return "".join(f"- {_flow(step.to_data())}\n" for step in steps)


def _flow(data) -> str:
    if isinstance(data, str):
        return data
    return yaml.safe_dump(data, default_flow_style=True, width=1 << 20).strip()
