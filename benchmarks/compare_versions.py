"""The benchmark suite with two versions of convgen side by side, in one process.

    python benchmarks/compare_versions.py OTHER_CHECKOUT [--threads 1,2] [--rounds 7] [--specs DIR] [--only NAME]

For a change that should keep the suite's speed (a refactor): OTHER_CHECKOUT
is a checkout of the version before it (e.g. `git worktree add ../before
<commit>`). Its `convgen` package is loaded next to this one (as
`convgen_before`), and for every spec in specs/bench/ (or DIR; int8 layers,
which the peers do not run, are left out) both versions' default
kernels (bound, as `convgen bench` times them) and the peers are timed in
the same interleaved rounds, the two versions' order swapped every round.
Prints, per layer, convgen / fastest peer before and after, and after /
before (the before kernel's time over the after kernel's: peers cancel),
from the medians of the rounds and from the best round of each version
(a slow spell must then cover every round to move it).

Why one process: on a shared machine the speed of every contender swings
by a third for seconds at a time (a busy neighbour on the sibling hardware
thread), and FMA-bound kernels swing more than the peers, so ratios from
separate runs differ by more than a refactor's few percent. Rounds that
interleave both versions share the machine's state.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

import convgen
from convgen.bench import DEFAULT_PEERS
from convgen.peers import PEERS
from convgen.check import random_inputs, tolerance
from convgen.peak import measure_peak
from convgen.reference import reference
from convgen.runtime import aligned_copy, empty, measure
from convgen.target import host

ROOT = Path(__file__).resolve().parents[1]
OTHER = "convgen_before"


def load_other(checkout: Path):
    """The other checkout's convgen package, importable as OTHER (its modules
    import each other relatively; it finds specs/ next to itself)."""
    where = Path(tempfile.mkdtemp(prefix="convgen-compare-"))
    shutil.copytree(checkout / "convgen", where / OTHER)
    for folder in ("specs", "templates"):
        if (checkout / folder).exists():
            (where / folder).symlink_to((checkout / folder).resolve())
    sys.path.insert(0, str(where))
    return importlib.import_module(OTHER)


def default_kernel_call(package, spec_path: Path, inputs: dict, out: np.ndarray, threads: int):
    """A no-argument call of this version's default kernel for the spec,
    bound to the weights, writing into `out`."""
    space = importlib.import_module(f"{package.__name__}.schedule.space")
    target = importlib.import_module(f"{package.__name__}.target")
    spec = package.load_spec(spec_path)
    steps = space.default_schedule(spec, target.host(), threads)   # what bench gives, in every version
    kernel = package.build(spec, "llvm", schedule=list(steps), threads=threads)
    call = kernel.bind(inputs["w"], inputs.get("b")) if spec.is_conv else kernel
    return lambda: call(inputs["x"], out=out)


def compare(spec_path: Path, other, threads: int, rounds: int) -> dict:
    spec = convgen.load_spec(spec_path)
    inputs = {n: aligned_copy(a) for n, a in random_inputs(spec, np.random.default_rng(0)).items()}
    expected = reference(spec, **inputs)
    allowed = tolerance(spec, inputs)
    # one output array for both: where an array lies against the input can cost a large
    # layer a fifth of its speed (cache sets, 4K aliasing), the same for either version
    out = empty(spec.output_shape, spec.array_dtypes["y"])
    versions = {"before": default_kernel_call(other, spec_path, inputs, out, threads),
                "after": default_kernel_call(convgen, spec_path, inputs, out, threads)}
    for name, call in versions.items():
        out[...] = np.nan
        call()
        if not np.all(np.abs(out - expected) <= allowed):   # NaN (an unwritten element) fails too
            error = float(np.nanmax(np.abs(out - expected)))
            raise SystemExit(f"{spec.name}: the {name} kernel does not match the reference (error {error:.3g})")
    peers = {}
    for peer in DEFAULT_PEERS:
        try:
            peers.update({name: entry[0] for name, entry in PEERS[peer](spec, inputs, threads).items()})
        except (ImportError, NotImplementedError):
            continue
    times = {name: [] for name in ["before", "after", *peers]}
    for k in range(rounds):
        order = ["before", "after"] if k % 2 == 0 else ["after", "before"]
        for name in order:
            times[name].append(measure(versions[name]))
        for name, call in peers.items():
            times[name].append(measure(call))
    medians = {name: float(np.median(t)) for name, t in times.items()}
    fastest = min((m, name) for name, m in medians.items() if name in peers)
    best = min(times["before"]) / min(times["after"])
    return {"spec": spec, "medians": medians, "fastest": fastest, "best": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="a checkout of the version to compare with")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--specs", type=Path, default=ROOT / "specs" / "bench", help="a folder of specs")
    parser.add_argument("--only", default="", help="only the specs whose file name contains this")
    args = parser.parse_args()
    warnings.simplefilter("ignore", convgen.ConvgenWarning)
    other = load_other(args.other)
    specs = sorted(p for p in args.specs.glob("*.yaml")
                   if args.only in p.name and not convgen.load_spec(p).is_quantized)
    for threads in (int(t) for t in args.threads.split(",")):
        print(f"\n{threads} thread(s), host {host().cpu}, measured FMA peak {measure_peak(threads).gflops:.0f} GFLOP/s\n")
        print("| layer | before | after | fastest peer | before / fastest peer | after / fastest peer | after / before "
              "| after / before, best rounds |")
        print("|---|---|---|---|---|---|---|---|")
        for path in specs:
            row = compare(path, other, threads, args.rounds)
            m, (peer_seconds, peer) = row["medians"], row["fastest"]
            before, after = peer_seconds / m["before"], peer_seconds / m["after"]
            print(f"| {row['spec'].name} | {m['before'] * 1e6:.1f} us | {m['after'] * 1e6:.1f} us | {peer} "
                  f"{peer_seconds * 1e6:.1f} us | {before:.2f}x | {after:.2f}x | {after / before:.3f} | "
                  f"{row['best']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
