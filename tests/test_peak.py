"""The FMA peak kernel: every chain it counts must survive LLVM's optimiser."""

import re

from convgen.peak import CHAINS, io_buffers, peak_module
from convgen.native import optimized_module
from convgen.target import host


def _accumulators_in_loop(llvm_ir: str) -> int:
    """Vector phis in the optimised loop block: one per FMA chain that is still computed."""
    optimized = str(optimized_module(llvm_ir, host()))
    blocks = re.split(r"\n(?=[\w.]+:)", optimized)
    loop = next(block for block in blocks if block.startswith("loop:"))
    return len(re.findall(r"= phi <\d+ x float>", loop))


def test_every_counted_chain_is_computed():
    # With constant seeds, a seed that is a fixed point of the FMA (1.0 * 0.999999 + 1e-6
    # rounds to 1.0) was folded away: 9 of 12 chains ran and the rate was a third too high.
    assert _accumulators_in_loop(peak_module(host())) == CHAINS


def test_io_seeds_are_distinct_and_the_sum_has_room():
    lanes = host().vector_lanes
    io = io_buffers(2, lanes).reshape(2, -1)
    assert io.shape[1] == 2 + CHAINS + lanes
    assert len(set(io[0, 2:2 + CHAINS].tolist())) == CHAINS
    assert (io[0] == io[1]).all()

