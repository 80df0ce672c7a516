import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))  # strategies.py, c_harness.py

# Tests leave nothing in the user's kernel cache: they share one of their own, new for each run (made
# by the controlling process, inherited by pytest-xdist's workers and by subprocesses, removed at the
# end), so that every distinct kernel of a run is compiled once and a test that builds what another
# built loads it, as a user's second build would (about a second a layer, and the suite must stay
# under ten minutes on two cores). The cache's own tests (test_cache.py) use folders of their own.
os.environ.pop("CONVGEN_CACHE", None)
if "CONVGEN_TEST_CACHE_DIR" not in os.environ:
    os.environ["CONVGEN_TEST_CACHE_DIR"] = tempfile.mkdtemp(prefix="convgen-test-cache-")
os.environ["CONVGEN_CACHE_DIR"] = os.environ["CONVGEN_TEST_CACHE_DIR"]
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


def pytest_unconfigure(config):
    """The controlling process (not a pytest-xdist worker) removes the run's kernel cache."""
    if not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ["CONVGEN_TEST_CACHE_DIR"], ignore_errors=True)
