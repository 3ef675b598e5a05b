"""DistServe's motivating case (OSDI 2024 section 2; the authors' blog, Figure 6): vLLM V0
scheduling without chunked prefill, the engine's per-iteration host overhead, and the published
per-GPU goodput with DistServe's measured vLLM step profile (benchmarks/distserve.py has the
sources and prints every figure)."""
import sys

import numpy as np
import pytest

from simulator.core.paths import REPO_ROOT
from simulator.serving import simulate as sv
from simulator.core.models import load_model
from simulator.core.specs import load_hardware

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import distserve as ds  # noqa: E402


@pytest.fixture(scope="module")
def core():
    return sv.step_tables(load_model("opt-13b"), load_hardware("a100-sxm-80gb"), tp=1)


@pytest.fixture(scope="module")
def measured(core):
    return ds.distserve_vllm_tables(core)


# DistServe's vLLM ground truth (simdistserve/benchmarks/alignment/data-ground-truth/opt-13b-sharegpt/
# vllm-100-1.exp): requests decoded alone (no prefill in between), as (measured TPOT ms, decode
# batch, summed context tokens), and vLLM's TP-1 decode profile for OPT-13B on A100-80GB
# (profiler-a100-80g.vllm.json): step ms = a + b x summed context + c x batch
LONE_DECODES_MS = ((26.158, 1, 57), (25.286, 2, 2452), (24.892, 3, 1660), (25.037, 3, 2582), (25.898, 3, 3613))
VLLM_DECODE_MS = (19.562534173678987, 0.0004941120550644942, 0.05060571771697455)


def test_measured_overhead_and_profile(measured):
    # by hand: measured TPOT minus the profile's step for the same batch and context
    a, b, c = VLLM_DECODE_MS
    gaps = [t - (a + b * ctx + c * bs) for t, bs, ctx in LONE_DECODES_MS]
    assert [round(g, 2) for g in gaps] == [6.52, 4.41, 4.36, 4.05, 4.40]
    assert measured.iteration_overhead_s == pytest.approx(sum(gaps) / len(gaps) / 1e3, rel=1e-9)   # 4.75 ms
    a, b, c = ds.VLLM_PREFILL
    assert float(measured.prefill_time(512)) == pytest.approx((a + b * 512 + c * 512 ** 2) / 1e3 + 4.75e-3, rel=1e-3)
    a, b, c = ds.VLLM_DECODE_SMALL
    assert float(measured.decode_time(16, 512)) == pytest.approx((a + b * 16 * 512 + c * 16) / 1e3 + 4.75e-3, rel=1e-3)


def test_iteration_overhead_shifts_every_step(core):
    m, s = load_model("opt-13b"), load_hardware("a100-sxm-80gb")
    h = 0.005
    t = sv.step_tables(m, s, tp=1, iteration_overhead_s=h)
    assert np.allclose(t.prefill_s, core.prefill_s + h) and np.allclose(t.decode_s, core.decode_s + h)
    # a lone request: TTFT = one prefill iteration, TPOT = one decode iteration, each with one overhead
    one = sv.RequestMix.of([512], [8])
    sim = sv.simulate(t, one, 1e-3, n_requests=1, chunked_prefill=False)
    assert sim.ttft_s[0] == pytest.approx(float(t.prefill_time(512)), rel=1e-3)
    assert sim.tpot_s[0] == pytest.approx(float(t.decode_time(1, 516)), rel=0.02)


def test_unchunked_prefill_stalls_the_decode_batch(core):
    """vLLM V0: a prompt that arrives while another request decodes runs whole, alone; the running
    request's TPOT carries the full prefill. With chunked prefill the stall is spread over chunks
    that run beside the decode step."""
    arrive = np.array([0.0, 0.2])
    n_in, n_out = np.array([16, 2048]), np.array([40, 2])
    first, fin, _, _ = sv._run_instance(core, arrive, n_in, n_out, False, 2048, 10_000, 1e6, chunked_prefill=False)
    pre = float(core.prefill_time(2048))
    dec = float(core.decode_time(1, 40))
    # request 1 waits at most one decode step, then its prefill runs alone
    assert pre <= first[1] - arrive[1] <= pre + dec
    # request 0: 39 decode steps plus the whole stall
    assert fin[0] - first[0] == pytest.approx(pre + 39 * dec, rel=0.05)
    first_c, _, _, _ = sv._run_instance(core, arrive, n_in, n_out, False, 512, 10_000, 1e6, chunked_prefill=True)
    # chunked: four 512-token chunks, each in one forward with the decode step of request 0 (the
    # core's mixed step, weights read once), the k-th chunk after 512 k tokens of its prompt
    chunks = sum(float(core.mixed_time(1, 40, 512, 512 * k)) for k in range(4))
    assert first_c[1] - arrive[1] == pytest.approx(chunks, rel=0.05)
    # cheaper than the two passes (a separate prefill of each chunk beside the decode step)
    assert chunks < 4 * float(core.prefill_time(512)) + 4 * dec


def test_prefill_only_goodput_within_20_percent(measured):
    """Published: one prefill worker ~5.6 rps at P90 TTFT <= 0.4 s (512-token prompts, Poisson)."""
    closed = ds.goodputs(measured, simulated=False)
    assert closed["prefill-only"] == pytest.approx(5.6, rel=0.20)
    mix = sv.RequestMix.of([512], [64])
    # 3000 requests: the simulated goodput varies by ~5% over seeds (5.9-6.4 for seeds 0-3)
    des = sv.max_rate_simulated(measured, mix, 0.4, float("inf"), tables_decode=measured, n_decode=4, n_requests=3000)
    assert des == pytest.approx(5.6, rel=0.20)


def test_disaggregation_gain_within_20_percent(measured):
    """Published: 2P1D 3.3 rps per GPU over colocated 1.6 = 2.1x (same workload, same SLOs)."""
    g = ds.goodputs(measured, simulated=True)
    assert g["2P1D per GPU"] / g["colocated"] == pytest.approx(3.3 / 1.6, rel=0.20)
    # and the colocated instance is TPOT-bound, as published (TTFT alone allows more)
    mix = sv.RequestMix.of([512], [64])
    ttft_only = sv.max_rate_simulated(measured, mix, 0.4, float("inf"), chunked_prefill=False,
                                      chunk_tokens=ds.VLLM_V0_BATCHED_TOKENS)
    assert ttft_only > 1.5 * g["colocated"]
