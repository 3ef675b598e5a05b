"""Shared: the published energy measurements (benchmarks/data/energy.yaml) and roofplan's
prediction of each, through benchmarks/energy.py (the script docs/energy.md shows)."""
import sys

import pytest

from simulator.core.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import energy as bench  # noqa: E402


@pytest.fixture(scope="session")
def data():
    return bench.load()


@pytest.fixture(scope="session")
def rows(data):
    """ML.ENERGY H100 points (fit and held-out) with their predictions, keyed (model, batch)."""
    return {(r.point.model, r.point.max_num_seqs): r for r in bench.mlenergy_rows(data, ("fit", "check"))}
