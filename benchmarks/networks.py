"""Every distinct convolution layer of seven real networks, convgen's default
kernel against the fastest peer.

    python benchmarks/networks.py [--networks resnet18,unet] [--layouts NCHW,NHWC]
                                  [--threads 1,2] [--rounds 3] [--only TEXT] [--json FILE]

The layers are in benchmarks/network_layers.py (written from the networks'
published definitions). Each runs in NCHW and in NHWC through `convgen bench`'s
machinery (the Python API): the same aligned random inputs for every
contender, each checked against the float64 reference, then timed in
interleaved rounds. Peers: torch NCHW and channels_last, ONNX Runtime, and
TFLite with XNNPACK for NHWC layers. For each network, layout and thread
count: a row per layer (convgen's GFLOP/s, the fastest peer's, the ratio),
then the geometric mean of the ratios and the layers under 1.0x.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings

import convgen
from convgen.bench import bench
from convgen.target import host

from network_layers import NETWORKS, layers

PEERS = ("torch", "onnxruntime", "tflite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default=",".join(NETWORKS), help="comma-separated; default: all")
    parser.add_argument("--layouts", default="NCHW,NHWC")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="only the layers whose name contains this")
    parser.add_argument("--json", help="also write every result to this file")
    args = parser.parse_args()
    networks = args.networks.split(",")
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown:
        parser.error(f"--networks: expected names among {', '.join(NETWORKS)}; got {unknown[0]!r}")
    warnings.simplefilter("ignore", convgen.ConvgenWarning)   # a layer no recipe fits shows as slow
    results = []
    print(f"host {host().cpu}, convgen's default schedule, batch 1, float32\n")
    for threads in (int(t) for t in args.threads.split(",")):
        for layout in args.layouts.split(","):
            ratios = []
            for network in networks:
                rows = [layer for layer in layers(network) if args.only in layer.name]
                if not rows:
                    continue
                print(f"\n{network}, {layout}, {threads} thread(s)\n")
                print("| layer | shape | MFLOP | convgen GFLOP/s | fastest peer | its GFLOP/s | ratio |")
                print("|---|---|---|---|---|---|---|")
                for layer in rows:
                    result = _measure(layer, layout, threads, args.rounds)
                    results.append(result)
                    if result["ratio"] is not None:
                        ratios.append(result["ratio"])
                    print(_row(layer, result), flush=True)
            if ratios:
                below = sum(r < 1.0 for r in ratios)
                mean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
                print(f"\n**{layout}, {threads} thread(s): {len(ratios)} layers, geometric mean {mean:.2f}x, "
                      f"{below} under 1.0x, lowest {min(ratios):.2f}x**\n", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


def _measure(layer, layout: str, threads: int, rounds: int) -> dict:
    spec = convgen.load_spec(layer.spec(layout))
    started = time.perf_counter()
    entries = {e.name: e for e in bench(spec, threads, PEERS, rounds=rounds)}
    mine = entries["convgen"]
    peers = [e for e in entries.values() if e.name != "convgen" and e.seconds is not None]
    best = min(peers, key=lambda e: e.seconds) if peers else None
    ratio = best.seconds / mine.seconds if best and mine.seconds else None
    print(f"  {spec.name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return {"network": layer.network, "layer": layer.name, "layout": layout, "threads": threads,
            "mflop": 2 * spec.macs / 1e6, "convgen_gflops": mine.gflops(spec), "note": mine.note,
            "peer": best.name if best else None, "peer_gflops": best.gflops(spec) if best else None,
            "ratio": ratio, "peers": {e.name: e.gflops(spec) for e in entries.values() if e.name != "convgen"}}


def _row(layer, result: dict) -> str:
    shape = (f"{layer.in_channels}->{layer.out_channels} {layer.kernel[0]}x{layer.kernel[1]}/{layer.stride}"
             f" @{layer.size}" + (f" g{layer.groups}" if layer.groups > 1 else "")
             + (f" {layer.activation}" if layer.activation != "none" else "")
             + (f" +{layer.pool['op'][:3]}" if layer.pool else ""))
    mine = result["convgen_gflops"]
    peer = result["peer_gflops"]
    ratio = f"{result['ratio']:.2f}x" if result["ratio"] is not None else result["note"] or "-"
    return (f"| {layer.name} | {shape} | {result['mflop']:.1f} | {mine:.1f} | " if mine is not None else
            f"| {layer.name} | {shape} | {result['mflop']:.1f} | - | ") + \
        (f"{result['peer']} | {peer:.1f} | {ratio} |" if peer is not None else f"- | - | {ratio} |")


if __name__ == "__main__":
    main()
