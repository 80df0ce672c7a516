"""`convgen bench ... --plot FILE.png`: the machine's roofline with each
layer's results on it, convgen's and the peers'.

The roof is the measured FMA peak (convgen.peak) and, for layers that move
more bytes than their arithmetic hides, the measured memory bandwidth times
the layer's arithmetic intensity: its FLOPs (every tap, as GFLOP/s is
counted everywhere in convgen bench) over the bytes it must move at the
least (input, weights, bias and output, each once). Plotting is an optional
extra: matplotlib (`pip install 'convgen[plot]'`), imported only here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ConvgenError
from .spec import Spec


def least_bytes(spec: Spec) -> int:
    """Bytes a layer reads and writes at the least: each array once."""
    dtypes = spec.array_dtypes
    sizes = {"x": spec.input_shape, "y": spec.output_shape}
    if spec.is_conv:
        sizes["w"] = spec.weight_shape
        if spec.bias:
            sizes["b"] = (spec.out_channels,)
    return sum(int(np.prod(shape)) * dtypes[name].itemsize for name, shape in sizes.items())


def plot_roofline(layers: list[tuple[Spec, list]], peak_gflops: float, bandwidth_gbs: float, path: Path,
                  title: str) -> Path:
    """Write a PNG: the roof, and a point per layer and contender (bench Entries)."""
    try:
        import matplotlib
        matplotlib.use("Agg")   # no screen needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConvgenError("bench: --plot needs matplotlib (pip install 'convgen[plot]')") from None
    intensities = [2 * spec.macs / least_bytes(spec) for spec, _ in layers]
    low, high = min(intensities + [1.0]) / 2, max(intensities + [peak_gflops / bandwidth_gbs]) * 2
    x = np.geomspace(low, high, 200)
    figure, axes = plt.subplots(figsize=(9, 6))
    axes.loglog(x, np.minimum(peak_gflops, bandwidth_gbs * x), color="black", linewidth=2,
                label=f"roof: FMA peak {peak_gflops:.0f} GFLOP/s, memory {bandwidth_gbs:.0f} GB/s")
    names = sorted({e.name for _, entries in layers for e in entries if e.seconds is not None},
                   key=lambda n: (not n.startswith("convgen"), n))
    markers = dict(zip(names, "o^sDvP*Xh<>"))
    for name in names:
        points = [(i, e.gflops(spec)) for (spec, entries), i in zip(layers, intensities)
                  for e in entries if e.name == name and e.seconds is not None]
        mine = name.startswith("convgen")
        axes.scatter([p[0] for p in points], [p[1] for p in points], marker=markers.get(name, "o"),
                     s=60 if mine else 30, label=name, zorder=3 if mine else 2,
                     facecolors=None if mine else "none", edgecolors=None if mine else f"C{names.index(name)}")
    for (spec, entries), i in zip(layers, intensities):
        mine = next((e for e in entries if e.name == "convgen" and e.seconds is not None), None)
        if mine is not None:
            axes.annotate(spec.name, (i, mine.gflops(spec)), fontsize=7, xytext=(4, 4), textcoords="offset points")
    axes.set_xlabel("arithmetic intensity (FLOP per byte moved at the least)")
    axes.set_ylabel("GFLOP/s (every tap counted)")
    axes.set_title(title)
    axes.grid(True, which="both", linewidth=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
