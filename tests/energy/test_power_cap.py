"""Power caps: a compute-bound prefill slows with the clock cut, a memory-bound decode barely.
Against Splitwise (Patel et al., ISCA 2024; the authors' simulator artifact encodes their
measurement): a DGX-H100 capped at 70% power (490 W per GPU) runs Llama-2-70B prompts x1.30 and
tokens x1.00. The fit used one prefill (TP 8, 2048 tokens); the other prefills and every decode
are held out."""
import sys

import pytest

from simulator.core.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import energy as bench  # noqa: E402  (benchmarks/energy.py)
from simulator.core import power
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.specs import load_hardware
from simulator.core.workload import Job


def test_splitwise_capped_prompts_and_tokens(data):
    cap = data.splitwise.per_gpu_cap_W
    for c in data.splitwise.capped:
        if c.role == "report":
            continue
        ratio, capped, base = bench.capped_ratio(c, cap)
        if c.phase == "prefill":
            # fit row exact; held-out rows (TP 2, 4 and other lengths) within 0.07 of x1.30
            assert ratio == pytest.approx(c.time_ratio, abs=0.01 if c.role == "fit" else 0.07), c
            assert capped.energy.power_w == pytest.approx(cap, rel=1e-6)
        else:
            assert ratio == pytest.approx(1.0, abs=1e-9), c      # decode draws less than the cap: untouched
            assert base.energy.power_w < cap


def _pair(model, hw, job, cap):
    m, s = load_model(model), load_hardware(hw)
    return predict(m, s, job, check_memory=False), predict(m, s, Job(**{**job.__dict__, "power_cap_w": cap}),
                                                           check_memory=False)


def test_prefill_slows_in_proportion_to_the_clock_cut():
    """Compute-bound time scales by f0 / f, the rest not at all: the step's slowdown is
    1 + (compute share) (f0 / f - 1); for an 8B 4096-token prefill (75% compute-bound) that is
    most of the clock cut."""
    base, capped = _pair("llama-3.1-8b", "h100-sxm", Job("prefill", seq=4096), 450)
    cut = 1 / capped.energy.clock_fraction
    share = base.time_by_resource["compute"] / base.time_s
    assert share > 0.6
    assert capped.time_s / base.time_s == pytest.approx(1 + share * (cut - 1), rel=1e-9)
    assert capped.time_by_resource["memory"] == pytest.approx(base.time_by_resource["memory"])
    assert capped.time_s / base.time_s > 1 + 0.6 * (cut - 1)
    assert capped.energy.power_w == pytest.approx(450, rel=1e-6)


def test_same_cap_prefill_slows_decode_does_not():
    """The asymmetry (POLCA, Splitwise): one cap that binds both. Llama-3.1-8B decode at batch 64
    draws ~474 W and prefill 700 W; at 450 W the prefill slows >= 5%, the decode not at all while
    its power drops to the cap (it lowers the clock, which memory-bound kernels do not need)."""
    pre_base, pre_cap = _pair("llama-3.1-8b", "h100-sxm", Job("prefill", seq=4096), 450)
    dec_base, dec_cap = _pair("llama-3.1-8b", "h100-sxm", Job("decode", batch=64, context=512), 450)
    assert dec_base.energy.power_w > 450 and pre_base.energy.power_w > 450       # the cap binds both
    assert pre_cap.time_s / pre_base.time_s > 1.05
    assert dec_cap.time_s / dec_base.time_s == pytest.approx(1.0, abs=0.01)
    assert dec_cap.energy.power_w == pytest.approx(450, rel=1e-6)
    assert dec_cap.energy.energy_j_per_token < dec_base.energy.energy_j_per_token


def test_a_cap_above_the_draw_changes_nothing():
    base, capped = _pair("llama-3.1-8b", "h100-sxm", Job("decode", batch=8, context=512), 690)
    assert capped.time_s == base.time_s
    assert capped.energy.power_w == pytest.approx(base.energy.power_w)
    assert capped.energy.clock_fraction == 1.0


def test_training_under_a_cap_keeps_its_terms_adding_up():
    base, capped = _pair("llama-3.2-1b", "h100-sxm", Job("train", batch=4, seq=2048), 500)
    assert capped.time_s > base.time_s
    assert sum(capped.time_terms.values()) == pytest.approx(capped.time_s, rel=1e-9)
    assert capped.time_terms["power_cap"] == pytest.approx(capped.time_s - base.time_s)


def test_the_cap_and_the_fit_are_one_model(data):
    """benchmarks/energy.py's ratio is predict()'s, which is power.capped_time_ratio on its activity."""
    c = next(c for c in data.splitwise.capped if c.role == "fit")
    ratio, _, base = bench.capped_ratio(c, data.splitwise.per_gpu_cap_W)
    direct = power.capped_time_ratio(bench.activity(base), load_hardware("h100-sxm").gpu, "bf16", power.H100_FIT,
                                     data.splitwise.per_gpu_cap_W)
    assert ratio == pytest.approx(direct, rel=1e-9)
