"""The tuner against the default and against random search, for BENCHMARKS.md.

    python benchmarks/tune_search.py run --strategy guided --budget 60 --layers suite network -o build/tune/guided.json
    python benchmarks/tune_search.py run --strategy random --budget 60 --layers suite network -o build/tune/random.json
    python benchmarks/tune_search.py table build/tune/guided.json build/tune/random.json
    python benchmarks/tune_search.py paired build/tune/guided.json build/tune/random.json --layers suite network
    python benchmarks/tune_search.py paired build/tune/long.json build/tune/guided.json --layers SPEC...
    python benchmarks/tune_search.py curve build/tune/long.json --at 60
    python benchmarks/tune_search.py summary build/tune/networks.json

`run` tunes each layer (`convgen.tune.tuner.tune`) into a fresh records
database of its own, so no search reuses another's measurements, and
writes per layer the default's and the winner's GFLOP/s (timed in turn in
one worker after the search, so their ratio is measured in one run), the
candidates measured and the search curve. Layers: `suite` (specs/bench/),
`network` (one layer of each real network of benchmarks/network_layers.py,
NCHW: the fourth distinct layer, so not a stem), `networks-nchw` and
`networks-nhwc` (every distinct layer of the seven, in that layout) or spec
files.

`table` prints the Markdown table of one or two runs (a guided and a random
one with the same budget and seed); `paired` times the default and each
run's winner again, in turn in one worker process, so that the winners'
ratios come from one run on a quiet machine (the searches may have run
side by side, one a core); `curve` prints, from a long run, the best
GFLOP/s measured within the first N seconds against the best at its end
(both from the one run's records).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import convgen
import convgen.schedule.knobs
from convgen.target import host
from convgen.tune.tuner import tune

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from network_layers import NETWORKS, layers   # noqa: E402


def layer_specs(names: list[str]) -> list:
    specs = []
    for name in names:
        if name == "suite":
            specs += [convgen.load_spec(p) for p in sorted((ROOT / "specs" / "bench").glob("*.yaml"))]
        elif name == "network":
            specs += [convgen.load_spec(layers(net)[3].spec("NCHW")) for net in NETWORKS]
        elif name in ("networks-nchw", "networks-nhwc"):   # every distinct layer of the seven networks
            specs += [convgen.load_spec(layer.spec(name[-4:].upper())) for net in NETWORKS for layer in layers(net)]
        else:
            specs.append(convgen.load_spec(name))
    return specs


def run(args) -> None:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        part, parts = (int(n) for n in args.part.split("/"))
        for number, spec in enumerate(layer_specs(args.layers)):
            if number % parts != part - 1:
                continue
            begin = time.perf_counter()
            result = tune(spec, args.budget, args.threads, Path(folder) / f"{number}.sqlite", args.seed, args.strategy)
            results.append({"layer": spec.name, "default_gflops": result.default_gflops,
                            "tuned_gflops": result.tuned_gflops, "measured": result.measured,
                            "failed": result.failed, "wall_seconds": time.perf_counter() - begin,
                            "winner": result.winner.config if result.winner else None, "curve": result.curve})
            print(f"{spec.name}: default {result.default_gflops}, tuned {result.tuned_gflops}, "
                  f"{result.measured} candidates", file=sys.stderr, flush=True)
    machine = host()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"strategy": args.strategy, "budget": args.budget, "seed": args.seed,
                                       "threads": args.threads, "cpu": machine.cpu, "cores": machine.cores,
                                       "layers": results}, indent=1))


def table(args) -> None:
    runs = [json.loads(Path(p).read_text()) for p in args.runs]
    head = "| layer | default GFLOP/s | " + " | ".join(
        f"{r['strategy']} {r['budget']:g} s: best GFLOP/s (x default), candidates" for r in runs) + " |"
    print(head)
    print("|---" * (2 + len(runs)) + "|")
    ratios = [[] for _ in runs]
    bests = [[] for _ in runs]
    for index, row in enumerate(runs[0]["layers"]):
        cells = [row["layer"], f"{row['default_gflops']:.1f}" if row["default_gflops"] else "-"]
        for k, r in enumerate(runs):
            layer = r["layers"][index]
            tuned, default = layer["tuned_gflops"], layer["default_gflops"]
            bests[k].append(tuned)
            ratios[k].append(tuned / default)
            cells.append(f"{tuned:.1f} ({tuned / default:.2f}x), {layer['measured']}")
        print("| " + " | ".join(cells) + " |")
    print("| geometric mean | | " + " | ".join(
        f"{_geomean(b):.1f} ({_geomean(q):.2f}x)" for b, q in zip(bests, ratios)) + " |")
    if len(runs) == 2:
        wins = sum(a > b for a, b in zip(bests[0], bests[1]))
        print(f"\n{runs[0]['strategy']} / {runs[1]['strategy']}, geometric mean of best GFLOP/s: "
              f"{_geomean(bests[0]) / _geomean(bests[1]):.3f} ({wins} of {len(bests[0])} layers higher)")
    print(f"\nslowest tuned / default: {min(min(q) for q in ratios):.3f}")


def paired(args) -> None:
    """Time the default and each run's winner in turn, in one worker, layer by layer."""
    from convgen.schedule.space import schedule_for
    from convgen.tune.measure import Compare, Local
    runs = [json.loads(Path(p).read_text()) for p in args.runs]
    specs = {spec.name: spec for spec in layer_specs(args.layers)}
    names = [f"{r['strategy']} {r['budget']:g} s" for r in runs]
    print("| layer | default GFLOP/s | " + " | ".join(f"{n}: GFLOP/s (x default)" for n in names) + " |")
    print("|---" * (2 + len(runs)) + "|")
    found = [[] for _ in runs]
    local = Local()
    try:
        for row in runs[0]["layers"]:
            spec = specs[row["layer"]]
            winners = [next(layer["winner"] for layer in r["layers"] if layer["layer"] == spec.name) for r in runs]
            points = [tuple(sorted(json.loads(w).items())) for w in winners]
            default = convgen.schedule.knobs.start(spec, host(), runs[0]["threads"])
            steps = tuple(schedule_for(spec, host(), p).steps for p in [default] + points)
            times = local.compare(Compare(spec, steps, runs[0]["threads"], rounds=args.rounds))
            flops = 2 * spec.macs / 1e9
            # a winner that is the default itself is timed twice: its ratio is the timing's noise
            cells = [f"{flops / t:.1f} ({times[0] / t:.2f}x{', the default' if p == default else ''})"
                     for t, p in zip(times[1:], points)]
            for k, t in enumerate(times[1:]):
                found[k].append(flops / t)
            print(f"| {spec.name} | {flops / times[0]:.1f} | " + " | ".join(cells) + " |", flush=True)
    finally:
        local.close()
    print("| geometric mean | | " + " | ".join(f"{_geomean(f):.1f}" for f in found) + " |")
    if len(runs) == 2:
        print(f"\n{names[0]} / {names[1]}, geometric mean of the winners' GFLOP/s timed in turn: "
              f"{_geomean(found[0]) / _geomean(found[1]):.3f}")


def summary(args) -> None:
    """Runs over many layers in a few lines: tuned / default (the tuner's confirmation), and the winners' recipes."""
    from collections import Counter
    for path in args.runs:
        data = json.loads(Path(path).read_text())
        rows = [r for r in data["layers"] if r["tuned_gflops"] and r["default_gflops"]]
        ratios = [r["tuned_gflops"] / r["default_gflops"] for r in rows]
        best = max(rows, key=lambda r: r["tuned_gflops"] / r["default_gflops"])
        recipes = Counter(json.loads(r["winner"])["recipe"] for r in rows)
        print(f"{path}: {data['strategy']} {data['budget']:g} s, {data['threads']} thread(s), {len(rows)} of "
              f"{len(data['layers'])} layers with a winner; tuned / default: geometric mean {_geomean(ratios):.3f}, "
              f"lowest {min(ratios):.3f}, {sum(q >= 1.05 for q in ratios)} layers at 1.05x or more, highest "
              f"{max(ratios):.2f}x ({best['layer']}); winners' recipes: "
              + ", ".join(f"{name} {count}" for name, count in recipes.most_common()))


def curve(args) -> None:
    data = json.loads(Path(args.results).read_text())
    print(f"| layer | best within {args.at:g} s | best within {data['budget']:g} s | ratio |")
    print("|---|---|---|---|")
    for layer in data["layers"]:
        early = max((best for _, spent, best in layer["curve"] if best and spent <= args.at), default=None)
        late = max((best for _, _, best in layer["curve"] if best), default=None)
        print(f"| {layer['layer']} | {early:.1f} | {late:.1f} | {early / late:.3f} |")


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run")
    runner.add_argument("--strategy", choices=("guided", "random"), default="guided")
    runner.add_argument("--budget", type=float, default=60.0)
    runner.add_argument("--threads", type=int, default=1)
    runner.add_argument("--seed", type=int, default=0)
    runner.add_argument("--layers", nargs="+", default=["suite"])
    runner.add_argument("--part", default="1/1", help="K/N: every Nth layer from the Kth (to run N side by side)")
    runner.add_argument("-o", "--output", type=Path, required=True)
    runner.set_defaults(run=run)
    tabler = commands.add_parser("table")
    tabler.add_argument("runs", nargs="+")
    tabler.set_defaults(run=table)
    pairer = commands.add_parser("paired")
    pairer.add_argument("runs", nargs="+")
    pairer.add_argument("--layers", nargs="+", default=["suite"])
    pairer.add_argument("--rounds", type=int, default=7)
    pairer.set_defaults(run=paired)
    summer = commands.add_parser("summary")
    summer.add_argument("runs", nargs="+")
    summer.set_defaults(run=summary)
    curver = commands.add_parser("curve")
    curver.add_argument("results")
    curver.add_argument("--at", type=float, default=60.0)
    curver.set_defaults(run=curve)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
