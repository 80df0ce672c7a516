"""The `convgen` command: a thin layer over the Python API.

Exit status: 0 success, 1 a kernel did not match the reference, 2 bad input
(a spec, an argument) or a failed compilation. Errors print as one message
without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from . import ir
from .check import check
from .codegen.c import emit_c
from .codegen.llvm import emit_llvm
from .errors import ConvgenError
from .lower import lower
from .runtime import BACKENDS, build, llvm_assembly
from .spec import Spec, load_spec
from .target import host


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except ConvgenError as err:
        print(err, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convgen: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convgen", description="A compiler for convolution layers: "
                                     "YAML spec -> loop-nest IR -> LLVM (JIT) and C kernels.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="shapes, parameter count and MACs of a layer")
    info.add_argument("spec", help="layer spec (YAML)")
    info.set_defaults(run=_info)

    show = commands.add_parser("show", help="print the loop nest a spec lowers to")
    show.add_argument("spec", help="layer spec (YAML)")
    show.set_defaults(run=_show)

    compile_ = commands.add_parser("compile", help="write the emitted code for one backend")
    compile_.add_argument("spec", help="layer spec (YAML)")
    compile_.add_argument("-t", "--target", choices=BACKENDS, default="llvm", help="backend (default: llvm)")
    compile_.add_argument("-o", "--output", type=Path, help="folder to write into (default: build/<name>/)")
    compile_.add_argument("--asm", action="store_true", help="llvm: also write the host assembly (.s)")
    compile_.set_defaults(run=_compile)

    check_ = commands.add_parser("check", help="build a spec and compare it with the NumPy reference")
    check_.add_argument("spec", help="layer spec (YAML)")
    check_.add_argument("-t", "--target", default=",".join(BACKENDS),
                        help=f"comma-separated backends (default: {','.join(BACKENDS)})")
    check_.add_argument("--seed", type=int, help="seed for the random inputs (default: fresh)")
    check_.set_defaults(run=_check)

    build_ = commands.add_parser("build", help="compile and check every spec under a folder")
    build_.add_argument("dir", type=Path, help="folder of layer specs (searched recursively for *.yaml)")
    build_.add_argument("-o", "--output", type=Path, default=Path("build"), help="output root (default: build/)")
    build_.add_argument("--seed", type=int, help="seed for the random inputs (default: fresh)")
    build_.set_defaults(run=_build)
    return parser


def _info(args) -> int:
    spec = load_spec(args.spec)
    kh, kw = spec.kernel_size
    top, bottom, left, right = spec.padding
    rows = [("name", f"{spec.name}  ({spec.source})"),
            ("op", spec.op + (f", {spec.in_channels} -> {spec.out_channels} channels, groups {spec.groups}"
                              if spec.is_conv else f", {spec.in_channels} channels")),
            ("input", f"{list(spec.input_shape)} {spec.input_layout}")]
    if spec.is_conv:
        origin = "from the spec" if spec.weights is not None else "given at call time"
        rows.append(("weights", f"{list(spec.weight_shape)} OIHW, {origin}"))
        rows.append(("bias", f"[{spec.out_channels}]" if spec.bias else "none"))
    rows += [("output", f"{list(spec.output_shape)} {spec.output_layout}"),
             ("window", f"{kh}x{kw}, stride {list(spec.stride)}, dilation {list(spec.dilation)}"),
             ("padding", f"top {top}, bottom {bottom}, left {left}, right {right} ({spec.padding_mode})"),
             ("activation", spec.activation),
             ("parameters", f"{spec.param_count:,}"),
             ("MACs", f"{spec.macs:,}")]
    for key, value in rows:
        print(f"{key:<11} {value}")
    return 0


def _show(args) -> int:
    print(ir.format_func(lower(load_spec(args.spec))), end="")
    return 0


def _compile(args) -> int:
    spec = load_spec(args.spec)
    folder = args.output or Path("build") / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    func = lower(spec)
    written = []
    if args.target == "llvm":
        text = emit_llvm(func, host())
        written.append(_write(folder / f"{spec.name}.ll", text))
        if args.asm:
            written.append(_write(folder / f"{spec.name}.s", llvm_assembly(text, host())))
    else:
        if args.asm:
            raise ConvgenError("compile: --asm: only for -t llvm (build the .c with your compiler's -S)")
        files = emit_c(func)
        written.append(_write(folder / f"{spec.name}.h", files.header))
        written.append(_write(folder / f"{spec.name}.c", files.source))
    for path in written:
        print(path)
    return 0


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _targets(text: str) -> list[str]:
    targets = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in targets if t not in BACKENDS]
    if unknown or not targets:
        raise ConvgenError(f"--target: expected a comma-separated list of {', '.join(BACKENDS)}; got {text!r}")
    return targets


def _seed(args) -> int:
    return args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**32)


def _check(args) -> int:
    spec = load_spec(args.spec)
    seed = _seed(args)
    failed = False
    for target in _targets(args.target):
        result = check(build(spec, target), seed)
        failed |= not result.passed
        print(f"{spec.name} [{target}]: {'pass' if result.passed else 'FAIL'}  max error "
              f"{result.max_abs_error:.3g} (allowed {result.max_allowed:.3g})"
              + (f", {result.unwritten} outputs never written" if result.unwritten else ""))
    print(f"seed {seed}")
    return 1 if failed else 0


_COLUMNS = ("spec", "target", "output shape", "MACs", "max error", "result")
_WIDTHS = (26, 6, 18, 13, 10, 6)


def _row(values) -> str:
    return "  ".join(str(v).ljust(w) for v, w in zip(values, _WIDTHS)).rstrip()


def _build(args) -> int:
    if not args.dir.is_dir():
        raise ConvgenError(f"build: {args.dir}: expected a folder of specs; no such folder")
    paths = sorted(args.dir.rglob("*.yaml"))
    if not paths:
        raise ConvgenError(f"build: {args.dir}: no *.yaml specs found")
    seed = _seed(args)
    print(f"convgen build: {len(paths)} specs x {len(BACKENDS)} backends, host {host().cpu}, seed {seed}")
    print(_row(_COLUMNS))
    print(_row("-" * w for w in _WIDTHS))
    problems, passed, total = [], 0, 0
    for path in paths:
        try:
            spec = load_spec(path)
        except ConvgenError as err:
            problems.append(str(err))
            print(_row((path.stem, "-", "-", "-", "-", "ERROR")), flush=True)
            total += 1
            continue
        for target in BACKENDS:
            total += 1
            ok = _build_one(spec, target, args.output / spec.name, seed, problems)
            passed += ok
    print(f"\n{passed}/{total} passed")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 0 if passed == total else 1


def _build_one(spec: Spec, target: str, folder: Path, seed: int, problems: list[str]) -> bool:
    shape = "x".join(str(s) for s in spec.output_shape)
    try:
        kernel = build(spec, target, workdir=folder)
        result = check(kernel, seed)
    except ConvgenError as err:
        problems.append(f"{spec.source} [{target}]: {err}")
        print(_row((spec.name, target, shape, f"{spec.macs:,}", "-", "ERROR")), flush=True)
        return False
    verdict = "pass" if result.passed else "FAIL"
    if not result.passed:
        problems.append(f"{spec.source} [{target}]: max error {result.max_abs_error:.3g} exceeds "
                        f"{result.max_allowed:.3g}; {result.unwritten} outputs never written")
    print(_row((spec.name, target, shape, f"{spec.macs:,}", f"{result.max_abs_error:.2g}", verdict)), flush=True)
    return result.passed


if __name__ == "__main__":
    sys.exit(main())
