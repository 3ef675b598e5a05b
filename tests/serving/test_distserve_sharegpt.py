"""DistServe's OPT-13B chatbot case on A100-80GB (ShareGPT, P90 TTFT <= 200 ms, P90 TPOT <= 100 ms):
the authors' measured per-request runs replayed through the serving simulation with the engines'
executor profiles, which were fitted to the engines' published step times, not to these runs
(benchmarks/distserve_sharegpt.py prints every figure; sources in benchmarks/data/distserve/README.md)."""
import sys

import numpy as np
import pytest

from simulator.core.paths import REPO_ROOT
from simulator.serving import simulate as sv

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import distserve_sharegpt as dss  # noqa: E402


@pytest.fixture(scope="module")
def result():
    return dss.compare()


def test_runs_are_the_published_ones():
    runs = dss.runs()
    assert sorted((r["system"], r["rate"]) for r in runs) == sorted(
        [("distserve-c21d11", x) for x in (3, 4.5, 6, 7.5, 9, 10.5, 12)]
        + [("vllm", x) for x in (1, 1.5, 2, 2, 2.5, 3, 3.5, 4)])
    for r in runs:
        assert len(r["arrive"]) == r["n"]
        # Poisson arrivals at the file's rate: mean gap within 25% of 1 / rate
        assert np.mean(np.diff(r["arrive"])) == pytest.approx(1 / r["rate"], rel=0.25)


def test_distserve_goodput_per_gpu_within_20_percent(result):
    measured, predicted = result["goodput_per_gpu"]["distserve-c21d11"]
    assert measured == pytest.approx(2.02, abs=0.02)       # from the measured attainment curve
    assert predicted == pytest.approx(measured, rel=0.20)


def test_vllm_never_reaches_the_slo_in_either(result):
    """One vLLM GPU cannot prefill ShareGPT's longest prompts within 200 ms: attainment stays below
    90% at every measured rate, measured and predicted, so its goodput under these SLOs is 0."""
    assert result["goodput_per_gpu"]["vllm"] == (0.0, 0.0)
    rows = [x for x in result["runs"] if x["system"] == "vllm"]
    assert max(x["attainment"][0] for x in rows) < 0.9 and max(x["attainment"][1] for x in rows) < 0.9


# A measured attainment is a fraction of one run's n >= 100 requests: the 95% binomial interval
# at n = 100, p = 0.5 (the shortest runs, the widest case) is +-1.96 x sqrt(0.25 / 100) = +-0.098,
# so the measured curve pins attainment to about 0.10, and a replay can be asked for no more.
ATTAINMENT_ABS = 0.10


@pytest.mark.parametrize("system", [
    "distserve-c21d11",
    pytest.param("vllm", marks=pytest.mark.xfail(strict=True, reason=(
        "vLLM replay under-predicts attainment by 0.19 at 1 req/s (0.68 measured, 0.49 predicted), 0.15 at "
        "1.5 and 0.17 at 2.5: the fitted vllm-v0 profile prefills ShareGPT's long prompts ~15% slower than "
        "these runs (P90 TTFT 360 vs 259 ms at 1 req/s), and H100 GEMM curves carried to the A100 add ~13%"))),
])
def test_attainment_follows_the_measured_curve(result, system):
    rows = [x for x in result["runs"] if x["system"] == system]
    assert len(rows) >= 7
    for x in rows:
        m, p = x["attainment"]
        assert p == pytest.approx(m, abs=ATTAINMENT_ABS), x


def test_goodput_interpolation():
    assert dss.goodput([1, 2, 3], [0.95, 0.92, 0.80]) == pytest.approx(2 + 0.02 / 0.12)
    assert dss.goodput([1, 2], [0.95, 0.91]) == 2.0
    assert dss.goodput([1, 2], [0.80, 0.50]) == 0.0


def test_placements_fit_the_node():
    p = dss.placements(4)
    assert (2, 1, 1, 1) in p and (1, 2, 1, 2) in p and (4, 1, 1, 1) not in p
    assert all(a * b + c * d <= 4 for a, b, c, d in p)


def test_batched_prefill_reads_weights_once():
    from simulator.core.models import load_model
    from simulator.core.profiles import load_executor_profile
    from simulator.core.specs import load_hardware
    t = sv.step_tables(load_model("opt-13b"), load_hardware("a100-sxm-80gb"), tp=2, dtype="fp16",
                       executor=load_executor_profile("distserve"))
    two = t.batch_prefill_time([512, 512])
    assert float(t.prefill_time(512)) < two < 2 * float(t.prefill_time(512))
    # attention per prompt: two 512-token prompts cost less than one 1024-token prompt
    assert two < float(t.prefill_time(1024))
    assert t.batch_prefill_time([700]) == pytest.approx(float(t.prefill_time(700)), rel=1e-9)
