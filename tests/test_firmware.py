"""Firmware C: it builds cleanly for Cortex-M and host compilers, runs on the
emulated boards with results matching the reference, and reports its cost.

The cross compiler and QEMU come from Debian's gcc-arm-none-eabi,
libnewlib-arm-none-eabi and qemu-system-arm, which .ci/run installs; on a
machine without them these tests skip and say which tool is missing.
"""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from convgen import firmware, reference
from convgen.check import compare_runs, random_inputs, tolerance, weight_transform
from convgen.codegen.c import emit_c
from convgen.driver import emit, plan
from convgen.lower import lower
from convgen.spec import Spec, load_spec
from convgen.target import load_target

from conftest import spec_paths

needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                               reason="arm-none-eabi-gcc not installed (Debian: gcc-arm-none-eabi; .ci/run installs it)")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                                reason="qemu-system-arm or arm-none-eabi-gcc not installed (.ci/run installs both)")

HOST_COMPILERS = ["gcc", "clang"]


def _compilers():
    """(compiler command, the target whose default schedules it builds)."""
    for name in ("cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m55"):
        target = load_target(name)
        yield pytest.param([*target.cc, *target.cflags], name, id=name, marks=needs_arm)
    # clang's warnings come from its front end, whatever the optimization level: -O0 checks them in a
    # fraction of the time; gcc warns from its optimizers too (uninitialized values, bounds), so -O2
    for cc, level in zip(HOST_COMPILERS, ("-O2", "-O0")):
        yield pytest.param([cc, level], "host", id=cc, marks=pytest.mark.skipif(
            shutil.which(cc) is None, reason=f"{cc} not installed (Debian: {cc}; .ci/run installs it)"))


@pytest.mark.parametrize("compiler, target", list(_compilers()))
def test_every_spec_builds_warning_free_for_microcontrollers_and_hosts(compiler, target, tmp_path):
    """Each spec as `convgen compile -t c --target` writes it: with the target's default schedule."""
    failures = []
    for path in spec_paths():
        spec = load_spec(path)
        files = emit(plan(spec, load_target(target)), "c")
        (tmp_path / f"{files.name}.h").write_text(files.header)
        (tmp_path / f"{files.name}.c").write_text(files.source)
        result = subprocess.run([*compiler, *firmware.STRICT_FLAGS, "-c", f"{files.name}.c", "-o", "k.o"],
                                cwd=tmp_path, capture_output=True, text=True)
        if result.returncode != 0:
            failures.append(f"{path.name}: {result.stderr.strip()[:300]}")
    assert not failures, "\n".join(failures)


# Small layers that fit the boards' RAM with their inputs baked in: every kind
# of layer, with padding, stride, dilation, groups and both layouts.
SHAPES = {
    "conv3x3_pad": dict(op="conv2d", in_channels=3, out_channels=4, input_size=[9, 8], kernel_size=3, padding=1),
    "conv3x3_s2": dict(op="conv2d", in_channels=4, out_channels=6, input_size=[11, 10], kernel_size=3, stride=2,
                       padding=1, activation="relu"),
    "conv5x5_same_nhwc": dict(op="conv2d", in_channels=2, out_channels=3, input_size=[8, 8], kernel_size=5,
                              padding="same", layout="NHWC"),
    "conv_dilated": dict(op="conv2d", in_channels=3, out_channels=2, input_size=[10, 10], kernel_size=3,
                         dilation=2, padding=2, bias=False),
    "depthwise": dict(op="conv2d", in_channels=8, out_channels=8, groups=8, input_size=[10, 9], kernel_size=3,
                      padding=1, activation="relu6"),
    "depthwise_s2_nhwc": dict(op="conv2d", in_channels=6, out_channels=6, groups=6, input_size=[12, 12],
                              kernel_size=3, stride=2, padding=[0, 1, 0, 1], layout="NHWC"),
    "pointwise": dict(op="conv2d", in_channels=16, out_channels=8, input_size=[7, 7], kernel_size=1),
    # int8 in NHWC with input channels in fours: the packed dot tile on the DSP and Helium cores
    "pointwise_nhwc": dict(op="conv2d", in_channels=24, out_channels=12, input_size=[5, 3], kernel_size=1,
                           layout="NHWC", activation="relu"),
    "conv3x3_nhwc": dict(op="conv2d", in_channels=12, out_channels=6, input_size=[6, 5], kernel_size=3,
                         padding=1, layout="NHWC"),
    # one input channel (the dot tile does not take it): output channels as Helium lanes on the M55
    "conv1ch_s2_nhwc": dict(op="conv2d", in_channels=1, out_channels=8, input_size=[9, 9], kernel_size=3,
                            stride=2, padding=1, layout="NHWC", activation="relu6"),
    # and a depthwise one, channels in fours: four Helium lanes on the M55
    "depthwise_nhwc": dict(op="conv2d", in_channels=8, out_channels=8, groups=8, input_size=[7, 6], kernel_size=3,
                           padding=1, layout="NHWC", activation="relu6"),
    "grouped": dict(op="conv2d", in_channels=8, out_channels=8, groups=2, input_size=[6, 6], kernel_size=3,
                    padding=1),
    "reflect_pad": dict(op="conv2d", in_channels=2, out_channels=2, input_size=[6, 7], kernel_size=3, padding=1,
                        padding_mode="reflect"),
    "maxpool_pad": dict(op="maxpool2d", in_channels=4, input_size=[9, 9], kernel_size=3, stride=2, padding=1),
    "avgpool": dict(op="avgpool2d", in_channels=3, input_size=[8, 8], kernel_size=2),
    "conv_relu_maxpool": dict(op="conv2d", in_channels=3, out_channels=4, input_size=[8, 8], kernel_size=3,
                              padding=1, activation="relu", pool=dict(op="maxpool2d", kernel_size=2)),
}


@needs_qemu
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_float_kernels_match_the_reference_on_cortex_m4(name, tmp_path):
    _check_on_board(name, "cortex-m4", tmp_path)


@needs_qemu
@pytest.mark.parametrize("target", ["cortex-m7", "cortex-m55"])
@pytest.mark.parametrize("name", ["conv3x3_s2", "depthwise", "maxpool_pad"])
def test_float_kernels_match_the_reference_on_other_cores(name, target, tmp_path):
    _check_on_board(name, target, tmp_path)


def _quantized(shape: dict, per_channel: bool) -> dict:
    """The shape as an int8 layer (TFLite's scheme), its output scale set from the
    accumulator's spread so that outputs span int8 with some saturating."""
    data = dict(shape, dtype="int8")
    if data["op"] != "conv2d":
        data["quantization"] = {"input": {"scale": 0.05, "zero_point": -7}}
        return data
    kernel = data["kernel_size"] if isinstance(data["kernel_size"], list) else [data["kernel_size"]] * 2
    taps = kernel[0] * kernel[1] * data["in_channels"] // data.get("groups", 1)
    scales = [0.01 + 0.002 * o for o in range(data["out_channels"])] if per_channel else 0.01
    data["quantization"] = {"input": {"scale": 0.02, "zero_point": 5},
                            "output": {"scale": 0.02 * 0.01 * 75 * 75 * taps ** 0.5 / 60, "zero_point": -10},
                            "weight_scales": scales}
    return data


# Every kind of int8 layer, with padding, stride, groups, both layouts and per-channel scales.
INT8_SHAPES = {f"{name}_int8": _quantized(SHAPES[name], per_channel=i % 2 == 0)
               for i, name in enumerate(sorted(SHAPES)) if "pool" not in SHAPES[name]}


@needs_qemu
@pytest.mark.parametrize("name", sorted(INT8_SHAPES))
def test_int8_kernels_match_the_reference_bit_for_bit_on_cortex_m4(name, tmp_path):
    _check_on_board(name, "cortex-m4", tmp_path, INT8_SHAPES[name])


@needs_qemu
@pytest.mark.parametrize("path", [p for p in spec_paths() if load_spec(p).is_quantized], ids=lambda p: p.stem)
def test_int8_spec_files_match_the_reference_bit_for_bit_on_cortex_m4(path, tmp_path):
    _check_on_board(path.stem, "cortex-m4", tmp_path, load_spec(path))


@needs_qemu
@pytest.mark.parametrize("name, target", [
    *((name, target) for name in ("conv3x3_s2_int8", "depthwise_int8", "maxpool_pad_int8")
      for target in ("cortex-m7", "cortex-m55")),
    # the packed recipes: the M7 runs the M4's DSP code; Helium's are the M55's own
    *((name, "cortex-m55") for name in ("pointwise_nhwc_int8", "conv3x3_nhwc_int8", "depthwise_nhwc_int8",
                                        "conv1ch_s2_nhwc_int8")),
])
def test_int8_kernels_match_the_reference_bit_for_bit_on_other_cores(name, target, tmp_path):
    _check_on_board(name, target, tmp_path, INT8_SHAPES[name])


@needs_arm
@pytest.mark.parametrize("layer, expected", [
    ("ds_cnn_pw_int8", {"cortex-m4": "smlad", "cortex-m7": "smlad", "cortex-m55": "vmladava", "cortex-m0plus": None}),
    ("ds_cnn_dw_int8", {"cortex-m55": "vmul"}),
    ("person_detect_conv1_int8", {"cortex-m55": "vmla"}),
])
def test_int8_kernels_use_the_cores_own_instructions(layer, expected, tmp_path):
    """The default kernels: SMLAD on the DSP cores, Helium's VMLADAV (dot
    products), VMUL (depthwise lanes) and VMLA (lanes by a scalar) on the
    M55, and none of these in the portable C an M0+ gets."""
    spec = load_spec(Path(__file__).parent.parent / "specs" / "layers" / f"{layer}.yaml")
    for name, instruction in expected.items():
        target = load_target(name)
        files = emit(plan(spec, target), "c")
        folder = tmp_path / name
        folder.mkdir()
        (folder / f"{files.name}.h").write_text(files.header)
        (folder / f"{files.name}.c").write_text(files.source)
        subprocess.run([*target.cc, *target.cflags, *firmware.STRICT_FLAGS, "-S", f"{files.name}.c", "-o", "k.s"],
                       cwd=folder, check=True)
        mnemonics = {line.split()[0].split(".")[0] for line in (folder / "k.s").read_text().splitlines()
                     if line.startswith("\t") and not line.startswith("\t.")}
        if instruction is None:
            assert not {"smlad", "vmladava", "vmul"} & mnemonics and "muls" in mnemonics, f"{name}: {sorted(mnemonics)}"
        else:
            assert instruction in mnemonics, f"{name}: no {instruction} in {sorted(mnemonics)}"


@needs_qemu
def test_instruction_counts_are_calibrated_by_a_loop_of_known_length(tmp_path):
    """main times a loop of 100000 iterations of two instructions (subs, bne)
    as it times the kernel: SysTick at the board's clock under -icount shift=0
    must count 200000 instructions, give or take a tick and the call; and the
    kernel's two calls (two output fills) count alike."""
    spec = load_spec(dict(INT8_SHAPES["pointwise_nhwc_int8"], name="counted"))
    for name in ("cortex-m4", "cortex-m55"):
        target = load_target(name)
        chosen = plan(spec, target)
        inputs = random_inputs(spec, np.random.default_rng(3))
        run = firmware.run_on_qemu(chosen.func, emit(chosen, "c"), target, inputs, tmp_path / name, calibrate=100000)
        tick = 10**9 / target.qemu_clock_hz
        assert abs(run.calibration - 200000) <= tick + 16, f"{name}: {run.calibration}"
        first, second = run.instructions
        assert abs(first - second) <= tick and spec.macs / 4 < first < 20 * spec.macs, f"{name}: {run.instructions}"


@needs_qemu
@pytest.mark.parametrize("name, shape", [("conv3x3_s2", SHAPES["conv3x3_s2"]),
                                         ("depthwise_int8", INT8_SHAPES["depthwise_int8"])])
def test_kernels_with_baked_weights_match_the_reference_on_cortex_m4(name, shape, tmp_path):
    _check_on_board(name, "cortex-m4", tmp_path, shape, bake_weights=True)
    source = (tmp_path / f"{name}.c").read_text()
    assert "static const" in source and f"{name}_w[" in source
    assert f"{name}(x_data, y_data)" in (tmp_path / "main.c").read_text()


@needs_qemu
@pytest.mark.parametrize("bake_weights", [False, True])
def test_winograd_kernels_match_the_reference_on_cortex_m4(bake_weights, tmp_path):
    """The Winograd rewrite's C, its weights transformed by the caller's side (or baked transformed)."""
    shape = dict(SHAPES["conv3x3_pad"], activation="relu", schedule=[{"winograd": [2, {"rows": 5}]}])
    _check_on_board("winograd", "cortex-m4", tmp_path, shape, bake_weights=bake_weights)
    assert "winograd F(2x2,3x3)" in (tmp_path / "winograd.h").read_text()


@needs_qemu
def test_a_relative_folder_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    """The link step runs inside the folder; a relative folder once sent the ELF to folder/folder."""
    monkeypatch.chdir(tmp_path)
    _check_on_board("depthwise", "cortex-m4", Path("relative") / "build")
    assert (tmp_path / "relative" / "build" / "program.elf").is_file()


def _check_on_board(name, target, folder, spec=None, bake_weights=False):
    spec = spec if isinstance(spec, Spec) else load_spec(dict(spec or SHAPES[name], name=name))
    inputs = random_inputs(spec, np.random.default_rng())
    runs = firmware.run_layer(spec, load_target(target), inputs, folder, bake_weights=bake_weights)
    expected = reference(spec, inputs["x"], inputs.get("w"), inputs.get("b"))
    transform = weight_transform(plan(spec, load_target(target)).func)
    allowed = None if spec.is_quantized else tolerance(spec, inputs, transform)
    result = compare_runs(spec, runs, expected, inputs, allowed)
    assert result.passed, f"{name} on {target}: {result}"


@needs_arm
def test_report_gives_code_size_stack_and_caller_memory(tmp_path):
    spec = load_spec(dict(SHAPES["conv3x3_pad"], name="reported"))
    func = lower(spec)
    result = firmware.report(func, emit_c(func), load_target("cortex-m4"), tmp_path)
    assert result.text > 0 and result.stack > 0 and result.stack_kind == "static"
    # x [1,3,9,8], w [4,3,3,3], b [4], y [1,4,9,8], float32
    assert result.caller_bytes == 4 * (3 * 9 * 8 + 4 * 3 * 3 * 3 + 4 + 4 * 9 * 8)


@needs_qemu
def test_the_int8_ds_cnn_runs_bit_exact_on_cortex_m4_as_one_c_function(tmp_path):
    """specs/networks/ds_cnn_int8.yaml: the whole network one C function, its
    weights const, its arena the workspace, on QEMU's Cortex-M4 board; the
    output filled with -128 and then 127 before the two runs."""
    from convgen.network import load_network
    from convgen.reference import network_reference
    network = load_network(Path(__file__).parent.parent / "specs" / "networks" / "ds_cnn_int8.yaml")
    x = np.random.default_rng(5).integers(-128, 128, network.shape[network.input], dtype=np.int8)
    runs, cost = firmware.run_network(network, load_target("cortex-m4"), x, tmp_path)
    expected = network_reference(network, x, network.load_weights())[network.output]
    assert len(runs) == 2
    for run in runs:
        np.testing.assert_array_equal(run, expected)
    assert cost.workspace_bytes <= 2 * 64 * 25 * 5   # the arena: two of its 64 x 25 x 5 int8 tensors at most
