"""Time one layer's bound call on its own, for comparing two versions of convgen.

    python benchmarks/bound_call.py SPEC [--threads 1] [--calls 400] [--warmup 50]

Builds the spec's default kernel (as convgen.build gives it), binds random
weights, and calls it with x and out= (cache-line-aligned arrays, as bench
passes them) `calls` times; prints the fastest, the 10th percentile and the
median of the calls after the warm-up, in microseconds. Run it alternately
from two checkouts (PYTHONPATH pointing at each) to compare them on one
machine: the suite's tables time every peer too, and on a noisy machine the
peers' swings hide a few percent of convgen's.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import convgen
from convgen.check import random_inputs
from convgen.runtime import aligned_copy, empty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    warnings.simplefilter("ignore", convgen.ConvgenWarning)
    spec = convgen.load_spec(args.spec)
    inputs = {name: aligned_copy(array) for name, array in random_inputs(spec, np.random.default_rng(0)).items()}
    kernel = convgen.build(spec, "llvm", threads=args.threads)
    call = kernel.bind(inputs["w"], inputs.get("b")) if spec.is_conv else kernel
    out = empty(spec.output_shape, spec.array_dtypes["y"])
    times = []
    for _ in range(args.warmup + args.calls):
        start = time.perf_counter()
        call(inputs["x"], out=out)
        times.append(time.perf_counter() - start)
    timed = np.array(times[args.warmup:]) * 1e6
    print(f"{spec.name}, {args.threads} thread(s): fastest {timed.min():.0f} us, "
          f"10th percentile {np.percentile(timed, 10):.0f} us, median {np.median(timed):.0f} us")


if __name__ == "__main__":
    main()
