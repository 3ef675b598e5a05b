# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. Energy, power and carbon beside time and dollars
#
# Every roofplan prediction carries what the step costs in watts, joules and grams of CO2e
# (`simulator/core/power.py`, docs/energy.md): an energy roofline per GPU over its idle floor,
# fitted to ML.ENERGY's measured H100 power and Splitwise's power-capped prefills. `predict`,
# the vectorised sweeps, the fleet planner and the parallelism planner all read that one model.
# This notebook:
#
# 1. draws energy per token against the decode batch on four GPUs (the vectorised path,
#    `predict_many`, equal to `predict()` per point), and what a power cap does to a
#    compute-bound prefill and a memory-bound decode,
# 2. plans serving fleets by dollars and by energy and plots the **dollars-energy Pareto front**:
#    the least-energy fleet is not the cheapest one,
# 3. traces the time-energy front of a training run over GPU counts and power caps (Zeus's
#    trade-off, with the GPU count in place of the batch size).
#
# Run it as a script (`python notebooks/06_energy.py`) or open it in Jupyter (jupytext). Figures
# go to `notebooks/out/`.

# %%
from dataclasses import replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from planners.fleet import candidate_options, dollars_energy_front, plan_fleet
from planners.parallel import search, with_energy
from simulator.core.errors import RoofplanError
from simulator.core.models import load_model
from simulator.core.predict import predict, predict_many
from simulator.core.profiles import load_executor_profile
from simulator.core.specs import load_hardware
from simulator.core.workload import Job
from simulator.report import plots
from simulator.serving.workload import load_serving_workload

OUT = plots.notebook_out_dir()

# %% [markdown]
# ## 1. One step: energy per token against the batch, and a power cap
#
# Decode is memory-bound: each step reads all the weights once, whatever the batch, so the joules
# per token fall steeply with the batch and then flatten once the KV cache and the FLOPs grow
# (ML.ENERGY measured the same shape on H100). The whole curve is one `predict_many` call per GPU;
# one point is checked against `predict()`.

# %%
model = load_model("llama-3.1-8b")
BATCHES = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256])
CONTEXT = 512
STEP_GPUS = ("h100-sxm", "a100-sxm-80gb", "l4", "a10g")
curves = {}
for gpu in STEP_GPUS:
    many = predict_many(model, load_hardware(gpu), Job("decode"), BATCHES, context=CONTEXT)
    curves[gpu] = pd.DataFrame({"batch": BATCHES, "time_s": many.time_s, "fits": many.fits,
                                "power_w": many.energy["power_w"], "j_per_token": many.energy["energy_j_per_token"]})
one = predict(model, load_hardware("h100-sxm"), Job("decode", batch=64, context=CONTEXT))
check_jtok = (curves["h100-sxm"].set_index("batch").loc[64, "j_per_token"], one.energy.energy_j_per_token)

fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
for gpu, df in curves.items():
    d = df[df["fits"]]
    a1.plot(d["batch"], d["j_per_token"], "o-", ms=3, label=gpu)
    a2.plot(d["batch"], d["power_w"], "o-", ms=3, label=gpu)
a1.set_xscale("log", base=2)
a1.set_yscale("log")
a1.set_xlabel("decode batch")
a1.set_ylabel("J per token (GPUs)")
a1.set_title(f"{model.name} decode, {CONTEXT} cached tokens")
a2.set_xscale("log", base=2)
a2.set_xlabel("decode batch")
a2.set_ylabel("board power (W per GPU)")
a2.set_title("power: from the idle floor towards the TDP")
for ax in (a1, a2):
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
fig.savefig(OUT / "06_energy_per_token.png", dpi=110, bbox_inches="tight")
plt.close(fig)
print(pd.concat({g: d.set_index("batch")["j_per_token"] for g, d in curves.items()}, axis=1).round(3).to_string())

# %% [markdown]
# A power cap lowers the SM clock until the board fits it. A compute-bound prefill slows with the
# clock; a memory-bound decode keeps its time (the HBM clock is not capped) and only sheds the
# energy its SM clock was spending: the asymmetry POLCA and Splitwise measured.

# %%
h100 = load_hardware("h100-sxm")
cap_rows = []
for phase, job in (("prefill 4096", Job("prefill", batch=1, seq=4096)), ("decode b64", Job("decode", batch=64, context=CONTEXT))):
    for cap in (None, 630, 560, 450, 400):
        try:
            p = predict(model, h100, replace(job, power_cap_w=cap))
        except RoofplanError as e:      # a cap the decode cannot reach: the model refuses it
            cap_rows.append({"step": phase, "cap_w": cap or 700, "time_ms": np.nan, "j_per_token": np.nan,
                             "note": str(e)[:60]})
            continue
        cap_rows.append({"step": phase, "cap_w": cap or 700, "time_ms": p.time_s * 1e3,
                         "j_per_token": p.energy.energy_j_per_token, "note": ""})
caps = pd.DataFrame(cap_rows)
base = caps.groupby("step")["time_ms"].transform("first")
caps["slowdown"] = caps["time_ms"] / base
print(caps.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

# %% [markdown]
# ## 2. Serving fleets: dollars against energy
#
# `plan fleet` sizes a fleet of GPU types for a workload within TTFT/TPOT SLOs (Mélange's
# integer program over the serving model of notebook 5). Each instance draws its floor (idle for
# a prefill instance; a batch-1 decode step for one that decodes, since continuous batching keeps
# stepping while it holds a sequence) plus its share of what the serving model predicts at full
# load. `--objective energy` minimises the fleet's power; the front lists the cheapest fleet under
# each power budget between the two.
#
# Llama-3.1-8B, ShareGPT-like chat at 8 req/s, p90 TTFT 1 s and TPOT 40 ms, on H100, A100, L4
# and A10G: the cheapest fleet decodes on two A10Gs, which sit at their 300 W TDP whatever the
# batch; four L4s (72 W each, together twice the A10G pair's memory bandwidth per watt) decode the
# same load for about half the power.

# %%
FLEET_GPUS = ["h100-sxm", "a100-sxm-80gb", "l4", "a10g"]
SLO = (1.0, 0.040)
chat = replace(load_serving_workload("chat"), rate_rps=8)
cands = candidate_options(model, FLEET_GPUS)
fleets = {obj: plan_fleet(model, chat, *SLO, FLEET_GPUS, candidates=cands, objective=obj)[0] for obj in ("usd", "energy")}
front = pd.DataFrame(dollars_energy_front(cands, chat, *SLO, fleets["usd"]))


def describe(res) -> str:
    return ", ".join(f"{int(n)} x {o.label}" for o, n in zip(res.plan.options, res.plan.count) if n)


summary = pd.DataFrame([{"objective": obj, "fleet": describe(r), "usd_per_h": r.plan.cost_usd_per_h,
                         "kw": r.power_w / 1e3, "j_per_output_token": r.energy_j_per_token,
                         "g_co2_per_1m_tokens": r.co2_g_per_1m_tokens} for obj, r in fleets.items()])
print(summary.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
print(front[["cost_usd_per_h", "power_w", "energy_j_per_token", "fleet"]].to_string(index=False,
                                                                                   float_format=lambda v: f"{v:.4g}"))

fig, ax = plt.subplots(figsize=(7.5, 4.5))
plots.dollars_energy_plot(front["cost_usd_per_h"].to_numpy(), front["power_w"].to_numpy() / 1e3, front["fleet"].tolist(),
                          None, xlabel="fleet cost ($/h, lower is better)", ylabel="fleet power (kW, lower is better)",
                          title=f"{model.name}, chat at {chat.rate_rps:g} req/s: the dollars-energy front",
                          marks={"cheapest": 0, "least power": len(front) - 1}, ax=ax)
plots.save_figure(fig, OUT / "06_fleet_dollars_energy.png")

# %% [markdown]
# ## 3. Training: run time against energy over GPU counts and power caps
#
# A trillion tokens of Llama-3.1-70B on DGX H100 nodes. `plan parallel --energy-front` scores
# every parallel plan on 512 GPUs and each halving, uncapped and at 560 W per GPU, and keeps the
# plans no other beats on both run time and energy. It predicts only the plans a lower bound on
# their energy cannot rule out, so the front is exact. Capping saves a few percent of energy for a
# fifth more time; fewer GPUs save a little more (less gradient reduction, a smaller pipeline
# bubble per micro-batch) for proportionally more time.

# %%
m70 = load_model("llama-3.1-70b")
dgx = load_hardware("dgx-h100")
megatron = load_executor_profile("megatron")
GB, SEQ, TOKENS = 1024, 4096, 1e12
plans = search(m70, dgx, 512, GB, SEQ, "cost", megatron, zeros=(0, 1))
train_front = with_energy(plans, m70, dgx, SEQ, GB, megatron, caps=(None, 560.0), tokens=TOKENS, front=True)
tf = train_front.plans.assign(days=lambda d: d["run_time_s"] / 86400, mwh=lambda d: d["run_energy_j"] / 3.6e9)
print(tf[["gpus", "tp", "pp", "dp", "power_cap_w", "time_s", "days", "mwh"]].to_string(index=False,
                                                                                        float_format=lambda v: f"{v:.4g}"))
print(f"{train_front.predicted} of {train_front.candidates} plans x caps went through predict()")

fig, ax = plt.subplots(figsize=(7, 4.5))
labels = [f"{int(r.gpus)} GPUs" + (f", {r.power_cap_w:g} W" if r.power_cap_w == r.power_cap_w else "")
          for r in tf.itertuples()]
plots.pareto_plot(tf["days"].to_numpy(), tf["mwh"].to_numpy(), labels, None, xlabel="run time (days)",
                  ylabel="run energy (MWh)", minimize_x=True, maximize_y=False,
                  title=f"{m70.name}, {TOKENS:.0e} tokens on DGX H100: time vs energy", ax=ax)
plots.save_figure(fig, OUT / "06_training_time_energy.png")

# %% [markdown]
# ## Take-aways
#
# * Energy per token falls steeply with the batch, then flattens; a cap is nearly free for a
#   memory-bound decode and costs a compute-bound prefill time in proportion to the clock.
# * The least-energy serving fleet is not the cheapest: cheap, older boards that run at their TDP
#   (A10G) spend twice the joules per token of low-power ones (L4) on the same work.
# * For training, power caps and fewer GPUs each buy a few percent of energy with time.
# * From the shell: `roofplan plan fleet ... --objective energy --energy-front --plot front.png`,
#   `roofplan plan parallel ... --tokens 1e12 --energy-front --power-cap none,560`,
#   `roofplan sweep GRID.yaml --reduce pareto:energy --plot front.png`.

# %%
print("figures:", ", ".join(sorted(p.name for p in OUT.glob("06_*.png"))))
