"""The `convgen` command: a thin layer over the Python API.

Exit status: 0 success, 1 a kernel did not match the reference, 2 bad input
(a spec, an argument) or a failed compilation. Errors print as one message
without a traceback.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
import os
import re
import sys
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import yaml

from . import cache as kernel_cache, firmware, ir
from .bench import DEFAULT_PEERS, bench, bench_cuda
from .peers import PEERS
from .check import check, check_network, random_inputs, random_network_input
from .codegen import BACKENDS, CPU_BACKENDS
from .codegen.c import Baking
from .driver import build, build_network, default_arch, emit, plan, plan_network
from .errors import ConvgenError, ConvgenWarning, ScheduleError
from .import_onnx import import_onnx, write_network
from .import_tflite import import_tflite
from .native import llvm_assembly, nvcc_compile
from .network import is_network, load_network
from .peak import measure_bandwidth, measure_peak
from .roofline import plot_roofline
from .schedule_page import nest_diff, schedule_page
from .schedule.steps import SCHEDULE_WORDS, load_steps
from .spec import Spec, load_spec
from .target import gpu_arches, host, load_gpu_target, load_target
from .tune.records import default_path as default_records_path


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("once", ConvgenWarning)
            warnings.showwarning = _show_warning
            return args.run(args)
    except ScheduleError as err:
        print(err.detailed() if getattr(args, "verbose", False) else err, file=sys.stderr)
        return 2
    except ConvgenError as err:
        print(err, file=sys.stderr)
        return 2
    except MemoryError:
        print(f"convgen {args.command}: out of memory: the layer's arrays do not fit in this machine's memory "
              f"(`convgen info` gives their shapes)", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`convgen build specs | head`): stop quietly, as other tools do
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        print("convgen: interrupted", file=sys.stderr)
        return 130


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A ConvgenWarning as one line on stderr, without Python's file and line."""
    print(f"convgen: note: {message}" if issubclass(category, ConvgenWarning) else
          warnings.formatwarning(message, category, filename, lineno, line), file=sys.stderr, end=
          "\n" if issubclass(category, ConvgenWarning) else "")


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit raises no second BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (the command, what is wrong, where help is) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _whole(least: int, what: str = "a whole number"):
    """An argparse type: an int of at least `least`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} of at least {least}; got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected {what} of at least {least}; got {value}")
        return value
    return parse


def _seed_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {2**32 - 1}; got {text!r}")
    return value


def _version() -> str:
    try:
        return version("convgen")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="convgen", description="A compiler for convolution layers: "
                     "YAML spec -> loop-nest IR -> LLVM (JIT) and C kernels.")
    parser.add_argument("--version", action="version", version=f"convgen {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    info = commands.add_parser("info", help="shapes, parameter count and MACs of a layer; a network's tensors")
    info.add_argument("spec", help="layer or network spec (YAML)")
    info.set_defaults(run=_info)

    show = commands.add_parser("show", help="print the loop nest, and what each schedule step changes")
    show.add_argument("spec", help="layer spec (YAML), or a network spec: its fused layers and memory plan")
    _schedule_option(show)
    show.add_argument("--verify-each-step", action="store_true",
                      help="check the kernel against the reference after lowering and after every step")
    show.add_argument("--seed", type=_seed_value, help="with --verify-each-step: seed for the random inputs")
    show.add_argument("--target", default="host", metavar="NAME",
                      help="the CPU whose default schedule to show: host (default) or a name in specs/targets/")
    show.add_argument("--arch", metavar="SM",
                      help=f"show the schedule for this GPU instead (cuda; {', '.join(gpu_arches())})")
    show.add_argument("--html", type=Path, metavar="FILE",
                      help="also write one page joining the steps, the loop nest after each and the emitted code")
    show.add_argument("-v", "--verbose", action="store_true",
                      help="also print the kernel after each pass; on a refused step, show the nest it met")
    show.set_defaults(run=_show)

    compile_ = commands.add_parser("compile", help="write the emitted code for one backend")
    compile_.add_argument("spec", help="layer or network spec (YAML)")
    compile_.add_argument("-t", "--backend", choices=BACKENDS, default="llvm", help="backend (default: llvm)")
    compile_.add_argument("-o", "--output", type=Path, help="folder to write into (default: build/<name>/)")
    compile_.add_argument("--asm", action="store_true", help="llvm: also write the assembly (.s)")
    compile_.add_argument("--target", default="host", metavar="NAME",
                          help="the CPU to compile for: host (default) or a file name in specs/targets/ "
                               "(x86-64-avx2, cortex-m4, cortex-m7, cortex-m55, ...)")
    compile_.add_argument("--arch", metavar="SM",
                          help=f"cuda: the GPU to schedule and compile for, a file in specs/targets/ "
                               f"({', '.join(gpu_arches())}; default: the GPU here, else sm_80)")
    compile_.add_argument("--prefix", default="", metavar="TEXT",
                          help="c, cuda: put TEXT before the function and file names (e.g. net1_)")
    compile_.add_argument("--report", action="store_true",
                          help="c: build with the target's compiler and print code size, stack use and the "
                               "RAM the caller provides; cuda: compile with nvcc and print each kernel's "
                               "registers, shared memory and spills (ptxas -v)")
    compile_.add_argument("--bake-weights", action="store_true",
                          help="c: put the weights and bias in the .c as const arrays (flash on a "
                               "microcontroller) instead of taking them as arguments; the values come from "
                               "the spec or --weights")
    compile_.add_argument("--weights", type=Path, metavar="FILE.npz",
                          help="with --bake-weights: arrays w (OIHW) and b to bake, as numpy.savez writes them")
    compile_.add_argument("--align", type=int, default=0, metavar="BYTES",
                          help="with --bake-weights: align the baked arrays to BYTES (a power of two)")
    compile_.add_argument("--section", default="", metavar="NAME",
                          help="with --bake-weights: the linker section of the baked arrays (e.g. .rodata.weights)")
    _schedule_option(compile_)
    compile_.set_defaults(run=_compile)

    check_ = commands.add_parser("check", help="build a spec and compare it with the NumPy reference")
    check_.add_argument("spec", help="layer or network spec (YAML)")
    check_.add_argument("-t", "--backend", default=",".join(CPU_BACKENDS),
                        help=f"comma-separated backends, of {','.join(BACKENDS)} (default: {','.join(CPU_BACKENDS)}; "
                             f"cuda runs on the CUDA emulator where there is no GPU)")
    check_.add_argument("--seed", type=_seed_value, help="seed for the random inputs (default: fresh)")
    _schedule_option(check_)
    check_.set_defaults(run=_check)

    bench = commands.add_parser("bench", help="time convgen against PyTorch, ONNX Runtime, TFLite and NumPy")
    bench.add_argument("spec", type=Path, help="a layer spec, or a folder of them")
    bench.add_argument("--threads", type=_whole(1), default=1, help="threads for every contender (default: 1)")
    bench.add_argument("--vs", default=",".join(DEFAULT_PEERS),
                       help=f"peers, comma-separated (default: {','.join(DEFAULT_PEERS)})")
    bench.add_argument("--rounds", type=_whole(1), default=3, help="interleaved rounds (default: 3)")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.add_argument("--plot", type=Path, metavar="FILE.png",
                       help="also draw the machine's roofline with every layer's results on it (needs matplotlib)")
    bench.add_argument("-v", "--verbose", action="store_true",
                       help="also say which schedule convgen applied: the recipe, its parameters and why")
    bench.add_argument("--winograd", action="store_true",
                       help="also time Winograd kernels, F(4x4,3x3) and F(2x2,3x3), for 3x3 stride-1 layers")
    bench.add_argument("-t", "--backend", choices=("llvm", "cuda"), default="llvm",
                       help="llvm (default): the CPU kernel against the CPU peers; cuda: the CUDA kernel on this "
                            "machine's GPU against PyTorch's cuDNN convolution (float32, TF32 off), timed "
                            "with CUDA events")
    bench.set_defaults(run=_bench)

    peak = commands.add_parser("peak", help="measure the machine's FMA peak with a generated kernel")
    peak.add_argument("--threads", type=_whole(1), help="up to this many threads (default: all cores)")
    peak.set_defaults(run=_peak)

    cache = commands.add_parser("cache", help="where built kernels are kept, and emptying it")
    cache.add_argument("action", choices=("info", "clear"),
                       help="info: the folder, its entries and size; clear: remove every entry")
    cache.set_defaults(run=_cache)

    tune = commands.add_parser("tune", help="search each layer's schedules; keep every measurement; builds then "
                                            "use the best")
    tune.add_argument("spec", type=Path, help="layer or network spec (YAML), or a folder of them")
    tune.add_argument("--budget", type=_time_value, default=60.0, metavar="TIME",
                      help="search time per layer: 60s (default), 90, 10m; a rerun continues the same search "
                           "(strategy and seed) until its budget is spent")
    tune.add_argument("--target", default="host", help="the machine to tune for: host (the one measuring)")
    tune.add_argument("--threads", type=_whole(1), help="threads the kernel runs on (default: all cores, as "
                                                        "convgen.build)")
    tune.add_argument("--db", type=Path, help="records database (default: $CONVGEN_RECORDS, else the user data "
                                              "folder; `convgen records where` says)")
    tune.add_argument("--seed", type=_seed_value, default=0, help="seed of the search and of the inputs (default 0)")
    tune.add_argument("--strategy", choices=("guided", "random"), default="guided",
                      help="guided (default): coordinate descent from the default, ranked by a cost model; "
                           "random: the baseline")
    tune.add_argument("--cluster", metavar="ADDRESS", help="measure on the workers of this Dask scheduler "
                                                           "(tcp://host:8786)")
    tune.add_argument("--timeout", type=_time_value, default=120.0, metavar="TIME",
                      help="a candidate that takes longer to build, check and time is recorded as hung "
                           "(default 120s)")
    tune.add_argument("--max-candidates", type=_whole(1), metavar="N", help="stop a layer after N candidates")
    tune.add_argument("--min-time", type=_time_value, default=0.1, metavar="TIME",
                      help="time each candidate's calls for at least this long, their median counting "
                           "(default 0.1s; longer on a noisy machine)")
    tune.add_argument("--report", action="store_true",
                      help="print each layer's default and tuned GFLOP/s and winning schedule, and plot the "
                           "search curves")
    tune.add_argument("--plot", type=Path, default=Path("build/tune/search_curve.png"), metavar="PNG",
                      help="where --report writes the curves (default: build/tune/search_curve.png)")
    tune.set_defaults(run=_tune)

    records = commands.add_parser("records", help="the tuner's measurements: list, export, import")
    records.add_argument("action", choices=("list", "export", "import", "where"),
                         help="list: every record, winners marked; export: as JSON lines on stdout; import FILE: "
                              "JSON lines from export; where: the database's path")
    records.add_argument("file", nargs="?", type=Path, help="import: the JSON lines file (- for stdin)")
    records.add_argument("--db", type=Path, help="records database (default: $CONVGEN_RECORDS, else the user "
                                                 "data folder)")
    records.set_defaults(run=_records)

    import_ = commands.add_parser("import", help="a model (ONNX or TFLite) as a network spec and its weights")
    import_.add_argument("model", type=Path, help="the model file (.onnx or .tflite)")
    import_.add_argument("-o", "--output", type=Path, metavar="DIR",
                         help="folder to write <name>.yaml and <name>.npz into (default: build/<model name>/)")
    import_.set_defaults(run=_import)

    build_ = commands.add_parser("build", help="compile and check every spec under a folder")
    build_.add_argument("dir", type=Path, help="folder of layer and network specs (searched recursively for *.yaml)")
    build_.add_argument("-o", "--output", type=Path, default=Path("build"), help="output root (default: build/)")
    build_.add_argument("--seed", type=_seed_value, help="seed for the random inputs (default: fresh)")
    build_.set_defaults(run=_build)
    return parser


def _schedule_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--schedule", metavar="FILE|naive|default",
                        help="schedule steps to apply instead of the spec's own (a YAML list, or a spec file "
                             "with a `schedule:` list); naive: the loop nest as lowered; default: the "
                             "target's default schedule (what a spec without a schedule gets)")


def _schedule(args):
    """The --schedule choice: None (the spec's own, else the default), a word, or steps from a file."""
    if args.schedule is None:
        return None
    if args.schedule in SCHEDULE_WORDS and not Path(args.schedule).exists():
        return args.schedule
    return load_steps(args.schedule)


def _info(args) -> int:
    if _is_network_file(args.spec):
        return _network_info(load_network(args.spec))
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
             ("activation", spec.activation)]
    if spec.pool is not None:
        p = spec.pool
        rows.append(("pool", f"{p.op} {p.kernel_size[0]}x{p.kernel_size[1]}, stride {list(p.stride)}, padding "
                             f"{list(p.padding)}, fused (convolution output {list(spec.conv_output_size)})"))
    rows.append(("dtype", spec.dtype))
    if spec.is_quantized:
        q = spec.quantization
        rows.append(("quantized", f"input scale {q.input_scale:g} zero point {q.input_zero_point}; output scale "
                                  f"{q.output_scale:g} zero point {q.output_zero_point}"))
        if spec.is_conv:
            scales = sorted(set(q.weight_scales))
            rows.append(("", f"weight scales {scales[0]:g}" + (f" .. {scales[-1]:g} per channel" if len(scales) > 1 else "")
                             + f"; outputs clamped to {list(spec.activation_range())}"))
    rows += [("parameters", f"{spec.param_count:,}"),
             ("MACs", f"{spec.macs:,}")]
    for key, value in rows:
        print(f"{key:<11} {value}")
    return 0


def _is_network_file(path: str) -> bool:
    """A YAML file that holds a network spec (`layers:`); unreadable files are left to load_spec to report."""
    try:
        return is_network(yaml.safe_load(Path(path).read_text()))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False


def _network_info(network) -> int:
    print(f"network {network.name}  ({network.source}): {len(network.layers)} layers, input "
          f"{network.input} {list(network.shape[network.input])}, output {network.output} "
          f"{list(network.shape[network.output])}")
    print(f"weights     {network.weights_file or 'none named, none beside the spec'}")
    print(f"{'layer':<16} {'op':<15} {'reads':<20} {'writes':<12} shape")
    for layer in network.layers:
        print(f"{layer.name:<16} {layer.op:<15} {', '.join(layer.inputs):<20} {layer.output:<12} "
              f"{list(network.shape[layer.output])}")
    print(f"(convgen show {network.source} prints it folded and fused, with its memory plan)")
    return 0


def _network_options(args, command: str, allowed: tuple[str, ...] = ()) -> None:
    """Refuse the layer-only options a network command was given."""
    layer_only = {"schedule": "--schedule", "verify_each_step": "--verify-each-step", "arch": "--arch",
                  "html": "--html", "asm": "--asm", "weights": "--weights"}
    given = [flag for key, flag in layer_only.items() if getattr(args, key, None) and key not in allowed]
    if given:
        raise ConvgenError(f"{command}: {given[0]}: for layer specs; a network takes each layer's default "
                           f"schedule for the CPU, and its weights from its .npz")


def _show_network(args) -> int:
    _network_options(args, "show")
    chosen = plan_network(load_network(args.spec), load_target(args.target))
    for line in chosen.describe():
        print(line)
    if args.verbose:
        print("\n== the composed program ==")
        print(ir.format_func(chosen.func), end="")
    print(f"\n{_describe_program(chosen.program)}")
    return 0


def _compile_network(args) -> int:
    _network_options(args, "compile")
    network = load_network(args.spec)
    if args.backend == "cuda":
        raise ConvgenError("compile: -t cuda: a network builds for llvm or c")
    if args.backend == "llvm" and (args.prefix or args.report or args.bake_weights):
        raise ConvgenError("compile: --prefix, --report and --bake-weights are for -t c "
                           "(the LLVM backend is called from Python)")
    if not args.bake_weights and (args.align or args.section):
        raise ConvgenError("compile: --align and --section go with --bake-weights")
    machine = load_target(args.target)
    chosen = plan_network(network, machine)
    if args.prefix:
        chosen = replace(chosen, program=replace(chosen.program, name=args.prefix + chosen.program.name))
    folder = args.output or Path("build") / chosen.program.name
    if folder.exists() and not folder.is_dir():
        raise ConvgenError(f"compile: -o {folder}: expected a folder to write into; it is a file")
    folder.mkdir(parents=True, exist_ok=True)
    baking = Baking(chosen.weights, args.align, args.section) if args.bake_weights else None
    emitted = emit(chosen, args.backend, baking)
    for line in chosen.describe():
        print(line, file=sys.stderr)
    for name, text in emitted.files.items():
        print(_write(folder / name, text))
    if args.report:
        macs = sum(step.plan.spec.macs for step in chosen.layers if step.plan is not None)
        inputs = {"x": random_network_input(network, np.random.default_rng(0))}
        for line in firmware.report(chosen.func, emitted, machine, folder / "report", inputs, macs).lines():
            print(line)
    return 0


def _check_network(args) -> int:
    _network_options(args, "check")
    network = load_network(args.spec)
    seed = _seed(args)
    failed = False
    for target in _backends(args.backend):
        if target not in CPU_BACKENDS:
            raise ConvgenError(f"check: -t {target}: a network builds for {' and '.join(CPU_BACKENDS)}")
        result = check_network(build_network(network, target), seed)
        failed |= not result.passed
        print(f"{network.name} [{target}]: {'pass' if result.passed else 'FAIL'}  max error "
              f"{result.max_abs_error:.3g} (allowed {result.max_allowed:.3g})"
              + (f", {result.unwritten} outputs never written" if result.unwritten else ""))
    print(f"seed {seed}")
    return 1 if failed else 0


def _show(args) -> int:
    if args.html is not None and args.html.is_dir():
        raise ConvgenError(f"show: --html {args.html}: expected a file to write; it is a folder")
    if _is_network_file(args.spec):
        return _show_network(args)
    spec = load_spec(args.spec)
    if args.arch and args.target != "host":
        raise ConvgenError("show: --target names a CPU and --arch a GPU; give one")
    chosen = plan(spec, load_gpu_target(args.arch) if args.arch else load_target(args.target), _schedule(args))
    seed = _seed(args)
    print(f"schedule: {chosen.describe_schedule()}")
    if chosen.recipe is not None:
        print(f"recipe: {chosen.recipe.describe()}")
    previous = None
    for index, (step, func) in enumerate(chosen.history):
        text = ir.format_func(func)
        if step is None:
            print("== lowered ==")
            print(text, end="")
        else:
            print(f"\n== step {index - 1}: {step.describe()} ==")
            print(_diff(previous, text))
        if args.verify_each_step:
            applied = [s for s, _ in chosen.history[1:index + 1]]
            result = check(build(spec, "cuda", schedule=applied or "naive", arch=args.arch) if args.arch
                           else build(spec, "llvm", schedule=applied or "naive"), seed)
            print(f"-- check: {'pass' if result.passed else 'FAIL'}, max error {result.max_abs_error:.3g}")
            if not result.passed:
                where = "lowering" if step is None else f"step {index - 1} ({step.describe()})"
                print(f"{where} changes the result (seed {seed})", file=sys.stderr)
                return 1
        previous = text
    if len(chosen.history) > 1:
        print("\n== after all steps ==")
        print(previous, end="")
    if args.verbose:
        for name, func in chosen.passes:
            text = ir.format_func(func)
            print(f"\n== pass: {name} ==")
            print(_diff(previous, text))
            previous = text
        print("\n== after the passes: what the backends render ==")
        print(previous, end="")
    print(f"\n{_describe_program(chosen.program)}")
    if args.html is not None:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        print(_write(args.html, schedule_page(chosen)))
    return 0


def _describe_program(program: ir.Program) -> str:
    """The split program in one line: its functions in the two steps, and its workspace."""
    def names(stages):
        return ", ".join(f.name for f in stages) or "none"
    return (f"program: prepare (once per set of weights): {names(program.prepare)}; run (per call): "
            f"{names(program.run)}; workspace {program.workspace_bytes} bytes "
            f"({program.prepared_bytes} prepared)")


def _diff(before: str, after: str) -> str:
    return "\n".join(nest_diff(before, after)) or "(no change)"


def _compile(args) -> int:
    if args.prefix and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.prefix):
        raise ConvgenError(f"compile: --prefix: expected letters, digits and '_' (a C identifier start); "
                           f"got {args.prefix!r}")
    if _is_network_file(args.spec):
        return _compile_network(args)
    spec = load_spec(args.spec)
    if args.backend == "llvm" and (args.prefix or args.report or args.bake_weights):
        raise ConvgenError("compile: --prefix, --report and --bake-weights are for -t c "
                           "(the LLVM backend is called from Python)")
    if args.backend != "llvm" and args.asm:
        raise ConvgenError(f"compile: --asm: only for -t llvm (build the {'.c' if args.backend == 'c' else '.cu'} "
                           f"with your compiler's -S)")
    if args.backend == "cuda" and (args.bake_weights or args.target != "host"):
        raise ConvgenError("compile: -t cuda takes the GPU as --arch (not --target), and its weights as "
                           "arguments (not --bake-weights)")
    if args.backend != "cuda" and args.arch:
        raise ConvgenError(f"compile: --arch names a GPU, for -t cuda; -t {args.backend} takes --target")
    folder = args.output or Path("build") / (args.prefix + spec.name)
    if folder.exists() and not folder.is_dir():
        raise ConvgenError(f"compile: -o {folder}: expected a folder to write into; it is a file")
    machine = load_gpu_target(args.arch or default_arch()) if args.backend == "cuda" else load_target(args.target)
    chosen = plan(spec, machine, _schedule(args), name=args.prefix + spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    emitted = emit(chosen, args.backend, _baking(args, spec, chosen.func))
    written = [_write(folder / name, text) for name, text in emitted.files.items()]
    if args.asm:
        written.append(_write(folder / f"{emitted.name}.s", llvm_assembly(emitted.source, machine)))
    print(f"schedule: {chosen.describe_schedule()}", file=sys.stderr)
    if chosen.recipe is not None:
        print(f"recipe: {chosen.recipe.describe()}", file=sys.stderr)
    for path in written:
        print(path)
    if args.report and args.backend == "cuda":
        _print_ptxas(nvcc_compile(folder / f"{emitted.name}.cu", machine.arch), machine.arch)
    elif args.report:
        inputs = random_inputs(spec, np.random.default_rng(0))   # for the instruction count, where QEMU runs
        for line in firmware.report(chosen.func, emitted, machine, folder / "report", inputs, spec.macs).lines():
            print(line)
    return 0


def _print_ptxas(kernels, arch: str) -> None:
    print(f"{'kernel':40s} {'registers':>9s} {'shared':>8s} {'stack':>6s} {'spills':>7s}   (ptxas, {arch})")
    for k in kernels:
        print(f"{k.name:40s} {k.registers:9d} {k.shared_bytes:7d}B {k.stack_bytes:5d}B {k.spill_bytes:6d}B")


def _baking(args, spec: Spec, func: ir.Func) -> Baking | None:
    """What --bake-weights asks for: the weights (from --weights or the spec), as the caller holds them
    (the driver runs the prepare step on them and bakes what it fills)."""
    if not args.bake_weights:
        if args.weights or args.align or args.section:
            raise ConvgenError("compile: --weights, --align and --section go with --bake-weights")
        return None
    if not spec.is_conv:
        raise ConvgenError(f"compile: --bake-weights: {spec.name} is a {spec.op}, which has no weights")
    if args.align and (args.align < 1 or args.align & (args.align - 1)):
        raise ConvgenError(f"compile: --align: expected a power of two; got {args.align}")
    if args.section and not re.fullmatch(r"[A-Za-z0-9_.$]+", args.section):
        raise ConvgenError(f"compile: --section: expected a section name (letters, digits, '.', '_', '$'); "
                           f"got {args.section!r}")
    given = _weights_file(args.weights) if args.weights else {}
    own = {"w": spec.weight_array(), "b": spec.bias_array() if spec.bias else None}
    takes = ir.signature(func)
    arrays = {}
    for name in (n for n in ("w", "b") if n in takes):
        argument = takes[name]
        shape, dtype = argument.shape, np.dtype(argument.dtype)
        array = given.get(name, own[name])
        where = f"{args.weights}: {name}" if name in given else f"{spec.source}: {'weights' if name == 'w' else 'bias'}"
        if array is None:
            raise ConvgenError(f"compile: --bake-weights: {spec.source} gives no values for {name}; "
                               f"pass them with --weights FILE.npz (arrays w and b)")
        if array.shape != shape:
            raise ConvgenError(f"{where}: expected shape {list(shape)}; got {list(array.shape)}")
        converted = array.astype(dtype)
        if dtype.kind == "i" and not np.array_equal(converted, array):
            raise ConvgenError(f"{where}: expected whole numbers that fit {dtype}")
        arrays[name] = converted
    return Baking(arrays, args.align, args.section)


def _weights_file(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as err:
        raise ConvgenError(f"{path}: cannot read it as a NumPy .npz archive: {err}") from None


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _backends(text: str) -> list[str]:
    targets = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in targets if t not in BACKENDS]
    if unknown or not targets:
        raise ConvgenError(f"--backend: expected a comma-separated list of {', '.join(BACKENDS)}; got {text!r}")
    return targets


def _seed(args) -> int:
    return args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**32)


# Layers past these sizes take long enough that a user should hear what is running.
_LARGE_MACS = 2 * 10**9
_LARGE_BYTES = 1 << 30


def _check(args) -> int:
    if _is_network_file(args.spec):
        return _check_network(args)
    spec = load_spec(args.spec)
    seed = _seed(args)
    backends = _backends(args.backend)
    say = _announce(spec, "check")
    failed = False
    for target in backends:
        say(f"[{target}] building")
        kernel = build(spec, target, schedule=_schedule(args))
        result = check(kernel, seed, progress=lambda stage: say(f"[{target}] {stage}"))
        failed |= not result.passed
        print(f"{spec.name} [{target}]: {'pass' if result.passed else 'FAIL'}  max error "
              f"{result.max_abs_error:.3g} (allowed {result.max_allowed:.3g})"
              + (f", {result.unwritten} outputs never written" if result.unwritten else "")
              + f"  schedule: {kernel.schedule_source}" + (f"  ({kernel.device})" if kernel.device else ""))
    print(f"seed {seed}")
    return 1 if failed else 0


def _array_bytes(spec: Spec) -> int:
    """Bytes of the layer's arrays as the caller holds them (x, w, b, y)."""
    shapes = [spec.input_shape, spec.output_shape] + ([spec.weight_shape, (spec.out_channels,)] if spec.is_conv else [])
    return sum(int(np.prod(s)) for s in shapes) * spec.array_dtypes["x"].itemsize


def _physical_memory() -> int:
    """Bytes of this machine's memory (0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


def _announce(spec: Spec, command: str):
    """For a large layer, say what is about to run and return a function that
    reports each stage with the time so far; for others, one that says nothing.
    A layer whose arrays (with the float64 reference's copies) exceed the
    machine's memory is refused here, before anything is allocated."""
    arrays = _array_bytes(spec)
    needed, memory = 3 * arrays, _physical_memory()
    if memory and needed > memory:
        raise ConvgenError(f"{command}: {spec.name}: its arrays need {needed / 2**30:,.1f} GiB (x, w, y and the "
                           f"float64 reference's copies); this machine has {memory / 2**30:,.1f} GiB")
    if spec.macs < _LARGE_MACS and arrays < _LARGE_BYTES:
        return lambda stage: None
    print(f"convgen {command}: {spec.name}: {spec.macs:,} MACs, {arrays / 2**20:,.0f} MiB of arrays "
          f"(the float64 reference needs about twice that); this takes a while", file=sys.stderr, flush=True)
    start = time.perf_counter()

    def say(stage: str) -> None:
        print(f"  {time.perf_counter() - start:7.1f} s  {stage}", file=sys.stderr, flush=True)
    return say


_COLUMNS = ("spec", "target", "output shape", "MACs", "schedule", "max error", "result")
_WIDTHS = (26, 6, 18, 13, 9, 10, 6)


def _row(values) -> str:
    return "  ".join(str(v).ljust(w) for v, w in zip(values, _WIDTHS)).rstrip()


def _build(args) -> int:
    if not args.dir.is_dir():
        raise ConvgenError(f"build: {args.dir}: expected a folder of specs; no such folder")
    paths = _spec_files(args.dir)
    seed = _seed(args)
    print(f"convgen build: {len(paths)} specs x {len(CPU_BACKENDS)} backends, host {host().cpu}, seed {seed}")
    print(_row(_COLUMNS))
    print(_row("-" * w for w in _WIDTHS))
    problems, notes, passed, total = [], [], 0, 0
    started, timings = time.perf_counter(), {"build": 0.0, "cached": 0, "tuned": 0, "default": 0}
    for path in paths:
        if _is_network_file(path):
            for target in CPU_BACKENDS:
                total += 1
                passed += _build_network(path, target, args.output, seed, problems, timings)
            continue
        try:
            spec = load_spec(path)
        except ConvgenError as err:
            problems.append(str(err))
            print(_row((path.stem, "-", "-", "-", "-", "-", "ERROR")), flush=True)
            total += 1
            continue
        for target in CPU_BACKENDS:
            total += 1
            passed += _build_one(spec, target, args.output / spec.name, seed, problems, notes, timings)
    print(f"\n{passed}/{total} passed; {timings['build']:.1f} s building "
          f"({timings['cached']} of {total} kernels from the cache), {time.perf_counter() - started:.1f} s in all")
    print(f"schedules: {timings['tuned']} layer kernels from tuned records, {timings['default']} the default "
          f"for want of one ({default_records_path()})")
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 0 if passed == total else 1


def _build_one(spec: Spec, target: str, folder: Path, seed: int, problems: list[str], notes: list[str],
               timings: dict) -> bool:
    shape = "x".join(str(s) for s in spec.output_shape)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvgenWarning)
            started = time.perf_counter()
            kernel = build(spec, target, workdir=folder)
            timings["build"] += time.perf_counter() - started
            timings["cached"] += kernel.from_cache
            timings["tuned"] += kernel.schedule_source == "tuned"
            timings["default"] += kernel.schedule_source == "default"
        notes += [str(w.message) for w in caught if issubclass(w.category, ConvgenWarning)]
        result = check(kernel, seed)
    except ConvgenError as err:
        problems.append(f"{spec.source} [{target}]: {err}")
        print(_row((spec.name, target, shape, f"{spec.macs:,}", "-", "-", "ERROR")), flush=True)
        return False
    verdict = "pass" if result.passed else "FAIL"
    if not result.passed:
        problems.append(f"{spec.source} [{target}]: max error {result.max_abs_error:.3g} exceeds "
                        f"{result.max_allowed:.3g}; {result.unwritten} outputs never written")
    print(_row((spec.name, target, shape, f"{spec.macs:,}", kernel.schedule_source,
                f"{result.max_abs_error:.2g}", verdict)), flush=True)
    return result.passed


def _build_network(path: Path, target: str, output: Path, seed: int, problems: list[str], timings: dict) -> bool:
    """Build and check one network spec for one backend, printing its row; False on failure."""
    try:
        network = load_network(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvgenWarning)   # a layer without a recipe: `convgen show` says so
            started = time.perf_counter()
            kernel = build_network(network, target, workdir=output / network.name)
            timings["build"] += time.perf_counter() - started
        result = check_network(kernel, seed)
    except ConvgenError as err:
        problems.append(f"{path} [{target}]: {err}")
        print(_row((path.stem, target, "-", "-", "-", "-", "ERROR")), flush=True)
        return False
    if not result.passed:
        problems.append(f"{path} [{target}]: max error {result.max_abs_error:.3g} exceeds "
                        f"{result.max_allowed:.3g}; {result.unwritten} outputs never written")
    macs = sum(step.plan.spec.macs for step in kernel.plan.layers if step.plan is not None)
    shape = "x".join(str(s) for s in network.shape[network.output])
    print(_row((network.name, target, shape, f"{macs:,}", "network", f"{result.max_abs_error:.2g}",
                "pass" if result.passed else "FAIL")), flush=True)
    return result.passed


def _import(args) -> int:
    importers = {".onnx": import_onnx, ".tflite": import_tflite}
    importer = importers.get(args.model.suffix.lower())
    if importer is None:
        raise ConvgenError(f"import: {args.model}: expected an ONNX (.onnx) or TFLite (.tflite) model")
    spec, weights = importer(args.model)
    folder = args.output or Path("build") / args.model.stem
    if folder.exists() and not folder.is_dir():
        raise ConvgenError(f"import: -o {folder}: expected a folder to write into; it is a file")
    for path in write_network(spec, weights, folder):
        print(path)
    print(f"{len(spec['layers'])} layers; `convgen check {folder / (spec['name'] + '.yaml')}` builds and checks it",
          file=sys.stderr)
    return 0


def _cache(args) -> int:
    if kernel_cache.location() is None:
        print("the kernel cache is off (CONVGEN_CACHE is set to turn it off)")
        return 0
    if args.action == "clear":
        folder, removed = kernel_cache.clear()
        print(f"removed {removed} kernel{'s' * (removed != 1)} from {folder}")
        return 0
    folder, entries, size = kernel_cache.info()
    print(f"{folder}: {entries} kernel{'s' * (entries != 1)}, {size / 1e6:.1f} MB")
    return 0


def _bench(args) -> int:
    peers = [p.strip() for p in args.vs.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ConvgenError(f"bench: --vs: expected names among {', '.join(PEERS)}; got {unknown[0]!r}")
    paths = [args.spec] if args.spec.is_file() else _spec_files(args.spec)
    networks = [p for p in paths if _is_network_file(p)]
    if networks and args.spec.is_file():
        raise ConvgenError(f"bench: {args.spec}: a network spec; bench times layers (convgen check and the "
                           f"Python API build networks)")
    for path in networks:
        print(f"note: {path}: a network spec, left aside (bench times layers)", file=sys.stderr)
    paths = [p for p in paths if p not in networks]
    if args.backend == "cuda":
        return _bench_cuda(paths, args)
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise ConvgenError(f"bench: --plot {args.plot}: expected a .png file name")
    peak = measure_peak(args.threads).gflops
    report, measured = [], []
    for path in paths:
        spec = load_spec(path)
        entries = bench(spec, args.threads, peers, rounds=args.rounds, winograd=(4, 2) if args.winograd else ())
        measured.append((spec, entries))
        report.append({"spec": spec.name, "macs": spec.macs, "executed_macs": spec.executed_macs,
                       "threads": args.threads, "peak_gflops": peak,
                       "results": [e.as_dict(spec) for e in entries]})
        if not args.json:
            _print_bench(spec, entries, peak, args.threads, args.verbose)
    if args.json:
        print(json.dumps({"host": host().cpu, "report": report}, indent=2))
    if args.plot is not None:
        title = f"{host().cpu}, {args.threads} thread(s): {args.spec.name}"
        written = plot_roofline(measured, peak, measure_bandwidth(), args.plot, title)
        print(f"roofline: {written}", file=sys.stderr)
    return 0


def _bench_cuda(paths: list[Path], args) -> int:
    if args.plot is not None or args.winograd:
        raise ConvgenError("bench: --plot and --winograd are for the CPU (-t llvm)")
    report = []
    for path in paths:
        spec = load_spec(path)
        entries = bench_cuda(spec, rounds=args.rounds)
        report.append({"spec": spec.name, "macs": spec.macs, "results": [e.as_dict(spec) for e in entries]})
        if args.json:
            continue
        mine, peer = entries[0], next((e for e in entries[1:] if e.seconds is not None), None)
        print(f"\n{spec.name}: {2 * spec.macs / 1e6:.1f} MFLOP, scheduled for {default_arch()}")
        for entry in entries:
            if entry.seconds is None:
                print(f"  {entry.name:<16} {entry.note}")
                continue
            line = f"  {entry.name:<16} {_duration(entry.seconds)} {entry.gflops(spec):9.1f} GFLOP/s"
            if entry is mine and peer is not None:
                line += f"   {peer.seconds / entry.seconds:.2f}x {peer.name}"
            print(line + (f"  ({entry.note})" if entry.note else ""))
            if args.verbose and entry.schedule:
                print(f"  {'':<16} {entry.schedule}")
    if args.json:
        print(json.dumps({"report": report}, indent=2))
    return 0


def _print_bench(spec: Spec, entries, peak: float, threads: int, verbose: bool = False) -> None:
    timed = [e for e in entries if e.seconds is not None]
    peers = [e for e in timed if not e.name.startswith("convgen")]
    best_peer = min(peers, key=lambda e: e.seconds) if peers else None
    print(f"\n{spec.name}: {2 * spec.macs / 1e6:.1f} MFLOP, {threads} thread(s), peak {peak:.0f} GFLOP/s")
    for entry in entries:
        if entry.seconds is None:
            print(f"  {entry.name:<24} {entry.note}")
            continue
        gflops = entry.gflops(spec)
        # Winograd multiplies less: its figure is the direct convolution's FLOPs over its time
        # % of peak counts the multiply-adds executed: taps in zero padding are skipped
        share = "direct-equiv." if "winograd" in entry.name else f"{100 * entry.share_of_peak(spec, peak):5.1f}% of peak"
        line = f"  {entry.name:<24} {_duration(entry.seconds)} {gflops:8.1f} GFLOP/s {share}"
        if entry.error is not None:
            line += f"  rel. error {entry.error:.1e}"
        if entry.name.startswith("convgen") and best_peer is not None:
            line += f"   {best_peer.seconds / entry.seconds:.2f}x the fastest peer ({best_peer.name})"
        print(line)
        if verbose and entry.schedule:
            print(f"  {'':<24} {entry.schedule}")


def _duration(seconds: float) -> str:
    """Milliseconds, or microseconds where a call is too short for three decimals of ms."""
    return f"{seconds * 1e3:9.3f} ms" if seconds >= 1e-4 else f"{seconds * 1e6:9.2f} us"


def _peak(args) -> int:
    for threads in range(1, (args.threads or host().cores) + 1):
        result = measure_peak(threads)
        print(f"{threads} thread(s): {result.gflops:.1f} GFLOP/s ({result.lanes}-lane FMA, host {host().cpu})")
    return 0


def _spec_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConvgenError(f"{folder}: expected a spec file or a folder of specs; no such file or folder")
    # specs/targets/ holds hardware descriptions, not layers
    paths = [p for p in sorted(folder.rglob("*.yaml")) if "targets" not in p.relative_to(folder).parts[:-1]]
    if not paths:
        raise ConvgenError(f"{folder}: no *.yaml specs found")
    return paths


def _time_value(text: str) -> float:
    """An argparse type: seconds, from 60, 60s, 1.5m or 1h."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(s|m|min|h)?\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a time such as 60s, 90 or 10m; got {text!r}")
    return float(match.group(1)) * {None: 1, "s": 1, "m": 60, "min": 60, "h": 3600}[match.group(2)]


def _tune(args) -> int:
    from .tune.report import layer_report, plot_curves
    from .tune.tuner import tune
    if args.target != "host":
        raise ConvgenError(f"tune: --target {args.target}: only host can be tuned here (a kernel is timed on the "
                           f"machine that runs it; tune on that machine, or on a cluster of them with --cluster)")
    specs = _tunable_layers(args.spec)
    database = args.db or default_records_path()
    threads = args.threads or host().cores
    print(f"convgen tune: {len(specs)} layer{'s' * (len(specs) != 1)}, {args.budget:g} s each, {args.strategy} "
          f"search, seed {args.seed}, {threads} thread{'s' * (threads != 1)}, records in {database}", file=sys.stderr)
    results = []
    try:
        for spec in specs:
            bar = _TuneBar(spec.name, args.budget)
            result = tune(spec, args.budget, threads, database, args.seed, args.strategy, args.cluster,
                          args.timeout, args.max_candidates, bar.update, min_seconds=args.min_time)
            bar.done(result)
            results.append(result)
            if args.report:
                print(layer_report(result))
    except KeyboardInterrupt:
        print(f"\nconvgen tune: interrupted; every completed measurement is in {database}: run the same "
              f"command to continue", file=sys.stderr)
        return 130
    if args.report:
        try:
            print(f"search curves: {plot_curves(results, args.plot)}")
        except ImportError:
            print("search curves: not plotted (matplotlib is not installed: pip install 'convgen[plot]')",
                  file=sys.stderr)
    return 0 if all(r.winner is not None for r in results) else 1


def _tunable_layers(path: Path) -> list[Spec]:
    """The layers a spec, a network spec or a folder of them holds, each distinct layer once."""
    from .driver import load_any
    from .fold import fuse
    from .network import Network
    from .tune.records import spec_fingerprint
    found = {}
    for file in _spec_files(path) if path.is_dir() else [path]:
        loaded = load_any(file)
        if isinstance(loaded, Network):
            fused, _, _ = fuse(loaded, loaded.load_weights())
            layers = [layer.spec for layer in fused.layers if layer.spec is not None]
        else:
            layers = [loaded]
        for spec in layers:
            found.setdefault(spec_fingerprint(spec), spec)
    return list(found.values())


class _TuneBar:
    """One line on stderr: candidates measured, best GFLOP/s so far against the default, time left."""

    def __init__(self, name: str, budget: float):
        self.name, self.budget = name, budget

    def update(self, p) -> None:
        width = 24
        filled = min(width, int(width * (1 - p.seconds_left / self.budget))) if self.budget else width
        best = f"{p.best_gflops:.1f}" if p.best_gflops else "-"
        default = f" (default {p.default_gflops:.1f})" if p.default_gflops else ""
        resumed = f", {p.resumed} resumed" if p.resumed else ""
        print(f"\r{self.name[:24]:<24} [{'#' * filled}{'.' * (width - filled)}] {p.measured} measured{resumed}, "
              f"best {best} GFLOP/s{default}, {p.seconds_left:.0f} s left ", end="", file=sys.stderr, flush=True)

    def done(self, result) -> None:
        tuned = f"{result.tuned_gflops:.1f}" if result.tuned_gflops else "-"
        default = f"{result.default_gflops:.1f}" if result.default_gflops else "-"
        print(f"\r{self.name[:24]:<24} {result.measured} measured: tuned {tuned} GFLOP/s, default {default} "
              f"(confirmed in turn)" + " " * 20, file=sys.stderr, flush=True)


def _records(args) -> int:
    from .tune.records import Records
    from .tune.report import records_table
    database = args.db or default_records_path()
    if args.action == "where":
        print(database)
        return 0
    if args.action == "import":
        if args.file is None:
            raise ConvgenError("records import: expected a file of JSON lines (from `convgen records export`), "
                               "or - for stdin")
        text = sys.stdin.read() if str(args.file) == "-" else _read_text(args.file)
        with Records(database) as records:
            try:
                added, skipped = records.import_lines(text.splitlines())
            except ConvgenError as err:
                raise ConvgenError(f"{args.file}: {err}") from None
        print(f"imported {added} records into {database} ({skipped} already there)")
        return 0
    with Records(database, create=False) as records:
        if not records.exists:
            raise ConvgenError(f"records {args.action}: no records database at {database} (`convgen tune` "
                               f"makes one)")
        if args.action == "export":
            for record in records.all():
                print(record.as_json())
        else:
            print(records_table(records.all(), records.winners()))
    return 0


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConvgenError(f"{path}: expected a readable text file; {err}") from None


if __name__ == "__main__":
    sys.exit(main())
