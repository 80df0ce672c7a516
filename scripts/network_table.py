"""The README's table of the example networks: layers before and after
folding and fusion, and the memory plan's arena beside the lower bound and
the naive sum, on this machine's default schedules.

    python scripts/network_table.py [specs/networks]
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from convgen.driver import plan_network
from convgen.network import load_network


def main(folder: str = "specs/networks") -> int:
    warnings.simplefilter("ignore")   # layers without a recipe: `convgen show` names them
    for path in sorted(Path(folder).glob("*.yaml")):
        plan = plan_network(load_network(path))
        m = plan.memory
        print(f"| {path.stem} | {len(plan.network.layers)} | {len(plan.fused.layers)} | {m.arena_bytes:,} B "
              f"| {m.lower_bound:,} B | {m.naive_bytes:,} B |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
