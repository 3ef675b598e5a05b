"""Sweep rows carry predict()'s power, energy and carbon (issue 15, phase B): the vectorised path
(predict_many) and the scalar one (training) read the same simulator.core.power functions, caps
included, and the energy reductions (--sort energy_j_per_token, --reduce pareto:energy) are exact
under merging shards."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from simulator import sweep as sw
from simulator.cli.main import main
from simulator.core.errors import RoofplanError
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile, load_kernel_profile
from simulator.core.specs import load_hardware
from simulator.core.workload import Job
from simulator.report.plots import pareto_front

REL = 1e-9
ENERGY = ("power_w", "energy_j", "energy_j_per_token", "co2_g_per_1m_tokens")


def _rows_equal_predict(grid: dict) -> tuple[int, int]:
    """Every row of the grid's groups against predict() of its configuration: time, energy, carbon,
    or predict()'s own error text. Returns (rows with a prediction, rows refused)."""
    n = refused = 0
    for g in sw.parse_grid(grid):
        cols = sw.sweep_group(g)
        model, system = load_model(g.model), load_hardware(g.hardware)
        ex, kp = load_executor_profile(g.executor), load_kernel_profile(system.gpu.name)
        for i in range(len(cols["batch"])):
            job = Job(**{**g.job.__dict__, "batch": int(cols["batch"][i]), "seq": int(cols["seq"][i]),
                         "context": int(cols["context"][i])})
            try:
                p = predict(model, system, job, ex, kp, check_memory=False, with_ops=False,
                            carbon_g_per_kwh=g.carbon_g_per_kwh)
            except RoofplanError as e:
                assert cols["error"][i] == str(e), (job, cols["error"][i])
                assert np.isnan(cols["energy_j"][i])
                refused += 1
                continue
            assert cols["error"][i] == "", (job, cols["error"][i])
            assert cols["time_s"][i] == pytest.approx(p.time_s, rel=REL)
            for k in ENERGY:
                assert cols[k][i] == pytest.approx(getattr(p.energy, k), rel=REL), (job, k)
            n += 1
    return n, refused


def test_inference_rows_equal_predict_with_caps_and_carbon():
    """Prefill and decode (vectorised), 1 and 8 GPUs of a DGX (host power), with no cap, a cap that
    slows prefills and one that some decodes cannot meet (those rows hold predict()'s refusal)."""
    n, refused = _rows_equal_predict({"hardware": ["h100-sxm", "dgx-h100"], "model": "llama-3.1-8b",
                                      "phase": ["prefill", "decode"], "tp": [1, 8], "batch": [1, 16, 128],
                                      "seq": [256, 4096], "context": [512, 8192], "power_cap_w": [None, 560, 450],
                                      "carbon_g_per_kwh": [481, 30]})
    assert n >= 100 and refused >= 10, (n, refused)


def test_training_rows_equal_predict():
    n, refused = _rows_equal_predict({"hardware": "dgx-h100", "model": "llama-3.2-1b", "phase": "train",
                                      "tp": [1, 2], "dp": [1, 4], "batch": [4], "seq": [1024],
                                      "power_cap_w": [None, 500]})
    assert n == 8 and refused == 0


def test_energy_reductions_are_exact_under_merging():
    """The J/token front and the energy ranking of shards merged = those of all rows at once."""
    grid = {"hardware": ["h100-sxm", "a100-sxm-80gb", "l40s"], "model": "llama-3.1-8b", "phase": "decode",
            "tp": [1, 2], "batch": [1, 8, 64, 256], "context": [512, 4096], "power_cap_w": [None, 600]}
    groups = sw.parse_grid(grid)
    red = sw.Reductions(top=5, sort="energy_j_per_token", energy_pareto=True)
    shards = sw.shard_groups(groups, 7)
    assert len(shards) > 3
    merged = sw.Partial()
    frames = []
    for i, sh in enumerate(shards):
        df = sw.run_shard(sh)
        frames.append(df)
        merged = merged.merge(sw.reduce_shard(df, red, i), red)
    res = sw.summarise(merged, red)
    whole = pd.concat(frames, ignore_index=True)
    ok = whole[(whole["error"] == "") & whole["fits"]]
    assert res["top"]["energy_j_per_token"].tolist() == pytest.approx(
        ok["energy_j_per_token"].nsmallest(5).tolist(), rel=0)
    assert res["energy_pareto_x"] == "usd_per_1m_tokens"
    idx = pareto_front(ok["usd_per_1m_tokens"].to_numpy(), ok["energy_j_per_token"].to_numpy(), True, False)
    want = ok.iloc[idx][["usd_per_1m_tokens", "energy_j_per_token"]].to_numpy()
    got = res["energy_pareto"][["usd_per_1m_tokens", "energy_j_per_token"]].to_numpy()
    assert np.array_equal(got, want)
    # non-dominated: along the front dollars rise and J/token falls
    assert np.all(np.diff(got[:, 0]) > 0) and np.all(np.diff(got[:, 1]) < 0)


def test_cli_energy_front_json_and_plot(tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"hardware": ["h100-sxm", "a100-sxm-80gb"], "model": "llama-3.1-8b",
                                    "phase": "decode", "batch": [16, 128], "context": [1024]}))
    png = tmp_path / "front.png"
    assert main(["sweep", str(grid), "-o", str(tmp_path / "o.csv"), "--workers", "1", "--quiet", "--format", "json",
                 "--reduce", "pareto:energy", "--sort", "co2_g_per_1m_tokens", "--plot", str(png)]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["sort"] == "co2_g_per_1m_tokens" and obj["energy_pareto"]["x"] == "usd_per_1m_tokens"
    assert obj["energy_pareto"]["rows"] and png.stat().st_size > 0
    co2 = [r["co2_g_per_1m_tokens"] for r in obj["top"]]
    assert co2 == sorted(co2)
    df = pd.read_csv(tmp_path / "o.csv")
    assert set(ENERGY) <= set(df.columns) and df["carbon_g_per_kwh"].eq(481).all()


@pytest.mark.parametrize("field, value, msg", [
    ("power_cap_w", -5, "power_cap_w"), ("power_cap_w", ".nan", "power_cap_w"), ("power_cap_w", "lots", "power_cap_w"),
    ("carbon_g_per_kwh", -1, "carbon_g_per_kwh"), ("power_cap_wat", 500, "did you mean"),
])
def test_bad_energy_grid_fields_are_one_line(tmp_path, capsys, field, value, msg):
    grid = tmp_path / "g.yaml"
    text = yaml.safe_dump({"hardware": "h100-sxm", "model": "llama-3.1-8b"}) + f"{field}: {value}\n"
    grid.write_text(text)
    rc = main(["sweep", str(grid), "-o", str(tmp_path / "o.csv"), "--quiet"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 2 and len(err) == 1 and msg in err[0], err


def test_a_cap_below_idle_is_each_rows_error():
    (g,) = sw.parse_grid({"hardware": "h100-sxm", "model": "llama-3.1-8b", "batch": [1, 2], "context": [512],
                          "power_cap_w": 50})
    cols = sw.sweep_group(g)
    assert all("below the GPU's 75 W idle power" in e for e in cols["error"])
