"""plan parallel reports each plan's power, energy and carbon as predict() does, ranks by energy or
carbon under power caps and a power budget, and gives the time-energy front over GPU counts and
caps (issue 15, phase B). The planner predicts only the plans a lower bound cannot rule out: the
top plans and the front must equal those of predicting every plan."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from planners.parallel import _energy_bounds, _layer_activity, search, with_energy
from simulator.cli.main import main
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile, load_kernel_profile
from simulator.core.specs import load_hardware
from simulator.core.step import stage_times
from simulator.core.workload import Job

MODEL, SYSTEM, EX = load_model("gpt2"), load_hardware("dgx-h100"), load_executor_profile("megatron")
GPUS, BATCH, SEQ, CAPS = 8, 16, 1024, (None, 400.0)
PLAN = ["gpus", "tp", "pp", "dp", "micro_batch", "vpp", "zero", "sp", "recompute", "power_cap_w"]


@pytest.fixture(scope="module")
def every():
    """Every fitting plan over 8, 4, 2, 1 GPUs under both caps, predicted (the brute force)."""
    res = search(MODEL, SYSTEM, GPUS, BATCH, SEQ, "cost", EX, zeros=(0, 1))
    allp = with_energy(res, MODEL, SYSTEM, SEQ, BATCH, EX, objective="energy", caps=CAPS, top=10**6, tokens=1e9)
    assert allp.predicted == 2 * len(res.plans)
    return res, allp.plans


def _key(df):
    return [tuple(r) for r in df[PLAN].fillna(-1).itertuples(index=False)]


def test_each_plan_is_predicts(every):
    _, df = every
    for _, r in df.sample(12, random_state=1).iterrows():
        cap = None if math.isnan(r["power_cap_w"]) else r["power_cap_w"]
        job = Job("train", batch=int(r["n_micro"] * r["micro_batch"]), seq=SEQ, tp=int(r["tp"]), pp=int(r["pp"]),
                  dp=int(r["dp"]), vpp=int(r["vpp"]), micro_batch=int(r["micro_batch"]), zero=int(r["zero"]),
                  recompute=r["recompute"], sp=bool(r["sp"]), power_cap_w=cap)
        p = predict(MODEL, SYSTEM, job, EX, check_memory=False)
        assert r["time_s"] == pytest.approx(p.time_s, rel=1e-12)
        for k in ("power_w", "energy_j", "energy_j_per_token", "co2_g_per_1m_tokens"):
            assert r[k] == pytest.approx(getattr(p.energy, k), rel=1e-12)
        steps = math.ceil(1e9 / (BATCH * SEQ))
        assert r["run_steps"] == steps and r["run_energy_j"] == pytest.approx(steps * p.energy.energy_j, rel=1e-12)
        assert r["run_time_s"] == pytest.approx(steps * p.time_s, rel=1e-12)


def test_uncapped_times_are_the_searchs(every):
    res, df = every
    unc = df[df["power_cap_w"].isna()].merge(res.plans, on=PLAN[:-1], suffixes=("", "_search"))
    assert len(unc) == len(res.plans)
    assert np.allclose(unc["time_s"], unc["time_s_search"], rtol=1e-9, atol=0)


def test_energy_bounds_never_exceed_the_energy(every):
    res, df = every
    kp = load_kernel_profile("h100-sxm")
    stage = {}
    for t, mb, sp in set(zip(res.plans["tp"], res.plans["micro_batch"], res.plans["sp"])):
        job = Job("train", batch=int(mb), seq=SEQ, tp=int(t), micro_batch=int(mb), sp=bool(sp))
        st = stage_times(MODEL, SYSTEM, job, EX, kp)
        stage[(int(t), int(mb), bool(sp))] = (dict(st.bound_shares).get("compute", 0.0), _layer_activity(MODEL, job, EX))
    for cap in CAPS:
        lb = pd.Series(_energy_bounds(res.plans, MODEL, SYSTEM, cap, stage), index=_key(res.plans.assign(power_cap_w=cap)))
        got = df[df["power_cap_w"].isna()] if cap is None else df[df["power_cap_w"] == cap]
        e = pd.Series(got["energy_j"].to_numpy(), index=_key(got))
        assert (lb[e.index] <= e).all()
        assert (lb[e.index] / e).max() > 0.9          # and tight for some


@pytest.mark.parametrize("objective, key", [("energy", "energy_j"), ("carbon", "energy_j"), ("throughput", "time_s"),
                                            ("cost", "gpu_h_per_Mtok")])
def test_top_plans_equal_the_brute_force(every, objective, key):
    res, df = every
    got = with_energy(res, MODEL, SYSTEM, SEQ, BATCH, EX, objective=objective, caps=CAPS, top=5)
    assert got.predicted < len(df) / 4
    want = df.sort_values([key, "memory_bytes"], kind="stable").head(5)
    assert got.plans[key].tolist() == pytest.approx(want[key].tolist(), rel=1e-12)


def test_front_equals_the_brute_force(every):
    res, df = every
    got = with_energy(res, MODEL, SYSTEM, SEQ, BATCH, EX, caps=CAPS, front=True)
    d = df.sort_values(["time_s", "energy_j"], kind="stable")
    e = d["energy_j"].to_numpy()
    want = d[e < np.concatenate([[np.inf], np.minimum.accumulate(e)[:-1]]) * (1 - 1e-9)]
    assert got.plans[["time_s", "energy_j"]].to_numpy() == pytest.approx(want[["time_s", "energy_j"]].to_numpy(), rel=1e-12)
    assert len(got.plans) >= 3 and got.plans["gpus"].nunique() >= 2      # GPU counts and caps both trade
    assert np.all(np.diff(got.plans["time_s"]) > 0) and np.all(np.diff(got.plans["energy_j"]) < 0)


def test_power_budget(every):
    res, df = every
    budget = float(df["plan_power_w"].median())
    got = with_energy(res, MODEL, SYSTEM, SEQ, BATCH, EX, objective="throughput", caps=CAPS, top=3, power_budget_w=budget)
    ok = df[df["plan_power_w"] <= budget].sort_values(["time_s", "memory_bytes"], kind="stable")
    assert got.plans["time_s"].tolist() == pytest.approx(ok["time_s"].head(3).tolist(), rel=1e-12)
    assert (got.plans["plan_power_w"] <= budget).all()


ARGS = ["plan", "parallel", "--model", "gpt2", "--hardware", "dgx-h100", "--gpus", "8", "--global-batch", "16",
        "--seq", "1024", "--zero", "0,1"]


def test_cli_energy_objective_run_and_front(capsys, tmp_path, every):
    _, df = every
    assert main([*ARGS, "--objective", "energy", "--tokens", "1e9", "--power-cap", "none,400", "--top", "2",
                 "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    best = df.sort_values(["energy_j", "memory_bytes"], kind="stable").iloc[0]
    assert d["plans"][0]["energy_j"] == pytest.approx(best["energy_j"], rel=1e-12)
    assert d["plans"][0]["run_energy_j"] == pytest.approx(best["run_energy_j"], rel=1e-12)
    png = tmp_path / "front.png"
    assert main([*ARGS, "--energy-front", "--power-cap", "none,400", "--plot", str(png), "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "time-energy front over GPU counts 1, 2, 4, 8 x power caps none,400" in out and png.stat().st_size > 0


@pytest.mark.parametrize("extra, msg", [
    (["--objective", "energi"], "invalid choice: 'energi'"),
    (["--power-cap", "lots"], "--power-cap lots: use watts per GPU"),
    (["--power-cap", "-5"], "--power-cap -5: must be a positive number of watts per GPU"),
    (["--power-cap", "50"], "--power-cap 50: is below the GPU's 75 W idle power"),
    (["--power-budget-kw", "-2"], "--power-budget-kw -2: must be a positive number of kilowatts"),
    (["--power-budget-kw", "nan"], "must be a finite number"),
    (["--power-budget-kw", "0.5"], "--power-budget-kw 0.5: no plan draws that little: the least-power plan "),
    (["--tokens", "0"], "--tokens 0: must be a positive number of tokens"),
    (["--carbon-g-per-kwh", "-1"], "must be a grid intensity >= 0"),
    (["--plot", "x.png"], "--plot draws the time-energy front; add --energy-front"),
])
def test_cli_bad_energy_input_is_one_line(capsys, extra, msg):
    rc = main([*ARGS, *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and msg in err, err
    if "least-power plan" in err:
        least = float(err.split(") draws ")[1].split(" kW")[0])
        assert float(err.split("over by ")[1].split(" kW")[0]) == pytest.approx(least - 0.5, abs=2e-3)
