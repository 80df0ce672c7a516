"""How much faster a parallel schedule runs on N threads than on one.

    python benchmarks/parallel_speedup.py [SPEC] [--threads N] [--rounds R]

Builds the layer with a parallel schedule (a direct recipe written out: 16-channel
vectors, an 8-column register tile, blocked weights, padded input, the
channel-block and row loops fused and run in parallel), checks it against
the reference, then times 1 and N threads interleaved, R rounds of medians,
and prints the ratio for each backend. A benchmark, not a test: run it on
an otherwise idle machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import convgen
from convgen.check import random_inputs
from convgen.runtime import measure
from convgen.schedule import Schedule
from convgen.target import host

ROOT = Path(__file__).resolve().parents[1]


def parallel_schedule(spec) -> Schedule:
    lanes = host().vector_lanes
    return (Schedule.for_spec(spec).split("oc", lanes).split("ow", 8)
            .reorder("oc.o", "oh", "ow.o", "ow.i", "oc.i").cache_write("ow.o")
            .reorder("ic", "kh", "kw", "ow.i", "oc.i").unroll("ow.i").vectorize("oc.i")
            .reorder("ow.i.init", "oc.i.init").vectorize("oc.i.init")
            .layout("w", f"OIHW{lanes}o").pad_input().fuse("oc.o", "oh").parallel("oc.o_oh"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default=ROOT / "specs" / "layers" / "resnet_3x3_64.yaml")
    parser.add_argument("--threads", type=int, default=host().cores)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    spec = convgen.load_spec(args.spec)
    inputs = random_inputs(spec, np.random.default_rng(0))
    flops = 2 * spec.macs
    print(f"{spec.name} on {host().cpu}, {host().cores} cores; {flops / 1e6:.0f} MFLOP per call")
    for target in convgen.codegen.CPU_BACKENDS:
        kernel = convgen.build(spec, target, schedule=parallel_schedule(spec))
        assert convgen.check(kernel, 1).passed, f"{target}: the parallel kernel does not match the reference"
        bound = kernel.bind(inputs["w"], inputs.get("b"))
        out = np.empty(spec.output_shape, dtype=np.float32)
        times = {1: [], args.threads: []}
        for _ in range(args.rounds):  # interleaved, so drift affects both alike
            for threads in times:
                times[threads].append(measure(lambda: bound(inputs["x"], out=out, threads=threads), min_seconds=0.5))
        one, many = np.median(times[1]), np.median(times[args.threads])
        print(f"  {target:<5} 1 thread {one * 1e3:.3f} ms ({flops / one / 1e9:.0f} GFLOP/s), "
              f"{args.threads} threads {many * 1e3:.3f} ms ({flops / many / 1e9:.0f} GFLOP/s): "
              f"{one / many:.2f}x")


if __name__ == "__main__":
    main()
