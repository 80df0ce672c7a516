import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))  # strategies.py, c_harness.py

# Tests compile every kernel they check and leave nothing in the user's kernel cache; the cache's own
# tests (test_cache.py) turn it on in a folder of their own. Subprocesses inherit this.
os.environ["CONVGEN_CACHE"] = "off"
# Nor do they read or write the user's tuning records: builds see no tuned record unless a test
# makes one (test_tune.py points CONVGEN_RECORDS at a database of its own).
os.environ["CONVGEN_RECORDS"] = str(Path(__file__).resolve().parents[1] / "build" / "tests" / "no-records.sqlite")

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"

# Every property test draws at least this many examples; the issue asks for 300 per backend.
settings.register_profile(
    "convgen", max_examples=300, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.load_profile("convgen")


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/ from the current output instead of comparing")


@pytest.fixture
def golden(request):
    """golden(name, text): compare text with tests/golden/<name>, or rewrite it with --update-golden."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = Path(__file__).parent / "golden" / name
        if update:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            return
        assert path.exists(), f"no golden file {path.name}; run pytest --update-golden once and review it"
        assert text == path.read_text(), f"output differs from golden/{name} (pytest --update-golden rewrites it)"
    return check


@pytest.fixture(params=["llvm", "c"])
def backend(request):
    return request.param


def spec_paths():
    """Layer specs (specs/targets/ holds hardware descriptions, specs/networks/ network specs)."""
    return sorted(p for p in SPECS.rglob("*.yaml") if p.parent.name not in ("targets", "networks"))
