"""Invariants of the power model over random steps: a GPU never draws less than its idle power nor
more than its TDP (no measurement shows a board past its limit), a cap is never exceeded, energy is
power x time x GPUs plus the hosts, and the carbon is the energy at the grid's intensity."""
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.core import power
from simulator.core.errors import RoofplanError
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.specs import list_names, load_gpu, load_hardware
from simulator.core.workload import Job

MODELS = ["llama-3.2-1b", "llama-3.1-8b", "qwen2.5-7b", "mixtral-8x7b"]
HARDWARE = ["h100-sxm", "a100-sxm-80gb", "h200", "l40s", "b200", "dgx-h100", "8xh100-sxm", "aws-p4d.24xlarge"]

jobs = st.one_of(
    st.builds(lambda b, c: Job("decode", batch=b, context=c), st.integers(1, 512), st.integers(0, 8000)),
    st.builds(lambda b, s: Job("prefill", batch=b, seq=s), st.integers(1, 8), st.integers(16, 4096)),
    st.builds(lambda b, s: Job("train", batch=b, seq=s), st.integers(1, 4), st.sampled_from([512, 1024, 2048])),
)


def _predict(model, hw, job, tp):
    system = load_hardware(hw)
    tp = min(tp, system.gpu_count if system.name != system.gpu.name else 8)
    try:
        return predict(load_model(model), system, Job(**{**job.__dict__, "tp": tp}), check_memory=False, with_ops=False)
    except RoofplanError:
        return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MODELS), st.sampled_from(HARDWARE), jobs, st.sampled_from([1, 2, 4, 8]))
def test_power_between_idle_and_tdp(model, hw, job, tp):
    p = _predict(model, hw, job, tp)
    if p is None:
        return
    gpu, e = load_hardware(hw).gpu, p.energy
    assert gpu.idle_w <= e.power_w <= gpu.tdp_w + 1e-9
    assert e.energy_j == pytest.approx(e.gpu_energy_j + e.host_energy_j)
    assert e.gpu_energy_j == pytest.approx(e.power_w * p.time_s * p.n_gpus)
    tokens = p.tokens_per_s * p.time_s
    assert e.energy_j_per_token == pytest.approx(e.energy_j / tokens)
    assert e.co2_g_per_1m_tokens == pytest.approx(e.energy_j_per_token * 1e6 / 3.6e6 * e.carbon_g_per_kwh)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MODELS[:3]), jobs, st.floats(0.35, 1.0))
def test_a_cap_is_never_exceeded_and_never_speeds_up(model, job, share):
    gpu = load_gpu("h100-sxm")
    cap = gpu.idle_w + share * (gpu.tdp_w - gpu.idle_w)
    base = _predict(model, "h100-sxm", job, 1)
    if base is None:
        return
    try:
        capped = predict(load_model(model), load_hardware("h100-sxm"), Job(**{**job.__dict__, "power_cap_w": cap}),
                         check_memory=False, with_ops=False)
    except RoofplanError as e:
        assert "at half its default clock" in str(e)        # the only refusal above idle
        return
    assert capped.energy.power_w <= cap * (1 + 1e-6)
    assert capped.time_s >= base.time_s * (1 - 1e-12)
    assert capped.energy.clock_fraction <= 1.0


@pytest.mark.parametrize("name", list_names("gpu"))
def test_every_gpu_spec_has_idle_below_tdp_with_a_source(name):
    from simulator.core.schema import read_yaml
    from simulator.core.specs import spec_path
    gpu = load_gpu(name)
    raw = read_yaml(spec_path("gpu", name))
    assert gpu.idle_w is not None and 0 < gpu.idle_w < gpu.tdp_w
    assert "idle_W" in raw["sources"] and "tdp_W" in raw["sources"]


def test_idle_at_or_above_tdp_is_refused(tmp_path, monkeypatch):
    from simulator.core.paths import REPO_ROOT
    import shutil
    root = tmp_path / "hw"
    shutil.copytree(REPO_ROOT / "hardware_specs", root)
    path = root / "gpus" / "h100-sxm.yaml"
    path.write_text(path.read_text().replace("idle_W: 75", "idle_W: 700"))
    monkeypatch.setenv("ROOFPLAN_HW_DIR", str(root))
    with pytest.raises(RoofplanError, match="idle_W 700 must be below tdp_W 700"):
        load_gpu("h100-sxm")


def test_a_gpu_without_idle_gets_the_stated_estimate():
    from dataclasses import replace
    gpu = replace(load_gpu("h100-sxm"), idle_w=None)
    gp = power.GpuPower.of(gpu)
    assert gp.idle_w == pytest.approx(power.IDLE_SHARE_ESTIMATE * 700) and gp.idle_estimated


def test_run_energy_is_steps_times_the_step():
    p = predict(load_model("llama-3.2-1b"), load_hardware("h100-sxm"), Job("train", batch=4, seq=2048))
    tokens_per_step = 4 * 2048
    run = power.run_energy(p.energy, p.time_s, tokens_per_step, 1e12)
    assert run.steps == math.ceil(1e12 / tokens_per_step)
    assert run.energy_j == pytest.approx(run.steps * p.energy.energy_j)
    assert run.time_s == pytest.approx(run.steps * p.time_s)
    assert run.co2_g == pytest.approx(run.energy_j / 3.6e6 * power.DEFAULT_CARBON_G_PER_KWH)
    assert p.energy.energy_j_per_sample == pytest.approx(p.energy.energy_j / 4)
