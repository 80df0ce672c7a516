"""Firmware cost of convgen's int8 kernels on Cortex-M4 and Cortex-M55 under
QEMU: instructions per call and per MAC, code size and stack, for the int8
layer specs of specs/layers/ and the int8 DS-CNN network, next to CMSIS-NN's
figures for the layers the firmware-speed issue measured it on.

    python benchmarks/mcu.py [--targets cortex-m4,cortex-m55] [--portable] [SPEC ...]

Each kernel is the target's default (what `convgen compile -t c --target T`
writes), cross-compiled with the target's flags and run by the firmware
harness (convgen/firmware.py) on random inputs, its outputs checked bit for
bit against the NumPy reference. Instructions are counted by SysTick under
QEMU with -icount shift=0, to one tick (40 instructions on the M4's board,
31.25 on the M55's): instructions executed, not cycles; QEMU is not
cycle-accurate. --portable adds the portable C (the naive loop nest) on the
M4. Code size is the kernel object's text (code and constants); stack is
the kernel's own frame (-fstack-usage). Needs gcc-arm-none-eabi,
libnewlib-arm-none-eabi and qemu-system-arm (.ci/run installs them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

import convgen
from convgen import firmware
from convgen.check import random_inputs, random_network_input
from convgen.codegen.c import Baking
from convgen.driver import emit, plan, plan_network
from convgen.network import load_network
from convgen.reference import network_reference, reference
from convgen.target import load_target

ROOT = Path(__file__).resolve().parents[1]
NETWORK = ROOT / "specs" / "networks" / "ds_cnn_int8.yaml"

# CMSIS-NN at commit 99f736a, its DSP path (SMLAD), arm-none-eabi-gcc 12 -O2, on QEMU's
# mps2-an386 (Cortex-M4) with -icount shift=0, the same inputs, outputs bit-identical:
# the firmware-speed issue's measurements (exact instruction traces).
CMSIS_NN_M4 = {"ds_cnn_dw_int8": 560_953, "ds_cnn_pw_int8": 1_069_003, "person_detect_conv1_int8": 2_324_045}


def measure_layer(spec, target, folder: Path, schedule=None) -> firmware.Report:
    """The layer's cost on the target, after checking its outputs bit for bit."""
    chosen = plan(spec, target, schedule)
    files = emit(chosen, "c")
    inputs = random_inputs(spec, np.random.default_rng(0))
    run = firmware.run_on_qemu(chosen.func, files, target, inputs, folder / "check")
    _require_exact(run, reference(spec, inputs["x"], inputs.get("w"), inputs.get("b")), spec.name, target)
    return firmware.report(chosen.func, files, target, folder / "report", inputs, spec.macs)


def measure_network(network, target, folder: Path) -> tuple[firmware.Report, int]:
    """The whole network as one C function with its weights baked, checked bit for bit."""
    chosen = plan_network(network, target)
    files = emit(chosen, "c", Baking(chosen.weights))
    x = random_network_input(network, np.random.default_rng(0))
    run = firmware.run_on_qemu(chosen.func, files, target, {"x": x}, folder / "check")
    _require_exact(run, network_reference(network, x, network.load_weights())[network.output], network.name, target)
    macs = sum(step.plan.spec.macs for step in chosen.layers if step.plan is not None)
    return firmware.report(chosen.func, files, target, folder / "report", {"x": x}, macs), macs


def _require_exact(run: firmware.BoardRun, expected: np.ndarray, name: str, target) -> None:
    """Stop unless every call's output equals the reference bit for bit."""
    if not all(np.array_equal(out.reshape(expected.shape), expected) for out in run.outputs["y"]):
        raise SystemExit(f"{name} on {target.name}: outputs differ from the reference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", type=Path, help="int8 layer specs (default: specs/layers/*_int8.yaml)")
    parser.add_argument("--targets", default="cortex-m4,cortex-m55")
    parser.add_argument("--portable", action="store_true", help="add the portable C (naive nest) on the M4")
    args = parser.parse_args()
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm"):
        firmware.require_tool(tool)
    warnings.simplefilter("ignore", convgen.ConvgenWarning)
    targets = [load_target(name) for name in args.targets.split(",")]
    paths = args.specs or sorted((ROOT / "specs" / "layers").glob("*_int8.yaml"))
    columns = [f"{t.name}: {what}" for t in targets for what in ("instructions", "per MAC", "text", "stack")]
    extra = ["portable C on cortex-m4"] if args.portable else []
    print("| layer | MACs | " + " | ".join(columns + extra) + " | CMSIS-NN (M4, DSP) | M4 / CMSIS-NN |")
    print("|---" * (len(columns) + len(extra) + 4) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [(convgen.load_spec(path), None) for path in paths] + [(None, load_network(NETWORK))]
        for spec, network in rows:
            name = spec.name if spec is not None else f"{network.name} (network)"
            cells, m4 = [], None
            for target in targets:
                folder = Path(tmp) / name / target.name
                if spec is not None:
                    cost, macs = measure_layer(spec, target, folder), spec.macs
                else:
                    cost, macs = measure_network(network, target, folder)
                m4 = cost.instructions if target.name == "cortex-m4" else m4
                cells += [f"{cost.instructions:,}", f"{cost.instructions / macs:.2f}", f"{cost.text} B",
                          f"{cost.stack} B"]
            if args.portable:
                portable = (measure_layer(spec, load_target("cortex-m4"), Path(tmp) / name / "portable", "naive")
                            .instructions if spec is not None else None)
                cells.append(f"{portable:,}" if portable else "-")
            cmsis = CMSIS_NN_M4.get(name)
            ratio = f"{m4 / cmsis:.2f}x" if cmsis and m4 else "-"
            print(f"| {name} | {macs:,} | " + " | ".join(cells) + f" | {f'{cmsis:,}' if cmsis else '-'} | {ratio} |",
                  flush=True)


if __name__ == "__main__":
    sys.exit(main())
