"""The kernel cache: a second build of a layer loads its compiled code from
disk instead of compiling, and computes what the first did."""

import subprocess
import sys

import numpy as np
import pytest

import convgen
from convgen import cache
from convgen.codegen import c as c_backend, llvm as llvm_backend
from convgen.driver import plan
from convgen.target import host

from conftest import SPECS

LAYER = SPECS / "layers" / "vgg_3x3_64_relu_maxpool.yaml"   # two stages and a parallel loop
SMALL = {"name": "cached", "op": "conv2d", "in_channels": 16, "out_channels": 32, "input_size": [9, 11],
         "kernel_size": 3, "padding": 1, "activation": "relu"}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("CONVGEN_CACHE", raising=False)
    monkeypatch.setenv("CONVGEN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _refuse_to_compile(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("compiled where the cache holds the kernel")
    monkeypatch.setattr(llvm_backend.LLVMBackend, "load", refuse)
    monkeypatch.setattr(c_backend.CBackend, "load", refuse)


def _matches_reference(kernel, seed):
    rng = np.random.default_rng(seed)
    spec = kernel.spec
    x = rng.uniform(-1, 1, spec.input_shape).astype(np.float32)
    w = rng.uniform(-1, 1, spec.weight_shape).astype(np.float32)
    b = rng.uniform(-1, 1, spec.out_channels).astype(np.float32)
    out = np.full(spec.output_shape, np.nan, np.float32)
    kernel(x, w, b, out=out)
    np.testing.assert_allclose(out, convgen.reference(spec, x, w, b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["llvm", "c"])
def test_second_build_loads_from_the_cache_and_matches(cache_dir, monkeypatch, backend):
    first = convgen.build(LAYER, backend, threads=2)
    assert not first.from_cache and cache.info()[1] == 1
    _refuse_to_compile(monkeypatch)
    second = convgen.build(LAYER, backend, threads=2)
    assert second.from_cache and second.source == first.source and second.steps == first.steps
    rng = np.random.default_rng()
    spec = second.spec
    x = rng.uniform(-1, 1, spec.input_shape).astype(np.float32)
    w = rng.uniform(-1, 1, spec.weight_shape).astype(np.float32)
    b = rng.uniform(-1, 1, spec.out_channels).astype(np.float32)
    for threads in (1, 2):
        out = np.full(spec.output_shape, np.nan, np.float32)
        second(x, w, b, out=out, threads=threads)
        np.testing.assert_allclose(out, convgen.reference(spec, x, w, b), rtol=1e-4, atol=1e-4)


def test_a_cached_kernel_writes_its_files_into_workdir(cache_dir, tmp_path):
    convgen.build(SMALL, "c", workdir=tmp_path / "first")
    kernel = convgen.build(SMALL, "c", workdir=tmp_path / "second")
    assert kernel.from_cache
    assert sorted(p.name for p in (tmp_path / "second").iterdir()) == ["cached.c", "cached.h", "cached.so"]


def test_the_key_changes_with_the_schedule_the_backend_and_the_target(cache_dir):
    spec = convgen.load_spec(SMALL)
    one, two = plan(spec, host(), None, 1), plan(spec, host(), None, 2)
    naive = plan(spec, host(), "naive", 1)
    keys = {cache.key(one.program, "llvm", host()), cache.key(two.program, "llvm", host()),
            cache.key(naive.program, "llvm", host()), cache.key(one.program, "c", host()),
            cache.key(one.program, "llvm", convgen.target.load_target("x86-64-avx2"))}
    assert len(keys) == 5
    assert cache.key(one.program, "llvm", host()) == cache.key(plan(spec, host(), None, 1).program, "llvm", host())


def test_the_key_tells_constant_tables_apart(cache_dir):
    """int8 layers whose per-channel requantization tables differ in one channel of 64."""
    scales = [0.004 + 0.0001 * k for k in range(64)]
    other = scales[:40] + [scales[40] * 1.01] + scales[41:]
    specs = [convgen.load_spec({
        "name": "int8", "op": "conv2d", "in_channels": 64, "out_channels": 64, "input_size": [5, 5],
        "kernel_size": 1, "layout": "NHWC", "dtype": "int8",
        "quantization": {"input": {"scale": 0.03, "zero_point": -128}, "output": {"scale": 0.04, "zero_point": -128},
                         "weight_scales": s}}) for s in (scales, other)]
    assert specs[0].requantization() != specs[1].requantization()
    programs = [plan(s, host(), "naive", 1).program for s in specs]
    assert cache.key(programs[0], "c", host()) != cache.key(programs[1], "c", host())


def test_an_unreadable_entry_is_rebuilt(cache_dir):
    convgen.build(SMALL, "llvm")
    for entry in cache_dir.glob("*/*/emitted.pickle"):
        entry.write_bytes(b"not a pickle")
    kernel = convgen.build(SMALL, "llvm")
    assert not kernel.from_cache
    _matches_reference(kernel, seed=None)


def test_cache_off_builds_and_stores_nothing(cache_dir, monkeypatch):
    monkeypatch.setenv("CONVGEN_CACHE", "off")
    assert not convgen.build(SMALL, "llvm").from_cache and not convgen.build(SMALL, "llvm").from_cache
    assert not cache_dir.exists()


def test_cli_cache_info_and_clear(cache_dir):
    convgen.build(SMALL, "llvm")
    convgen.build(SMALL, "c")

    def run(*args):
        result = subprocess.run([sys.executable, "-m", "convgen.cli", "cache", *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert run("info").startswith(f"{cache_dir}: 2 kernels, ")
    assert run("clear") == f"removed 2 kernels from {cache_dir}"
    assert run("info").startswith(f"{cache_dir}: 0 kernels, ")
    assert not convgen.build(SMALL, "llvm").from_cache
