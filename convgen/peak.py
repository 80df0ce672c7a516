"""The machine's floating-point peak, measured with a generated FMA kernel.

`peak` runs chains of vector fused multiply-adds, as many independent
chains as hide the FMA latency on every FMA unit, on vectors as wide as the
target's registers; no memory traffic. Its rate is the ceiling a
convolution kernel is measured against (`convgen bench` prints % of it).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
from llvmlite import ir as ll

from .native import jit_function, openmp
from .runtime import measure
from .target import Target, host

CHAINS = 12  # independent accumulators: latency 4 x 2 FMA pipes = 8 needed, 12 to spare


@dataclass(frozen=True)
class Peak:
    threads: int
    gflops: float
    lanes: int


def peak_module(target: Target, chains: int = CHAINS) -> str:
    """void peak(i64 n, ptr io): n rounds of `chains` vector FMAs; void peak.omp(ptr args) per thread.

    io holds the multiplier, the addend and one seed per chain, then room for
    the chains' sum. They are read at run time because LLVM folds a chain whose
    constant seed is a fixed point of the FMA (1.0 * 0.999999 + 1e-6 rounds to
    1.0), which silently left fewer chains than the rate counts."""
    lanes = target.vector_lanes
    f32, i64 = ll.FloatType(), ll.IntType(64)
    vector = ll.VectorType(f32, lanes)
    module = ll.Module(name="peak")
    module.triple = target.triple
    fma = ll.Function(module, ll.FunctionType(vector, [vector] * 3), name=f"llvm.fma.v{lanes}f32")
    kernel = ll.Function(module, ll.FunctionType(ll.VoidType(), [i64, ll.PointerType()]), name="peak")
    entry, loop, done = (kernel.append_basic_block(n) for n in ("entry", "loop", "done"))
    b = ll.IRBuilder(entry)
    io = kernel.args[1]

    def splat(index: int):
        value = b.load(b.gep(io, [ll.Constant(i64, index)], source_etype=f32), typ=f32)
        first = b.insert_element(ll.Constant(vector, None), value, ll.Constant(i64, 0))
        return b.shuffle_vector(first, ll.Constant(vector, None),
                                ll.Constant(ll.VectorType(ll.IntType(32), lanes), [0] * lanes))

    scale, shift = splat(0), splat(1)
    seeds = [splat(2 + k) for k in range(chains)]
    b.branch(loop)
    b.position_at_end(loop)
    index = b.phi(i64)
    index.add_incoming(ll.Constant(i64, 0), entry)
    chains_in = [b.phi(vector) for _ in range(chains)]
    chains_out = [b.call(fma, [acc, scale, shift]) for acc in chains_in]
    for seed, acc, new in zip(seeds, chains_in, chains_out):
        acc.add_incoming(seed, entry)
        acc.add_incoming(new, loop)
    following = b.add(index, ll.Constant(i64, 1))
    index.add_incoming(following, loop)
    b.cbranch(b.icmp_signed("<", following, kernel.args[0]), loop, done)
    b.position_at_end(done)
    total = chains_out[0]
    for value in chains_out[1:]:
        total = b.fadd(total, value)
    result = b.gep(io, [ll.Constant(i64, 2 + chains)], source_etype=f32)
    b.store(total, result).align = 4  # a result, so the chains are not optimised away
    b.ret_void()

    per_thread = ll.Function(module, ll.FunctionType(ll.VoidType(), [ll.PointerType()]), name="peak.omp")
    b = ll.IRBuilder(per_thread.append_basic_block("entry"))
    thread = b.sext(b.call(ll.Function(module, ll.FunctionType(ll.IntType(32), []), name="omp_get_thread_num"),
                           []), i64)
    rounds = b.load(per_thread.args[0], typ=i64)
    buffers = b.load(b.gep(per_thread.args[0], [ll.Constant(i64, 1)], source_etype=i64), typ=ll.PointerType())
    b.call(kernel, [rounds, b.gep(buffers, [b.mul(thread, ll.Constant(i64, io_floats(lanes, chains)))],
                                  source_etype=f32)])
    b.ret_void()
    return str(module)


def io_floats(lanes: int, chains: int = CHAINS) -> int:
    """Floats of one thread's io buffer: multiplier, addend, seeds, then the sum."""
    return 2 + chains + lanes


def io_buffers(threads: int, lanes: int, chains: int = CHAINS) -> np.ndarray:
    """Every thread's io: a multiplier and addend that keep the chains bounded, distinct seeds."""
    one = np.zeros(io_floats(lanes, chains), dtype=np.float32)
    one[0], one[1] = 0.999999, 1e-6
    one[2:2 + chains] = 1.0 + np.arange(chains) / 64
    return np.tile(one, threads)


def measure_peak(threads: int = 1, target: Target | None = None, seconds: float = 0.3) -> Peak:
    """GFLOP/s of the FMA kernel on `threads` threads (2 flops per FMA lane)."""
    target = target or host()
    library = openmp()
    function, engine = jit_function(peak_module(target), "peak.omp", target)
    rounds = 2_000_000
    buffers = io_buffers(threads, target.vector_lanes)
    arguments = (ctypes.c_int64 * 2)(rounds, buffers.ctypes.data)
    address = ctypes.cast(function, ctypes.c_void_p)
    seconds_per_call = measure(lambda: library.GOMP_parallel(address, arguments, threads, 0), min_seconds=seconds)
    flops = 2.0 * rounds * CHAINS * target.vector_lanes * threads
    del engine  # kept alive until here: the code lives in it
    return Peak(threads, flops / seconds_per_call / 1e9, target.vector_lanes)


def measure_bandwidth(megabytes: int = 128, seconds: float = 0.3) -> float:
    """The machine's memory bandwidth in GB/s as one thread sees it: bytes read
    and written by a copy of `megabytes` MiB (beyond any cache), per second.
    The roofline's slope: the ceiling of a layer that moves more bytes than
    its arithmetic can hide."""
    count = megabytes * 2**20 // 4
    source, target = np.ones(count, np.float32), np.empty(count, np.float32)
    seconds_per_copy = measure(lambda: np.copyto(target, source), min_seconds=seconds)
    return 2 * source.nbytes / seconds_per_copy / 1e9
