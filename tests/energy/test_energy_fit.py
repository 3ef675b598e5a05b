"""The shipped constants (simulator/core/power.py H100_FIT) are what `python benchmarks/energy.py --fit`
gives from the fit points of benchmarks/data/energy.yaml."""
import sys

import pytest

from simulator.core.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import energy as bench  # noqa: E402  (benchmarks/energy.py)
from simulator.core import power


def test_shipped_constants_are_the_refit(data):
    f = bench.refit(data)
    shipped = power.H100_FIT
    for name in ("k_compute", "k_flop", "k_byte", "gamma"):
        assert getattr(f, name) == pytest.approx(getattr(shipped, name), abs=2e-3), name


def test_fit_uses_only_fit_points(data):
    roles = [p.role for p in data.mlenergy if p.hardware == "h100-sxm"]
    assert roles.count("fit") == 12 and roles.count("check") == 11
    assert [c.role for c in data.splitwise.capped].count("fit") == 1
