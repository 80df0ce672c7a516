"""The benchmark suite as a Markdown table, for BENCHMARKS.md.

    python benchmarks/suite_table.py [--threads 1,2] [--rounds 3]

Runs `convgen bench` (the Python API) on every spec in specs/bench/ for each
thread count and prints one row per layer: convgen and each peer in
GFLOP/s (or microseconds for the call-overhead layer), convgen's share of
the measured FMA peak, and convgen's ratio to the fastest peer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import convgen
from convgen.bench import PEERS, bench
from convgen.peak import measure_peak
from convgen.target import host

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    specs = [convgen.load_spec(p) for p in sorted((ROOT / "specs" / "bench").glob("*.yaml"))]
    for threads in (int(t) for t in args.threads.split(",")):
        peak = measure_peak(threads).gflops
        print(f"\n{threads} thread(s), host {host().cpu}, measured FMA peak {peak:.0f} GFLOP/s\n")
        peers = ["torch (NCHW)", "torch (channels_last)", "onnxruntime", "numpy"]
        print("| layer | convgen | " + " | ".join(peers) + " | convgen % of peak | convgen / fastest peer |")
        print("|---" * (len(peers) + 4) + "|")
        for spec in specs:
            entries = {e.name: e for e in bench(spec, threads, PEERS, rounds=args.rounds)}
            tiny = spec.macs < 1000
            def cell(name):
                entry = entries.get(name)
                if entry is None or entry.seconds is None:
                    return "-"
                return f"{entry.seconds * 1e6:.1f} us" if tiny else f"{entry.gflops(spec):.0f}"
            mine = entries["convgen"]
            timed = [entries[p] for p in peers if p in entries and entries[p].seconds is not None]
            best = min(timed, key=lambda e: e.seconds) if timed else None
            share = "-" if tiny else f"{100 * mine.gflops(spec) / peak:.0f}%"
            ratio = f"{best.seconds / mine.seconds:.2f}x" if best and mine.seconds else "-"
            print(f"| {spec.name.removeprefix('bench_')} | {cell('convgen')} | "
                  + " | ".join(cell(p) for p in peers) + f" | {share} | {ratio} |")


if __name__ == "__main__":
    main()
