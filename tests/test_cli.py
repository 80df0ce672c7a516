"""The convgen command, run as a user runs it."""

import subprocess
import sys

import re
import shutil
import numpy as np
import pytest

from conftest import SPECS


def convgen(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "convgen.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def test_info():
    result = convgen("info", SPECS / "layers" / "resnet50_conv1.yaml")
    assert result.returncode == 0
    assert "[1, 64, 112, 112] NCHW" in result.stdout
    assert "9,472" in result.stdout            # 64*3*7*7 + 64
    assert "118,013,952" in result.stdout      # 64*112*112*3*49


def test_show_prints_the_loop_nest():
    result = convgen("show", SPECS / "examples" / "ramp_vertical_edge.yaml")
    assert result.returncode == 0
    assert "for oh in 0..3:" in result.stdout and "acc[0] = acc[0] + x[0, 0, oh + kh, ow + kw]" in result.stdout


def test_show_prints_the_program_split_into_its_two_steps():
    """A default dense layer packs its weights in a prepare stage: show says so, and the workspace."""
    result = convgen("show", SPECS / "layers" / "resnet_3x3_64.yaml", "--target", "host")
    assert result.returncode == 0, result.stderr
    assert "stage pack_w:" in result.stdout and "workspace w_packed: float32[O=64, I=64, H=3, W=3] OIHW" in result.stdout
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("program: prepare (once per set of weights): resnet_3x3_64_pack_w; "
                           "run (per call): resnet_3x3_64_compute; workspace 147456 bytes (147456 prepared)"), line


def test_compile_writes_files(tmp_path):
    spec = SPECS / "layers" / "maxpool_2x2.yaml"
    result = convgen("compile", spec, "-t", "llvm", "--asm", "-o", tmp_path / "ll")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ll" / "maxpool_2x2.ll").read_text().startswith("; ModuleID")
    assert "ret" in (tmp_path / "ll" / "maxpool_2x2.s").read_text()
    result = convgen("compile", spec, "-t", "c", "-o", tmp_path / "c")
    assert result.returncode == 0, result.stderr
    assert {p.name for p in (tmp_path / "c").iterdir()} == {"maxpool_2x2.c", "maxpool_2x2.h"}


def test_compile_a_fused_pool_for_each_backend(tmp_path):
    """A conv with a fused pool has a workspace; naming the kernel (plan's name=) kept it."""
    spec = SPECS / "layers" / "vgg_3x3_64_relu_maxpool.yaml"
    for backend, suffix in (("llvm", ".ll"), ("c", ".c"), ("cuda", ".cu")):
        result = convgen("compile", spec, "-t", backend, "-o", tmp_path / backend)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / backend / f"vgg_3x3_64_relu_maxpool{suffix}").exists()


def test_compile_cuda_writes_the_kernel_and_its_header(tmp_path):
    result = convgen("compile", SPECS / "layers" / "resnet_3x3_64.yaml", "-t", "cuda", "--arch", "sm_90",
                     "--prefix", "net_", "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"net_resnet_3x3_64.cu", "net_resnet_3x3_64.h"}
    assert "on sm_90 (CUDA GPU)" in result.stderr and "recipe: shared tile" in result.stderr
    header = (tmp_path / "net_resnet_3x3_64.h").read_text()
    assert ("cudaError_t net_resnet_3x3_64(const float *x, const float *w, const float *b, float *y, "
            "cudaStream_t stream);") in header
    assert "net_resnet_3x3_64_kernel: (196, 1, 1) x (4, 4, 16), 9792 bytes" in header   # 132 SMs: 1 column a thread


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed here (the CUDA toolkit)")
def test_compile_cuda_report_prints_what_ptxas_says(tmp_path):
    result = convgen("compile", SPECS / "layers" / "vgg_3x3_64_relu_maxpool.yaml", "-t", "cuda", "--report",
                     "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[3:]}
    assert set(rows) == {"vgg_3x3_64_relu_maxpool_conv_kernel", "vgg_3x3_64_relu_maxpool_pool_kernel"}
    assert all(int(r[0]) > 0 and r[3] == "0B" for r in rows.values())   # registers used, no spills


def test_show_for_a_gpu_gives_its_schedule_and_the_cuda(tmp_path):
    result = convgen("show", SPECS / "layers" / "mobilenetv2_dw_144.yaml", "--arch", "sm_90",
                     "--html", tmp_path / "page.html")
    assert result.returncode == 0, result.stderr
    assert "recipe: depthwise column tile" in result.stdout and "gpu_thread.x for" in result.stdout
    page = (tmp_path / "page.html").read_text()
    assert "mobilenetv2_dw_144.cu" in page and "__global__" in page


def test_check_cuda_says_where_it_ran():
    result = convgen("check", SPECS / "layers" / "maxpool_2x2_int8.yaml", "-t", "cuda", "--seed", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[cuda]: pass  max error 0" in result.stdout
    assert "(emulated on the host CPU" in result.stdout or "(on the GPU (sm_" in result.stdout


def test_compile_defaults_to_build_folder(tmp_path):
    result = convgen("compile", SPECS / "examples" / "grid3_diagonal.yaml", "-t", "c", cwd=tmp_path)
    assert result.returncode == 0
    assert (tmp_path / "build" / "grid3_diagonal" / "grid3_diagonal.c").exists()


def test_check_passes_on_both_backends():
    result = convgen("check", SPECS / "examples" / "photo_sharpen_nhwc.yaml", "--seed", "7")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[llvm]: pass" in result.stdout and "[c]: pass" in result.stdout


def test_build_reports_a_table_and_bad_specs(tmp_path):
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "good.yaml").write_text((SPECS / "examples" / "step_sobel_x.yaml").read_text())
    (folder / "bad.yaml").write_text("name: bad\nop: conv2d\nin_channels: 1\nout_channels: 1\n"
                                     "input_size: [5, 5]\nkernel_size: 3\npadding: sme\n")
    result = convgen("build", folder, "-o", tmp_path / "out")
    assert result.returncode == 1
    assert "step_sobel_x                llvm    1x1x3x3" in result.stdout
    assert "2/3 passed" in result.stdout
    assert "bad.yaml: padding: expected" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "out" / "step_sobel_x" / "step_sobel_x.so").exists()


@pytest.mark.parametrize("args, message", [
    (("check", SPECS / "examples" / "grid3_diagonal.yaml", "-t", "opencl"), "--backend: expected"),
    (("compile", SPECS / "examples" / "grid3_diagonal.yaml", "-t", "cuda", "--arch", "sm_70"),
     "arch: expected one of sm_80, sm_90; got 'sm_70'"),
    (("compile", SPECS / "examples" / "grid3_diagonal.yaml", "-t", "c", "--arch", "sm_80"),
     "--arch names a GPU, for -t cuda"),
    (("compile", SPECS / "examples" / "grid3_diagonal.yaml", "--target", "sm_80"),
     "target: sm_80 is a GPU"),
    (("build", "no/such/folder"), "no such folder"),
    (("info", "no/such/file.yaml"), "no such file"),
])
def test_bad_arguments_exit_2_without_traceback(args, message):
    result = convgen(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


SCHEDULE = """\
- split: [ow, 2]
- cache_write: ow.o
- reorder: [kh, kw, ow.i]
- vectorize: ow.i
"""


def test_show_prints_each_step_as_a_diff_and_verifies(tmp_path):
    (tmp_path / "s.yaml").write_text(SCHEDULE)
    result = convgen("show", SPECS / "examples" / "ramp_vertical_edge.yaml", "--schedule", tmp_path / "s.yaml",
                     "--verify-each-step", "--seed", "3")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "== step 0: split('ow', 2) ==" in out and "+    for ow.o in 0..2:" in out
    assert "== step 3: vectorize('ow.i') ==" in out and "+          vectorized for ow.i in 0..2:" in out
    assert out.count("-- check: pass") == 5
    assert "== after all steps ==" in out


def test_show_names_a_refused_step(tmp_path):
    (tmp_path / "s.yaml").write_text("- split: [ow, 2]\n- vectorize: kw\n")
    result = convgen("show", SPECS / "examples" / "ramp_vertical_edge.yaml", "--schedule", tmp_path / "s.yaml", "-v")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "schedule[1]: vectorize: 'kw' is a reduction loop" in result.stderr
    assert "The loop nest it was applied to:" in result.stderr  # -v shows the nest


def test_compile_and_check_take_a_schedule(tmp_path):
    (tmp_path / "s.yaml").write_text(SCHEDULE)
    spec = SPECS / "examples" / "step_sobel_x.yaml"
    result = convgen("check", spec, "--schedule", tmp_path / "s.yaml", "--seed", "1")
    assert result.returncode == 0 and result.stdout.count(": pass") == 2
    result = convgen("compile", spec, "-t", "llvm", "--schedule", tmp_path / "s.yaml", "-o", tmp_path / "out")
    assert result.returncode == 0 and "<2 x float>" in (tmp_path / "out" / "step_sobel_x.ll").read_text()


def test_compile_for_a_named_target(tmp_path):
    """The same vectorized schedule for an AVX2-only CPU uses ymm registers, never zmm."""
    result = convgen("compile", SPECS / "scheduled" / "resnet_3x3_64_tuned.yaml", "-t", "llvm", "--asm",
                     "--target", "x86-64-avx2", "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    assembly = (tmp_path / "resnet_3x3_64_tuned.s").read_text()
    assert "%ymm" in assembly and "%zmm" not in assembly
    result = convgen("compile", SPECS / "examples" / "grid3_diagonal.yaml", "--target", "cortex-m9")
    assert result.returncode == 2 and "target: expected one of host, cortex-m0plus, cortex-m4, cortex-m55, cortex-m7" in result.stderr


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                    reason="arm-none-eabi-gcc not installed (Debian: gcc-arm-none-eabi; .ci/run installs it)")
def test_compile_for_cortex_m4_with_prefix_and_report(tmp_path):
    result = convgen("compile", SPECS / "examples" / "grid3_diagonal.yaml", "-t", "c", "--target", "cortex-m4",
                     "--prefix", "net1_", "--report", "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    header = (tmp_path / "net1_grid3_diagonal.h").read_text()
    assert "void net1_grid3_diagonal(" in header and "#define NET1_GRID3_DIAGONAL_WORKSPACE_BYTES 0" in header
    assert re.search(r"code size: text [1-9]\d* B", result.stdout)
    assert re.search(r"stack: \d+ B \(static", result.stdout)  # a leaf kernel may need no frame at all
    if shutil.which("qemu-system-arm"):
        assert re.search(r"instructions: [1-9][\d,]* per call, [\d.]+ per MAC \(executed under QEMU", result.stdout)
    else:
        assert "instructions: not counted (qemu-system-arm not found" in result.stdout
    bad = convgen("compile", SPECS / "examples" / "grid3_diagonal.yaml", "-t", "c", "--prefix", "9x")
    assert bad.returncode == 2 and "--prefix" in bad.stderr and "Traceback" not in bad.stderr


def test_compile_bakes_weights_into_the_c_file(tmp_path):
    import numpy as np
    spec = SPECS / "layers" / "person_detect_conv1_int8.yaml"   # int8, no weights of its own
    weights = tmp_path / "wb.npz"
    np.savez(weights, w=np.arange(72).reshape(8, 1, 3, 3) - 36, b=np.arange(8) * 1000)
    result = convgen("compile", spec, "-t", "c", "--bake-weights", "--weights", weights, "--align", "16",
                     "--section", ".rodata.weights", "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    header = (tmp_path / "person_detect_conv1_int8.h").read_text()
    source = (tmp_path / "person_detect_conv1_int8.c").read_text()
    assert "void person_detect_conv1_int8(const int8_t *CONVGEN_RESTRICT x, int8_t *CONVGEN_RESTRICT y);" in header
    assert "w  baked  int8 [8, 1, 3, 3] OIHW, 72 bytes" in header
    assert 'aligned(16), section(".rodata.weights")' in source
    assert "-36, -35, -34" in source and "1000, 2000" in source
    missing = convgen("compile", spec, "-t", "c", "--bake-weights")
    assert missing.returncode == 2 and "gives no values for w; pass them with --weights" in missing.stderr
    np.savez(weights, w=np.full((8, 1, 3, 3), 300), b=np.zeros(8))
    too_big = convgen("compile", spec, "-t", "c", "--bake-weights", "--weights", weights, "-o", tmp_path)
    assert too_big.returncode == 2 and "w: expected whole numbers that fit int8" in too_big.stderr
    pooling = convgen("compile", SPECS / "layers" / "maxpool_2x2_int8.yaml", "-t", "c", "--bake-weights")
    assert pooling.returncode == 2 and "has no weights" in pooling.stderr
    alone = convgen("compile", spec, "-t", "c", "--align", "3")
    assert alone.returncode == 2 and "go with --bake-weights" in alone.stderr
    for result in (missing, too_big, pooling, alone):
        assert "Traceback" not in result.stderr


def test_bench_reports_convgen_and_peers_as_json():
    """Structure only: timing belongs to benchmarks, not tests."""
    import json
    result = convgen("bench", SPECS / "examples" / "photo_sharpen_nhwc.yaml", "--vs", "numpy", "--rounds", "1",
                     "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["report"][0]
    names = [r["name"] for r in report["results"]]
    assert names[0] == "convgen" and report["results"][0]["seconds"] > 0
    assert "numpy" in names and report["peak_gflops"] > 0 and report["macs"] == 165888
    assert report["executed_macs"] == 165888   # reflect padding reads real values: no tap is skipped


def test_bench_verbose_names_the_recipe_applied():
    result = convgen("bench", SPECS / "bench" / "resnet_3x3_64.yaml", "--vs", "numpy", "--rounds", "1", "-v")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    convgen_row = next(i for i, line in enumerate(lines) if line.strip().startswith("convgen "))
    assert lines[convgen_row + 1].strip().startswith("default schedule, 1")   # the steps, then the recipe
    assert "direct, channel vectors (vector " in lines[convgen_row + 1]
    assert "each group's 64 output channels fill" in lines[convgen_row + 1]


def test_show_names_the_recipe_its_parameters_and_why():
    from convgen.target import host
    lines = convgen("show", SPECS / "bench" / "mobilenetv2_pw_144_24.yaml").stdout.splitlines()
    assert lines[0].startswith("schedule: the default for the target")
    lanes = host().vector_lanes
    if 24 % lanes:   # AVX-512: 24 channels do not fill 16 lanes
        assert lines[1].startswith("recipe: pointwise GEMM (tile ") and "weights OIHW" in lines[1]
        assert lines[1].endswith(f"whose 24 output channels do not fill {lanes}-lane vectors")
    else:
        assert lines[1].startswith("recipe: direct, channel vectors (vector ") and "weights OIHW" in lines[1]
        assert lines[1].endswith(f"each group's 24 output channels fill {lanes}-lane vectors")


def test_show_names_no_recipe_for_a_given_schedule(tmp_path):
    lines = convgen("show", SPECS / "bench" / "resnet_3x3_64.yaml", "--schedule", "naive").stdout.splitlines()
    assert lines[0].startswith("schedule: ") and not lines[1].startswith("recipe:")


def test_show_html_joins_steps_nests_and_emitted_code(tmp_path):
    import html as escaping
    page = tmp_path / "out" / "page.html"
    result = convgen("show", SPECS / "bench" / "resnet_3x3_64.yaml", "--html", page)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == str(page)
    html = escaping.unescape(page.read_text())
    steps = [line.split("== step ", 1)[1].rstrip(" =") for line in result.stdout.splitlines()
             if line.startswith("== step ")]
    assert len(steps) > 5
    for step in steps:   # every step the text view lists, as a section heading of the page
        assert f"<h3>step {step}</h3>" in html
    assert "bench_resnet_3x3_64.c</summary>" in html and "bench_resnet_3x3_64.ll</summary>" in html
    assert "recipe: direct, channel vectors" in html
    assert "for (" in html and "float *CONVGEN_RESTRICT" in html
    assert "for (ptrdiff_t w_packed_o = 0; w_packed_o &lt; 64;" in page.read_text()   # escaped, not a tag


def test_show_html_refuses_a_folder(tmp_path):
    result = convgen("show", SPECS / "bench" / "resnet_3x3_64.yaml", "--html", tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == f"show: --html {tmp_path}: expected a file to write; it is a folder"


def test_bench_plot_draws_the_roofline(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot is an optional extra: pip install -e '.[plot]'")
    picture = tmp_path / "roofline.png"
    result = convgen("bench", SPECS / "bench" / "tiny_ramp.yaml", "--vs", "numpy", "--rounds", "1",
                     "--plot", picture)
    assert result.returncode == 0, result.stderr
    assert f"roofline: {picture}" in result.stderr
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000


def test_bench_plot_refuses_a_name_that_is_not_png(tmp_path):
    result = convgen("bench", SPECS / "bench" / "tiny_ramp.yaml", "--vs", "numpy", "--plot", tmp_path / "r.svg")
    assert result.returncode == 2
    assert result.stderr.strip() == f"bench: --plot {tmp_path / 'r.svg'}: expected a .png file name"


def test_bench_refuses_an_unknown_peer():
    result = convgen("bench", SPECS / "examples" / "grid3_diagonal.yaml", "--vs", "tensorflow")
    assert result.returncode == 2 and "--vs: expected names among torch, onnxruntime, tflite, numpy" in result.stderr


def test_peak_reports_a_rate():
    result = convgen("peak", "--threads", "1")
    assert result.returncode == 0 and "1 thread(s):" in result.stdout and "GFLOP/s" in result.stdout


TINY = SPECS / "bench" / "tiny_ramp.yaml"
SPEC = SPECS / "examples" / "grid3_diagonal.yaml"


@pytest.mark.parametrize("args, message", [
    (("bench", TINY, "--threads", "0"), "convgen bench: argument --threads: expected a whole number of at least 1; got 0"),
    (("bench", TINY, "--threads", "-2"), "convgen bench: argument --threads: expected a whole number of at least 1; got -2"),
    (("bench", TINY, "--threads", "two"), "convgen bench: argument --threads: expected a whole number of at least 1; got 'two'"),
    (("peak", "--threads", "-1"), "convgen peak: argument --threads: expected a whole number of at least 1; got -1"),
    (("bench", TINY, "--rounds", "0"), "convgen bench: argument --rounds: expected a whole number of at least 1; got 0"),
    (("tune", SPEC, "--budget", "soon"), "convgen tune: argument --budget: expected a time such as 60s, 90 or 10m; got 'soon'"),
    (("tune", SPEC, "--target", "cortex-m4"), "tune: --target cortex-m4: only host can be tuned here"),
    (("records", "import"), "records import: expected a file of JSON lines"),
    (("check", SPEC, "--seed", "-5"), "convgen check: argument --seed: expected a whole number from 0 to 4294967295; got '-5'"),
    (("compile", SPEC, "-o", "README.md"), "compile: -o README.md: expected a folder to write into; it is a file"),
])
def test_bad_input_gives_one_line_and_exit_2(args, message):
    from conftest import ROOT
    result = convgen(*args, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr


def test_a_closed_pipe_ends_the_output_quietly():
    """`convgen build specs/examples | head -3`: the reader goes away; no BrokenPipeError."""
    process = subprocess.Popen([sys.executable, "-m", "convgen.cli", "build", str(SPECS / "examples"), "--seed", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = [process.stdout.readline() for _ in range(3)]
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 0, stderr
    assert first[0].startswith("convgen build:") and "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_a_layer_too_large_for_memory_is_refused_before_it_runs(tmp_path, monkeypatch, capsys):
    """On a machine of 1 GiB (as far as convgen is told), a layer of 2 GiB of arrays."""
    from convgen import cli
    monkeypatch.setattr(cli, "_physical_memory", lambda: 2**30)
    (tmp_path / "huge.yaml").write_text("name: huge\nop: conv2d\nin_channels: 64\nout_channels: 64\n"
                                        "input_size: [4000, 4000]\nkernel_size: 3\n")
    assert cli.main(["check", str(tmp_path / "huge.yaml")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("check: huge: its arrays need") and "this machine has" in lines[0]


def test_a_large_layer_says_what_runs_and_reports_each_stage(capsys):
    from convgen.cli import _announce
    from convgen.spec import load_spec
    spec = load_spec({"name": "big", "op": "conv2d", "in_channels": 64, "out_channels": 64,
                      "input_size": [1000, 1000], "kernel_size": 3})
    say = _announce(spec, "check")   # 998 x 998 outputs x 64 x 64 x 9 taps
    say("running the kernel")
    err = capsys.readouterr().err
    assert "big: 36,716,691,456 MACs" in err and "MiB of arrays" in err and "running the kernel" in err
    quiet = _announce(load_spec(SPEC), "check")
    quiet("running the kernel")
    assert capsys.readouterr().err == ""


def test_schedule_file_may_be_a_spec_with_a_schedule(tmp_path):
    tuned = SPECS / "scheduled" / "resnet_3x3_64_tuned.yaml"
    result = convgen("show", SPECS / "layers" / "resnet_3x3_64.yaml", "--schedule", tuned)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("schedule: as given") and ": 13 steps" in result.stdout.splitlines()[0]


def test_version():
    from importlib.metadata import version
    result = convgen("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"convgen {version('convgen')}"


def test_compile_writes_the_fast_kernel_by_default(tmp_path):
    """The C of a spec without a schedule is tiled, vectorized and parallel; naive is asked for."""
    spec = SPECS / "layers" / "resnet_3x3_64.yaml"
    result = convgen("compile", spec, "-t", "c", "-o", tmp_path / "fast")
    assert result.returncode == 0, result.stderr
    assert "schedule: the default for the target, on host" in result.stderr
    source = (tmp_path / "fast" / "resnet_3x3_64.c").read_text()
    assert "CONVGEN_PARALLEL_FOR" in source and "CONVGEN_SIMD" in source and "acc[" in source
    result = convgen("compile", spec, "-t", "c", "-o", tmp_path / "naive", "--schedule", "naive")
    assert result.returncode == 0 and "schedule: none (naive, as asked)" in result.stderr
    naive = (tmp_path / "naive" / "resnet_3x3_64.c").read_text()
    assert "CONVGEN_PARALLEL_FOR" not in naive and "CONVGEN_SIMD" not in naive


def test_compile_for_cortex_m_gets_its_own_default(tmp_path):
    """A Cortex-M target has no vector registers: its default is a scalar register tile, never x86 widths."""
    result = convgen("compile", SPECS / "layers" / "ds_cnn_pw_int8.yaml", "-t", "c", "--target", "cortex-m4",
                     "-o", tmp_path)
    assert result.returncode == 0 and "schedule: the default for the target, on cortex-m4" in result.stderr
    source = (tmp_path / "ds_cnn_pw_int8.c").read_text()
    assert "CONVGEN_SIMD" not in source and "CONVGEN_PARALLEL_FOR" not in source
    assert "/* oc_i = 3 */" in source     # four output channels a tile, unrolled


def test_build_table_names_each_schedule_and_notes_layers_no_recipe_fits(tmp_path):
    folder = tmp_path / "specs"
    folder.mkdir()
    for name in ("grid3_diagonal", "photo_sharpen_nhwc"):
        (folder / f"{name}.yaml").write_text((SPECS / "examples" / f"{name}.yaml").read_text())
    result = convgen("build", folder, "-o", tmp_path / "out", "--seed", "2")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0] + " " + line.split()[1]: line for line in result.stdout.splitlines()[3:7]}
    assert "no recipe" in rows["grid3_diagonal llvm"] and "default" in rows["photo_sharpen_nhwc c"]
    assert "note: grid3_diagonal: no default recipe fits this layer on host" in result.stdout


def test_info_on_a_network_lists_its_tensors_and_build_builds_it(tmp_path):
    (tmp_path / "net.yaml").write_text(
        "name: net\ninput: {name: x, shape: [1, 3, 8, 8]}\nlayers:\n"
        "  - {name: conv, op: conv2d, input: x, output: c, out_channels: 4, kernel_size: 3, padding: 1}\n"
        "  - {name: gap, op: global_avgpool, input: c, output: y}\noutput: y\n")
    result = convgen("info", tmp_path / "net.yaml")
    assert result.returncode == 0, result.stderr
    assert "network net" in result.stdout and "gap              global_avgpool  c" in result.stdout
    assert "[1, 4, 1, 1]" in result.stdout
    result = convgen("build", tmp_path, "-o", tmp_path / "out")
    assert result.returncode == 1 and "net.yaml: weights: no .npz named, and none beside the spec" in result.stderr
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "net.npz", **{"conv.weight": rng.uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32),
                                      "conv.bias": rng.uniform(-1, 1, 4).astype(np.float32)})
    result = convgen("build", tmp_path, "-o", tmp_path / "out", "--seed", "1")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("net ")]
    assert [(row[1], row[-1]) for row in rows] == [("llvm", "pass"), ("c", "pass")]
    assert (tmp_path / "out" / "net" / "net.c").exists()
    (tmp_path / "net.yaml").write_text("name: net\ninput: {name: x, shape: [1, 3, 8, 8]}\nlayers:\n"
                                       "  - {name: r, op: relu, input: q, output: y}\noutput: y\n")
    result = convgen("info", tmp_path / "net.yaml")
    assert result.returncode == 2 and "layers[0] (r): input: no tensor 'q'" in result.stderr
    assert "Traceback" not in result.stderr


def test_network_show_check_and_compile(tmp_path):
    net = SPECS / "networks" / "resnet_block.yaml"
    result = convgen("show", net)
    assert result.returncode == 0, result.stderr
    assert "folded bn1 (batchnorm) into conv1" in result.stdout
    assert "fused add (add) into conv2 (its residual: x)" in result.stdout
    assert "conv2: r1, x -> y: conv2d 3x3 32->32 relu" in result.stdout and "lower bound" in result.stdout
    assert "    schedule: default (no tuned record: no records database at " in result.stdout   # conftest's
    result = convgen("check", net, "--seed", "4")
    assert result.returncode == 0, result.stderr
    assert "resnet_block [llvm]: pass" in result.stdout and "resnet_block [c]: pass" in result.stdout
    result = convgen("compile", net, "-t", "c", "--bake-weights", "--prefix", "m_", "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    header = (tmp_path / "m_resnet_block.h").read_text()
    assert "void m_resnet_block(const float *CONVGEN_RESTRICT x, float *CONVGEN_RESTRICT y, " \
           "void *CONVGEN_RESTRICT workspace);" in header
    assert "#define M_RESNET_BLOCK_ARENA_BYTES " in header and "#define M_RESNET_BLOCK_LOWER_BOUND_BYTES" in header
    result = convgen("check", net, "--schedule", "naive")
    assert result.returncode == 2 and "--schedule: for layer specs" in result.stderr
    assert "Traceback" not in result.stderr
