"""Measuring convgen against other libraries on one layer, in one process.

Each contender gets the same random inputs, on 64-byte boundaries as every
framework's allocator gives them, in its own preferred layout (converted
before timing) and its result is compared with the float64
reference before it is timed; a contender that does not match is reported,
not timed. Timing is interleaved (a round measures every contender once,
median of many calls after warm-up) and the median over rounds is kept, so
drift on a shared machine affects everyone alike.

The peers (convgen/peers.py) are optional: a missing one is reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .check import compare_runs, random_inputs, tolerance, weight_transform
from .errors import ConvgenError, ScheduleError
from .reference import reference
from .driver import build
from .peers import PEERS, as_nchw, from_nchw, torch_layer
from .runtime import aligned_copy, empty, measure
from .schedule.space import winograd_schedule
from .spec import Spec
from .target import host

DEFAULT_PEERS = ("torch", "onnxruntime", "tflite", "numpy")


@dataclass
class Entry:
    name: str
    seconds: float | None = None   # median seconds per call; None when not timed
    note: str = ""                 # why not timed, or what was measured
    error: float | None = None     # max |result - reference| / max |reference| (float64 reference)
    schedule: str = ""             # convgen's kernels: the schedule applied, and the recipe if a default

    def gflops(self, spec: Spec) -> float | None:
        """GFLOP/s over the layer's nominal MACs (every tap), the same for every contender."""
        return None if self.seconds is None else 2 * spec.macs / self.seconds / 1e9

    def share_of_peak(self, spec: Spec, peak_gflops: float) -> float | None:
        """The fraction of the FMA peak the multiply-adds executed (taps in zero
        padding skipped, spec.executed_macs) take."""
        return None if self.seconds is None else 2 * spec.executed_macs / self.seconds / 1e9 / peak_gflops

    def as_dict(self, spec: Spec) -> dict:
        return {**asdict(self), "gflops": self.gflops(spec)}


def bench(spec: Spec, threads: int = 1, peers=DEFAULT_PEERS, schedule=None, seed: int = 0,
          rounds: int = 3, min_seconds: float = 0.2, winograd=()) -> list[Entry]:
    """convgen's kernel (the spec's schedule, else the default for the target),
    for each tile size in `winograd` (2, 4) its Winograd kernel, and the peers."""
    # every contender reads the same cache-line-aligned arrays, as its own allocator would give it
    inputs = {name: aligned_copy(array) for name, array in random_inputs(spec, np.random.default_rng(seed)).items()}
    expected = reference(spec, **inputs)
    schedules = {}
    contenders = {"convgen": _convgen(spec, inputs, schedule, threads, schedules, "convgen")}
    entries = {}
    for tile in winograd:
        name = winograd_name(tile)
        try:
            steps = winograd_schedule(spec, host(), threads, tile).steps
            contenders[name] = _convgen(spec, inputs, steps, threads, schedules, name)
        except ScheduleError as err:
            entries[name] = Entry(name, note=f"not applicable: {err.message}")
    for peer in peers:
        if spec.is_quantized or spec.residual:
            entries[peer] = Entry(peer, note="not timed: the peers here run float32 layers, not int8" if
                                  spec.is_quantized else "not timed: the peers here add no residual")
            continue
        try:
            contenders.update(PEERS[peer](spec, inputs, threads))
        except ImportError as err:
            entries[peer] = Entry(peer, note=f"not installed ({err.name})")
        except NotImplementedError as err:
            entries[peer] = Entry(peer, note=f"cannot express this layer: {err}")
        except Exception as err:  # a peer that fails is reported, never fatal to the benchmark
            entries[peer] = Entry(peer, note=f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
    calls, errors = {}, {}
    for name, (call, to_user, *transform) in contenders.items():
        allowed = None if spec.is_quantized else tolerance(spec, inputs, *transform)
        result = compare_runs(spec, [to_user(call())], expected, inputs, allowed)
        if result.passed:
            calls[name] = call
            errors[name] = _relative(result.max_abs_error, expected)
        else:
            entries[name] = Entry(name, note=f"does not match the reference (max error {result.max_abs_error:.3g})",
                                  schedule=schedules.get(name, ""))
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(measure(call, min_seconds=min_seconds))
    for name in calls:
        entries[name] = Entry(name, float(np.median(times[name])), error=errors[name],
                              schedule=schedules.get(name, ""))
    mine = [n for n in entries if n.startswith("convgen")]
    order = sorted(mine, key=lambda n: n != "convgen") + [n for n in entries if n not in mine]
    return [entries[n] for n in order]


def winograd_name(tile: int) -> str:
    return f"convgen winograd F({tile}x{tile})"


def _convgen(spec: Spec, inputs, schedule, threads: int, schedules: dict, name: str):
    """(call, to user's layout, weight transform): the transform decides the error bound.
    schedule None: the spec's own, else the default, as convgen.build chooses it.
    What was applied goes into schedules[name]."""
    kernel = build(spec, "llvm", schedule=schedule, threads=threads)
    schedules[name] = (f"{kernel.schedule_source} schedule, {len(kernel.steps)} steps"
                       + (f": {kernel.recipe.describe()}" if kernel.recipe else ""))
    call = kernel.bind(inputs["w"], inputs.get("b")) if spec.is_conv else kernel
    out = empty(spec.output_shape, spec.array_dtypes["y"])
    return lambda: call(inputs["x"], out=out), lambda y: y, weight_transform(kernel.func)




# ---------------------------------------------------------------------------
# On a CUDA GPU: convgen's kernel against PyTorch's cuDNN convolution
# ---------------------------------------------------------------------------

def bench_cuda(spec: Spec, seed: int = 0, repeats: int = 100, rounds: int = 3) -> list[Entry]:
    """convgen's CUDA kernel (the default GPU schedule for the GPU here) and
    PyTorch's convolution on cuDNN (float32, TF32 off, cudnn.benchmark on),
    each checked against the reference first, then timed with CUDA events on
    arrays already in device memory: `repeats` calls, median over `rounds`."""
    inputs = {name: aligned_copy(array) for name, array in random_inputs(spec, np.random.default_rng(seed)).items()}
    expected = reference(spec, **inputs)
    kernel = build(spec, "cuda")
    if not kernel.device.startswith("on the GPU"):
        raise ConvgenError(f"bench -t cuda: no GPU here to time on (cuda kernels run {kernel.device}); "
                           f"it needs an NVIDIA GPU, its driver, nvcc and cuda-bindings (pip install 'convgen[gpu]')")
    entries = [_convgen_on_gpu(spec, kernel, inputs, expected, repeats, rounds)]
    if spec.is_quantized:
        return entries + [Entry("torch (cuDNN)", note="not timed: float32 peers only")]
    try:
        entries.append(_torch_on_gpu(spec, inputs, expected, repeats, rounds))
    except ImportError as err:
        entries.append(Entry("torch (cuDNN)", note=f"not installed ({err.name})"))
    return entries


def _convgen_on_gpu(spec: Spec, kernel, inputs, expected, repeats: int, rounds: int) -> Entry:
    from . import gpu
    schedule = f"{kernel.schedule_source} schedule" + (f": {kernel.recipe.describe()}" if kernel.recipe else "")
    arrays = dict(inputs, y=empty(spec.output_shape, spec.array_dtypes["y"]))
    result = compare_runs(spec, [kernel(**inputs, out=arrays["y"])], expected, inputs,
                          None if spec.is_quantized else tolerance(spec, inputs, weight_transform(kernel.func)))
    if not result.passed:
        return Entry("convgen (cuda)", note=f"does not match the reference (max error {result.max_abs_error:.3g})",
                     schedule=schedule)
    buffers = kernel.program.buffers
    device = [gpu.allocate(b.nbytes) for b in buffers]
    try:
        for buffer, address in zip(buffers, device):
            if buffer.name in arrays and buffer.name != "y":
                gpu.to_device(address, arrays[buffer.name].ctypes.data, buffer.nbytes)
        prepared = len(kernel.program.prepare)
        stages = kernel.stages
        for stage in stages[:prepared]:
            stage.launch_on_device(device)

        def run():
            for stage in stages[prepared:]:
                stage.launch_on_device(device, wait=False)
        gpu.elapsed_ms(run, 3)   # warm-up
        times = [gpu.elapsed_ms(run, repeats) / 1e3 for _ in range(rounds)]
    finally:
        for address in device:
            gpu.free(address)
    return Entry("convgen (cuda)", float(np.median(times)), error=_relative(result.max_abs_error, expected),
                 schedule=schedule)


def _torch_on_gpu(spec: Spec, inputs, expected, repeats: int, rounds: int) -> Entry:
    import torch

    torch.backends.cudnn.allow_tf32 = False   # float32 arithmetic, as convgen's
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    memory = torch.channels_last if spec.input_layout == "NHWC" else torch.contiguous_format
    x = torch.from_numpy(as_nchw(inputs["x"], spec.input_layout)).cuda().contiguous(memory_format=memory)
    w = torch.from_numpy(inputs["w"]).cuda().contiguous(memory_format=memory) if spec.is_conv else None
    b = torch.from_numpy(inputs["b"]).cuda() if spec.is_conv and spec.bias else None
    layer = torch_layer(spec, w, b)
    with torch.no_grad():
        y = from_nchw(layer(x).contiguous().cpu().numpy(), spec.output_layout)
    result = compare_runs(spec, [np.ascontiguousarray(y)], expected, inputs)
    name = "torch (cuDNN)"
    if not result.passed:
        return Entry(name, note=f"does not match the reference (max error {result.max_abs_error:.3g})")
    times = []
    with torch.no_grad():
        for _ in range(3):
            layer(x)
        for _ in range(rounds):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                layer(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / repeats / 1e3)
    return Entry(name, float(np.median(times)), error=_relative(result.max_abs_error, expected),
                 note=f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, TF32 off")


def _relative(error: float, expected: np.ndarray) -> float:
    return error / max(float(np.abs(expected).max()), 1e-30)
