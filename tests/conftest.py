"""Shared fixtures: the real H100 measurements (../shared/measurements beside the repo)."""
from pathlib import Path

import pytest
import yaml

from simulator.core.paths import REPO_ROOT

MEASUREMENTS = REPO_ROOT.parent / "shared" / "measurements" / "h100-sxm"
VALIDATION = REPO_ROOT / "validation"


@pytest.fixture(scope="session")
def h100_dir() -> Path:
    if not MEASUREMENTS.is_dir():
        pytest.skip(f"shared H100 measurements not found beside the repo ({MEASUREMENTS.name})")
    return MEASUREMENTS


@pytest.fixture(scope="session")
def end_to_end(h100_dir) -> dict:
    return yaml.safe_load((h100_dir / "end_to_end.yaml").read_text())
