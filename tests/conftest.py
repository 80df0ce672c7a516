import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))  # strategies.py, c_harness.py

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"

# Every property test draws at least this many examples; the issue asks for 300 per backend.
settings.register_profile(
    "convgen", max_examples=300, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.load_profile("convgen")


@pytest.fixture(params=["llvm", "c"])
def backend(request):
    return request.param


def spec_paths():
    return sorted(SPECS.rglob("*.yaml"))
