"""The benchmark suite as a Markdown table, for BENCHMARKS.md.

    python benchmarks/suite_table.py [--threads 1,2] [--rounds 7]

Runs `convgen bench` (the Python API) on every spec in specs/bench/ for each
thread count and prints one row per layer: convgen and each peer in
GFLOP/s (or microseconds for the call-overhead layer), convgen's share of
the measured FMA peak (counting the multiply-adds executed: taps in zero
padding are skipped), and convgen's ratio to the fastest peer; for 3x3
stride-1 layers also the Winograd kernels' ratios (F(4x4,3x3), F(2x2,3x3))
with their relative error against the float64 reference, next to the
direct kernel's. Seven rounds by default (`convgen bench` takes three): on
a shared host a slow spell of a second or two then has to cover four of a
contender's rounds, not two, to move its median.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import convgen
from convgen.bench import DEFAULT_PEERS, bench, winograd_name
from convgen.peak import measure_peak
from convgen.target import host

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    specs = [convgen.load_spec(p) for p in sorted((ROOT / "specs" / "bench").glob("*.yaml"))]
    for threads in (int(t) for t in args.threads.split(",")):
        peak = measure_peak(threads).gflops
        print(f"\n{threads} thread(s), host {host().cpu}, measured FMA peak {peak:.0f} GFLOP/s\n")
        peers = ["torch (NCHW)", "torch (channels_last)", "onnxruntime", "tflite", "numpy"]
        tiles = (4, 2)
        print("| layer | convgen | " + " | ".join(peers) + " | convgen % of peak | convgen / fastest peer (rel. error) | "
              + " | ".join(f"Winograd F({t}x{t}) / fastest peer (rel. error)" for t in tiles) + " |")
        print("|---" * (len(peers) + 4 + len(tiles)) + "|")
        for spec in specs:
            entries = {e.name: e for e in bench(spec, threads, DEFAULT_PEERS, rounds=args.rounds, winograd=tiles)}
            tiny = spec.macs < 1000
            def cell(name):
                entry = entries.get(name)
                if entry is None or entry.seconds is None:
                    return "-"
                return f"{entry.seconds * 1e6:.1f} us" if tiny else f"{entry.gflops(spec):.0f}"
            mine = entries["convgen"]
            timed = [entries[p] for p in peers if p in entries and entries[p].seconds is not None]
            best = min(timed, key=lambda e: e.seconds) if timed else None
            share = "-" if tiny else f"{100 * mine.share_of_peak(spec, peak):.0f}%"   # executed MACs

            def ratio(entry):
                if entry is None or entry.seconds is None or best is None:
                    return "-"
                return f"{best.seconds / entry.seconds:.2f}x ({entry.error:.0e})"

            print(f"| {spec.name.removeprefix('bench_')} | {cell('convgen')} | "
                  + " | ".join(cell(p) for p in peers) + f" | {share} | {ratio(mine)} | "
                  + " | ".join(ratio(entries.get(winograd_name(t))) for t in tiles) + " |")


if __name__ == "__main__":
    main()
