"""Instructions per kernel call on a Cortex-M4 under QEMU: the naive nest
against the target's default schedule, for the int8 specs of specs/layers/.

    python benchmarks/mcu_schedules.py [SPEC ...]

Each kernel is cross-compiled (arm-none-eabi-gcc, the target's flags), linked
with the firmware harness's startup and linker script and a main that reads
SysTick (processor clock, 25 MHz on mps2-an386) before and after one call on
random inputs, and run with `-icount shift=0` (one instruction per virtual
nanosecond): a tick is 40 instructions. QEMU is not cycle-accurate: these are
instructions executed, not cycles. Needs gcc-arm-none-eabi,
libnewlib-arm-none-eabi and qemu-system-arm (.ci/run installs them).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

import convgen
from convgen.check import random_inputs
from convgen.codegen.c import C_TYPES, c_literals
from convgen.driver import emit, plan
from convgen.firmware import STRICT_FLAGS, _template_file, require_tool
from convgen.runtime import to_storage
from convgen.target import load_target

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTIONS_PER_TICK = 40   # 1 GHz of virtual time (-icount shift=0) over SysTick's 25 MHz

MAIN = """#include <stdint.h>
#include <stdio.h>
#include "{name}.h"
{arrays}
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
int main(void)
{{
    SYST_RVR = 0xFFFFFFu; SYST_CVR = 0; SYST_CSR = 5u;   /* processor clock, counting down */
    while (SYST_CVR == 0) {{ }}
    uint32_t before = SYST_CVR;
    {name}({args});
    uint32_t after = SYST_CVR;
    printf("ticks %lu\\n", (unsigned long)(before - after));
    return 0;
}}
"""


def ticks_per_call(spec, schedule, folder: Path) -> tuple[int, int, str]:
    """(SysTick ticks for one call, the kernel's text bytes, where its schedule came from)."""
    target = load_target("cortex-m4")
    chosen = plan(spec, target, schedule)
    files = emit(chosen, "c")
    for name, text in files.files.items():
        (folder / name).write_text(text)
    takes = convgen.ir.signature(chosen.func)
    inputs = random_inputs(spec, np.random.default_rng(0))
    arrays = []
    for a in takes.arguments:
        if a.role == "input":
            data = np.ascontiguousarray(to_storage(inputs[a.name], a.layout, a.buffer), dtype=a.dtype)
            literals = c_literals(a.dtype, data.ravel().tolist())
            arrays.append(f"static const {C_TYPES[a.dtype]} {a.name}_data[{len(literals)}] = {{{', '.join(literals)}}};")
        else:
            arrays.append(f"static {C_TYPES[a.dtype]} {a.name}_data[{a.buffer.size}];")
    (folder / "main.c").write_text(MAIN.format(name=files.name, arrays="\n".join(arrays),
                                               args=", ".join(f"{a.name}_data" for a in takes.arguments)))
    cc = [*target.cc, *target.cflags]
    subprocess.run([*cc, *STRICT_FLAGS, "-c", f"{files.name}.c", "-o", "kernel.o"], cwd=folder, check=True)
    subprocess.run([*cc, "-std=c99", "--specs=rdimon.specs", "-T", str(_template_file("link.ld")),
                    str(_template_file("startup.c")), "main.c", "kernel.o", "-o", "program.elf"],
                   cwd=folder, check=True)
    text = int(subprocess.run(["arm-none-eabi-size", "kernel.o"], cwd=folder, capture_output=True,
                              text=True, check=True).stdout.splitlines()[1].split()[0])
    run = subprocess.run(["qemu-system-arm", "-M", target.qemu, "-nographic", "-semihosting", "-icount", "shift=0",
                          "-kernel", "program.elf"], cwd=folder, capture_output=True, text=True, timeout=300)
    return int(run.stdout.split()[1]), text, chosen.schedule_source


def main() -> None:
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm"):
        require_tool(tool)
    warnings.simplefilter("ignore", convgen.ConvgenWarning)
    paths = [Path(p) for p in sys.argv[1:]] or sorted((ROOT / "specs" / "layers").glob("*_int8.yaml"))
    print("| layer | naive: instructions | default: instructions | fewer | default's schedule | code: naive -> default |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        spec = convgen.load_spec(path)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "naive").mkdir()
            (Path(tmp) / "default").mkdir()
            naive, naive_text, _ = ticks_per_call(spec, "naive", Path(tmp) / "naive")
            default, default_text, source = ticks_per_call(spec, None, Path(tmp) / "default")
        print(f"| {spec.name} | {naive * INSTRUCTIONS_PER_TICK:,} | {default * INSTRUCTIONS_PER_TICK:,} | "
              f"{naive / default:.2f}x | {source} | {naive_text} -> {default_text} B |")


if __name__ == "__main__":
    main()
