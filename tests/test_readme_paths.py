"""The README's paths, run as written: from a PyTorch model to a checked,
compiled convgen network."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


def readme_block(marker: str) -> str:
    """The fenced sh block that follows `<!-- marker -->` in the README."""
    found = re.search(rf"<!-- {marker} -->\n```sh\n(.*?)```", README.read_text(), re.S)
    assert found, f"README.md has no block marked {marker}"
    return found.group(1)


def test_pytorch_model_to_convgen_network(tmp_path):
    pytest.importorskip("torch", reason="the path starts from a PyTorch model (the test extra installs torch)")
    pytest.importorskip("onnx", reason="convgen import reads ONNX with the onnx package (in the test extra)")
    commands = readme_block("pytorch-to-convgen")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "model [llvm]: pass" in result.stdout and "model [c]: pass" in result.stdout
    header = (tmp_path / "build" / "model" / "c" / "model.h").read_text()
    assert "void model(const float *CONVGEN_RESTRICT x, float *CONVGEN_RESTRICT y, void *CONVGEN_RESTRICT " \
           "workspace);" in header and "#define MODEL_ARENA_BYTES" in header
