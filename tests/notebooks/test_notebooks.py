"""Every notebook (jupytext percent .py) runs headless as a script, writes its figures, and
computes the published numbers and closed forms it talks about.

Each notebook runs once per session, in this process (`runpy`, as `__main__`), so the tests can
read the values it computed from its namespace."""
import contextlib
import io
import runpy
import sys

import numpy as np
import pytest
import yaml

from simulator.core.paths import REPO_ROOT
from simulator.core.units import GiB

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
MEASUREMENTS = REPO_ROOT.parent / "shared" / "measurements" / "h100-sxm"
NEEDS_MEASUREMENTS = {"02"}
# figures each notebook must produce (prefix = notebook number)
EXPECTED_FIGURES = {
    "01": {"01_throughput_cost.png", "01_memory.png", "01_roofline.png", "01_batch_sweep.png"},
    "02": {"02_fit_vs_microbench.png", "02_gemm_efficiency.png", "02_validation.png"},
    "03": {"03_placement.png", "03_layer_step_gantt.png", "03_flexgen_comparison.png", "03_host_memory_sweep.png"},
    "04": {"04_weak_scaling.png", "04_plan_breakdown.png", "04_pipeline_1f1b.png", "04_memory_zero_recompute.png"},
    "05": {"05_latency_vs_rate.png", "05_fleet_cost.png", "05_pareto.png"},
    "06": {"06_energy_per_token.png", "06_fleet_dollars_energy.png", "06_training_time_energy.png"},
}


@pytest.fixture(scope="session")
def notebook(tmp_path_factory):
    """run(num) -> (the notebook's globals after it ran as a script, its figure folder)."""
    done = {}

    def run(num: str):
        if num not in done:
            nb = next(p for p in NOTEBOOKS if p.name.startswith(num))
            if num in NEEDS_MEASUREMENTS and not MEASUREMENTS.is_dir():
                pytest.skip(f"notebook {nb.name} needs the shared H100 measurements ({MEASUREMENTS.name})")
            out = tmp_path_factory.mktemp(f"notebook{num}")
            with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
                mp.setenv("ROOFPLAN_NOTEBOOK_OUT", str(out))
                mp.setenv("MPLBACKEND", "Agg")
                mp.chdir(REPO_ROOT)
                mp.setattr(sys, "path", list(sys.path))     # the notebooks add benchmarks/ to it
                done[num] = (runpy.run_path(str(nb), run_name="__main__"), out)
        return done[num]

    return run


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_writes_figures(nb, notebook):
    num = nb.name[:2]
    _, out = notebook(num)
    figs = sorted(out.glob(f"{num}_*.png"))
    assert len(figs) >= 3, f"{nb.name} wrote {[f.name for f in figs]}"
    assert all(f.stat().st_size > 5_000 for f in figs)
    missing = EXPECTED_FIGURES.get(num, set()) - {f.name for f in figs}
    assert not missing, f"{nb.name} did not write {sorted(missing)}"


def test_every_notebook_lists_its_figures():
    assert {nb.name[:2] for nb in NOTEBOOKS} == set(EXPECTED_FIGURES)


def test_notebooks_are_jupytext_percent_scripts():
    assert NOTEBOOKS, "no notebooks found"
    for nb in NOTEBOOKS:
        text = nb.read_text()
        assert "format_name: percent" in text and "# %% [markdown]" in text, nb.name


# ---- 01: Llama-3.1-70B decode on 1-8 H100s / A100s -----------------------------------------------

LLAMA_70B_PARAMS = 70_553_706_496     # HF safetensors total, meta-llama/Llama-3.1-70B


def test_01_what_if_numbers(notebook):
    g, _ = notebook("01")
    assert g["model"].params_total() == LLAMA_70B_PARAMS
    table, mem = g["table"], g["mem"]
    # N = 1 cannot fit: 70.55e9 x 2 B = 141 GB of weights against 80 GiB; two GPUs hold 70.6 GB each
    assert 2 * LLAMA_70B_PARAMS > 80 * GiB > LLAMA_70B_PARAMS
    assert table.loc[table["N"] == 1, "fits"].tolist() == [False, False]
    assert table.loc[table["N"] > 1, "fits"].all()
    # per H100, by hand: weights 2 B x params / N; KV cache of 16 sequences x (2048 cached + 1 new)
    # tokens x 80 layers x (K, V) x 8 KV heads x 128 dims x 2 B, split over N
    for n in (1, 2, 4, 8):
        row = mem.loc[f"H100 x{n}"]
        assert row["weights"] * GiB == pytest.approx(2 * LLAMA_70B_PARAMS / n, rel=1e-12)
        assert row["kv_cache"] * GiB == pytest.approx(16 * 2049 * 80 * 2 * 8 * 128 * 2 / n, rel=1e-12)
    # the text's claim: going from 4 to 8 GPUs buys less than 2x (all-reduces do not shrink)
    h100 = table[table["gpu"] == "h100-sxm"].set_index("N")["step_ms"]
    assert 1 < h100[4] / h100[8] < 2
    # the roofline's ridge: 989.4 TFLOP/s / 3.35 TB/s (H100 SXM, Hopper whitepaper and datasheet)
    assert g["roofs"]["ridge_intensity"] == pytest.approx(989.4 / 3.35, rel=1e-9)


# ---- 02: fitting a kernel profile to the shared H100 microbenchmarks ---------------------------------

def test_02_calibrate_numbers(notebook):
    g, _ = notebook("02")
    # the notebook compares with the raw measurements, read here independently
    raw = yaml.safe_load((MEASUREMENTS / "end_to_end.yaml").read_text())["cases"]
    report = g["report"].set_index("id")
    assert set(report.index) == {c["id"] for c in raw}
    for c in raw:
        assert report.loc[c["id"], "measured_ms"] == pytest.approx(c["time_s"] * 1e3, rel=1e-12)
    # its refit reproduces the raw bf16 GEMM times: 5% mean error, the bound the shipped profile meets
    bf = g["gemm_rows"][g["gemm_rows"]["dtype"] == "bf16"]
    assert len(bf) == 103
    assert np.mean(np.abs(bf["predicted_s"] / bf["time_s"] - 1)) < 0.05
    # CUDA-graph decode (HBM-bound, no host time): the refit's memory curves fit their own
    # microbenchmarks to 1-8% (fit_errors), so the seven measured steps within 5% on average
    dec = report[report.index.str.startswith("decode-")]
    assert len(dec) == 7
    assert np.mean(np.abs(dec["fitted_ms"] / dec["measured_ms"] - 1)) < 0.05


# ---- 03: offload planning on FlexGen's T4 and Fuyou's RTX 4090 ---------------------------------------

def test_03_offload_numbers(notebook):
    g, _ = notebook("03")
    cmp = g["cmp"]
    # FlexGen (Sheng et al., ICML 2023), Table 2: 7.32 and 0.69 tokens/s measured on the T4 box
    assert cmp.loc["opt-30b", "published"] == 7.32 and cmp.loc["opt-175b", "published"] == 0.69
    # our model on FlexGen's own policy within 25% (tests/planners/test_offload.py)
    for name in ("opt-30b", "opt-175b"):
        assert cmp.loc[name, "ours (FlexGen's policy)"] == pytest.approx(cmp.loc[name, "published"], rel=0.25)
    # OPT-175B's fp16 weights, 174.6e9 x 2 B = 349 GB, exceed the T4's 16 GiB + the 208 GiB host cap:
    # at least 1 - 224 GiB / 349 GB of them on the SSD
    opt175 = g["plans"]["opt-175b"].placement["weights"]
    assert opt175["nvme"] >= 1 - (16 + 208) * GiB / (174_604_468_224 * 2)
    assert sum(opt175.values()) == pytest.approx(1.0)
    # Fuyou (Liao et al. 2024, abstract): 156 and 45 TFLOP/s; the plan keeps every Adam state off
    # the 24 GB GPU: 12.85e9 x 12 B = 154 GB
    ft = g["ft_table"]
    assert ft["published"].tolist() == [156.0, 45.0]
    assert g["ft"]["Fuyou-like (CPU Adam overlapped)"][0].placement["optimizer_states"]["gpu"] < 0.01
    # more host memory is never slower, on every curve of the sweep
    for case, s in g["sweep"].groupby("case"):
        v = s.sort_values("host_GiB")["value"].to_numpy()
        assert (np.diff(v) >= -1e-9 * v[:-1]).all(), case


# ---- 04: parallelism planning ------------------------------------------------------------------------

def test_04_parallelism_numbers(notebook):
    g, _ = notebook("04")
    # Megatron-LM (Narayanan et al. 2021) Table 1's parameter column, to its printed 0.1 B
    assert [round(p, 1) for p in g["weak"]["params_B"]] == [1.7, 3.6, 7.5, 18.4, 39.1, 76.1, 145.6, 310.1,
                                                            529.6, 1008.0]
    # 1F1B with 4 stages x 8 micro-batches: bubble (p - 1) / (m + p - 1) = 3 / 11
    tl, span = g["tl"], g["span"]
    assert 1 - tl["duration_s"].sum() / 4 / span == pytest.approx(3 / 11, rel=1e-12)
    # Llama-3.1-70B, tp 8 x dp 16, Megatron's mixed precision (ZeRO, Rajbhandari et al. 2020):
    # bf16 weights 2 B, fp32 main_grad 4 B, fp32 master + Adam 12 B per parameter, over tp = 8;
    # ZeRO 1 shards the 12 B over dp = 16 too, ZeRO 2 also the gradients, ZeRO 3 also the weights
    # (plus two gathered layers of 855,654,400 parameters / tp in flight)
    P, layer = LLAMA_70B_PARAMS, 855_654_400
    parts = g["parts"]
    for zero in (0, 1, 2, 3):
        for rc in ("none", "selective", "full"):
            row = parts.loc[f"ZeRO {zero}, {rc}"] * GiB
            weights = 2 * P / 128 + 2 * 2 * layer / 8 if zero == 3 else 2 * P / 8
            assert row["weights"] == pytest.approx(weights, rel=1e-9)
            assert row["gradients"] == pytest.approx(4 * P / (128 if zero >= 2 else 8), rel=1e-9)
            assert row["optimizer"] == pytest.approx(12 * P / (128 if zero >= 1 else 8), rel=1e-9)
    # so without ZeRO the 18 B per parameter / 8 = 159 GB cannot fit an 80 GB H100
    mem = g["mem"]
    assert not mem.loc[mem["zero"] == 0, "fits"].any() and 18 * P / 8 > 80 * GiB


# ---- 05: fleet planning --------------------------------------------------------------------------------

def test_05_fleet_numbers(notebook):
    g, _ = notebook("05")
    # ShareGPT as quoted by vLLM (Kwon et al. 2023): 161 tokens in, 338 out (bucketed: 5%)
    mix = g["chat"].mix()
    assert mix.mean(mix.in_tokens) == pytest.approx(161, rel=0.05)
    assert mix.mean(mix.out_tokens) == pytest.approx(338, rel=0.05)
    # KV budget by hand, vLLM's rule: 0.9 of device memory, less the weights (8,030,261,248 x 2 B)
    # and the 290 MiB workspace, at 32 layers x (K, V) x 8 KV heads x 128 dims x 2 B = 131,072 B
    # per token; one decode step's activations (a few MB) come off too
    # (device memory from the datasheets: 80, 80, 48, 24 and 24 GB, in GiB as nvidia-smi reports)
    for gpu, mem_gib in (("h100-sxm", 80), ("a100-sxm-80gb", 80), ("l40s", 48), ("a10g", 24), ("l4", 24)):
        hand = (0.9 * mem_gib * GiB - 2 * 8_030_261_248 - 290 * 2**20) / 131_072
        assert g["tables"][gpu].kv_budget_tokens == pytest.approx(hand, abs=16 * 2**20 / 131_072), gpu
    # every fleet meets the SLOs and no mix costs more than the best single GPU type
    for name, res in g["results"].items():
        assert res.slo_attainment == 1.0
        assert res.plan.cost_usd_per_h <= min(res.single_type_cost_usd_per_h.values()) * (1 + 1e-9)
    # DistServe's measured goodput by hand from its attainment curve: 0.907 at 6.0 req/s, 0.747 at
    # 7.5; 90% is crossed at 6.0625 req/s, over its 3 GPUs
    runs = {x["rate"]: x["attainment"][0] for x in g["res"]["runs"] if x["system"] == "distserve-c21d11"}
    cross = 6.0 + (runs[6.0] - 0.9) / (runs[6.0] - runs[7.5]) * 1.5
    assert cross == pytest.approx(6.0625, abs=1e-9)
    assert g["res"]["goodput_per_gpu"]["distserve-c21d11"][0] == pytest.approx(cross / 3, rel=1e-9)
    # section 4 (issue 16): int4 weights put Llama-3.1-70B on one H100 instead of four at TP 4, and
    # the simulated check re-sizes the small-GPU fleet until every option meets its SLOs there
    h100 = 2.99    # $/GPU-h, lambda-8x-h100-sxm (hardware_specs/systems)
    assert g["quant"]["bf16"].plan.cost_usd_per_h == pytest.approx(4 * h100, abs=0.01)
    assert g["quant"]["bf16 or int4"].plan.cost_usd_per_h == pytest.approx(h100, abs=0.01)
    off, on = g["checked"][False], g["checked"][True]
    assert any(not x["meets"] for x in off.simulated) and all(x["meets"] for x in on.simulated)
    assert on.plan.cost_usd_per_h > off.plan.cost_usd_per_h



# ---- 06: energy, power and carbon ----------------------------------------------------------------------

def test_06_energy_numbers(notebook):
    import math

    from simulator.core.models import load_model
    from simulator.core.predict import predict
    from simulator.core.specs import load_hardware
    from simulator.core.workload import Job

    g, _ = notebook("06")
    # the vectorised curve is predict()'s, point for point
    assert g["check_jtok"][0] == pytest.approx(g["check_jtok"][1], rel=1e-12)
    # J/token falls steeply with the batch, then flattens (ML.ENERGY's shape): batch 1 -> 8 by
    # about 8x (the weights are read once per step either way), 64 -> 256 by under 2.5x
    for gpu, df in g["curves"].items():
        j = df.set_index("batch")["j_per_token"]
        assert np.all(np.diff(j.to_numpy()) < 0), gpu
        assert j[1] / j[8] > 6 and j[64] / j[256] < 2.5, gpu
    # the A10G (300 W, 600 GB/s) spends about twice the H100's and the L4's joules per token
    c = {gpu: df.set_index("batch")["j_per_token"] for gpu, df in g["curves"].items()}
    assert 2.0 < c["a10g"][8] / c["h100-sxm"][8] < 2.6 and 2.0 < c["a10g"][8] / c["l4"][8] < 2.6
    # a 560 W cap slows the compute-bound prefill by x1.2; the memory-bound decode (474 W) only
    # meets a cap at 450 W, where it keeps its time and spends fewer joules
    caps = g["caps"].set_index(["step", "cap_w"])
    assert caps.loc[("prefill 4096", 560), "slowdown"] == pytest.approx(1.21, abs=0.01)
    assert caps.loc[("decode b64", 560), "j_per_token"] == caps.loc[("decode b64", 700), "j_per_token"]
    assert caps.loc[("decode b64", 450), "slowdown"] == pytest.approx(1.0, abs=1e-12)
    assert caps.loc[("decode b64", 450), "j_per_token"] < caps.loc[("decode b64", 700), "j_per_token"]
    assert caps.loc[("prefill 4096", 450), "slowdown"] == pytest.approx(1.47, abs=0.01)
    assert math.isnan(caps.loc[("decode b64", 400), "time_ms"])      # refused: 420 W at half clock
    # the documented fleet case: the least-energy fleet is not the cheapest
    usd, energy = g["fleets"]["usd"], g["fleets"]["energy"]
    assert g["describe"](usd) == "1 x l4 tp1 prefill, 1 x a10g tp2 decode"
    assert g["describe"](energy) == "1 x l4 tp1 prefill, 1 x l4 tp4 decode"
    assert energy.power_w < 0.55 * usd.power_w and 1.2 < energy.plan.cost_usd_per_h / usd.plan.cost_usd_per_h < 1.4
    front = g["front"]
    assert np.all(np.diff(front["cost_usd_per_h"]) > 0) and np.all(np.diff(front["power_w"]) < 0)
    assert front["power_w"].iloc[-1] == pytest.approx(energy.power_w, rel=1e-9)
    # the training front: GPU counts and caps both trade time for energy; its first point is
    # predict() of that plan, times the steps of a trillion tokens
    tf = g["tf"]
    assert tf["gpus"].nunique() >= 3 and tf["power_cap_w"].isna().any() and (tf["power_cap_w"] == 560).any()
    assert np.all(np.diff(tf["run_time_s"]) > 0) and np.all(np.diff(tf["run_energy_j"]) < 0)
    r = tf.iloc[0]
    job = Job("train", batch=int(r["n_micro"] * r["micro_batch"]), seq=4096, tp=int(r["tp"]), pp=int(r["pp"]),
              dp=int(r["dp"]), vpp=int(r["vpp"]), micro_batch=int(r["micro_batch"]), zero=int(r["zero"]),
              recompute=r["recompute"], sp=bool(r["sp"]))
    p = predict(load_model("llama-3.1-70b"), load_hardware("dgx-h100"), job, g["megatron"], with_ops=False)
    steps = math.ceil(1e12 / (1024 * 4096))
    assert r["run_energy_j"] == pytest.approx(steps * p.energy.energy_j, rel=1e-12)
