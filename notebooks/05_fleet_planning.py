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
# # 5. Fleet planning: which GPUs to rent for an online service
#
# An online LLM service is judged by two latencies per request:
#
# * **TTFT** (time to first token): queueing + prefill of the prompt,
# * **TPOT** (time per output token): one decode step of the running batch, stretched by the
#   prefills that share the GPU,
#
# usually as a 90th percentile under a service-level objective (SLO), for a given request rate.
# Cheap GPUs (L4, A10G) serve short requests well at low load; expensive ones (H100) carry high
# load and long prompts. Mélange (Griggs et al. 2024) showed that *mixing* GPU types can be
# cheaper than any single type.
#
# `simulator/serving/simulate.py` turns the core step model into TTFT / TPOT at a request rate (closed
# forms from queueing theory, and a discrete-event simulation to check them);
# `planners/fleet.py` (`roofplan plan fleet`) solves Mélange's integer program for the cheapest
# fleet that meets the SLOs. This notebook:
#
# 1. draws TTFT and TPOT against the arrival rate for Llama-3.1-8B on five GPUs, closed form vs
#    simulation,
# 2. plans fleets for a chat and a long-document workload, and compares them with the best
#    single GPU type,
# 3. traces the cost-vs-latency Pareto front as the SLOs tighten or loosen,
# 4. lets the planner choose quantized weights and serving engines, and checks a plan with the
#    discrete-event simulation.
#
# Run it as a script (`python notebooks/05_fleet_planning.py`) or open it in Jupyter (jupytext).
# Figures go to `notebooks/out/`.

# %%
import math
from dataclasses import replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from planners.fleet import candidate_options, plan_fleet, solve_fleet, throughput_matrix
from simulator.report import plots
from simulator.core.errors import RoofplanError
from simulator.core.models import load_model
from simulator.core.pricing import cheapest_price_per_gpu_h
from simulator.serving.simulate import aggregated, max_rate, simulate, step_tables
from simulator.serving.workload import load_serving_workload
from simulator.core.specs import load_gpu, system_from_gpu

OUT = plots.notebook_out_dir()

model = load_model("llama-3.1-8b")
chat = load_serving_workload("chat")
longdoc = load_serving_workload("long-document")
for wl in (chat, longdoc):
    mix = wl.mix()
    print(f"{wl.name}: {len(wl.buckets)} request-size buckets, mean {mix.mean(mix.in_tokens):.0f} tokens in, "
          f"{mix.mean(mix.out_tokens):.0f} out ({wl.source.split('(')[0].strip()})")

# %% [markdown]
# ## 1. One GPU, rising load: TTFT and TPOT vs arrival rate
#
# `step_tables` predicts prefill and decode step times on a grid with the core model and
# interpolates; the KV-cache budget is vLLM's (90% of the GPU memory minus weights and
# workspace). `aggregated()` is the closed form for one instance serving both phases with
# continuous batching and chunked prefill: Pollaczek-Khinchine (M/G/1) queueing for TTFT, and
# Little's law for the decode batch. `simulate()` runs the same instance request by request
# (Poisson arrivals, fixed seed) as a check.

# %%
GPUS = ["h100-sxm", "a100-sxm-80gb", "l40s", "a10g", "l4"]
tables = {g: step_tables(model, system_from_gpu(load_gpu(g), 1), tp=1) for g in GPUS}
mix = chat.mix()
SLO_TTFT_S, SLO_TPOT_S = 1.0, 0.040
curve_rows, sim_rows = [], []
for g, tb in tables.items():
    price, _ = cheapest_price_per_gpu_h(g)
    cap = max_rate(lambda r, tb=tb: aggregated(tb, mix, r), SLO_TTFT_S, SLO_TPOT_S)
    print(f"{g:14s} KV cache {tb.kv_budget_tokens / 1e3:6.0f} k tokens, ${price:.2f}/h; chat within "
          f"P90 TTFT {SLO_TTFT_S:g} s / TPOT {SLO_TPOT_S * 1e3:g} ms: {cap:5.2f} req/s "
          f"({cap / price if cap else 0:.2f} req/s per $/h)")
    for r in np.geomspace(0.25, 40, 28):
        e = aggregated(tb, mix, r)
        if not e.stable:
            print(f"{'':14s} unstable from {r:.1f} req/s: {e.reason}")
            break
        curve_rows.append({"gpu": g, "rate": r, "ttft_p90_ms": e.ttft_p90_s * 1e3, "tpot_mean_ms": e.tpot_mean_s * 1e3})
    stable = [r for r in (0.5, 1, 2, 4, 8, 16) if aggregated(tb, mix, r).stable]
    for r in stable[-3:]:
        s = simulate(tb, mix, r, n_requests=400, seed=0)
        sim_rows.append({"gpu": g, "rate": r, "ttft_p90_ms": s.percentile("ttft_s", 90) * 1e3,
                         "tpot_mean_ms": float(np.nanmean(s.tpot_s)) * 1e3})
curves, sims = pd.DataFrame(curve_rows), pd.DataFrame(sim_rows)

check = sims.merge(pd.DataFrame([{"gpu": g, "rate": r, **{f"{k}_closed": v for k, v in
                                   zip(("ttft_p90_ms", "tpot_mean_ms"),
                                       (aggregated(tables[g], mix, r).ttft_p90_s * 1e3,
                                        aggregated(tables[g], mix, r).tpot_mean_s * 1e3))}}
                                  for g, r in zip(sims["gpu"], sims["rate"])]), on=["gpu", "rate"])
print(check.round(1).to_string(index=False))

fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
for k, g in enumerate(GPUS):
    c, s = curves[curves["gpu"] == g], sims[sims["gpu"] == g]
    a1.plot(c["rate"], c["ttft_p90_ms"], "-", color=f"C{k}", label=g)
    a1.plot(s["rate"], s["ttft_p90_ms"], "o", color=f"C{k}", ms=5)
    a2.plot(c["rate"], c["tpot_mean_ms"], "-", color=f"C{k}", label=g)
    a2.plot(s["rate"], s["tpot_mean_ms"], "o", color=f"C{k}", ms=5)
a1.axhline(SLO_TTFT_S * 1e3, color="k", ls="--", lw=1, label="SLO")
a2.axhline(SLO_TPOT_S * 1e3, color="k", ls="--", lw=1, label="SLO")
for ax, ylabel in ((a1, "P90 TTFT (ms)"), (a2, "mean TPOT (ms)")):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (requests/s)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
fig.suptitle(f"{model.name}, chat workload, one GPU each: closed form (lines) vs simulate() (dots)")
fig.savefig(OUT / "05_latency_vs_rate.png", dpi=110, bbox_inches="tight")
plt.close(fig)

# %% [markdown]
# Each curve ends where the GPU saturates: either prefill alone needs the whole GPU, or the
# decode batch Little's law asks for no longer fits in the KV cache (the 24 GB L4 and A10G hold
# only ~100 chat sequences next to 16 GB of weights). The L4 cannot meet a 40 ms TPOT at any
# rate: its decode step alone takes ~60 ms. The simulation agrees with the closed form within
# about 20% at low and moderate load. Near saturation they part: on the large GPUs the closed
# form is conservative (A100 at 16 req/s: P90 TTFT ~540 ms closed form vs ~170 ms simulated,
# because the chunked-prefill scheduler interleaves prompts that the M/G/1 model queues behind
# whole prefills), on the A10G it is somewhat optimistic; 400 simulated requests also leave the
# simulated P90 noisy.

# %% [markdown]
# ## 2. The cheapest fleet for a workload
#
# `plan_fleet` profiles every option (GPU type x role: *aggregated* serves both phases,
# *prefill* / *decode* are disaggregated pools as in DistServe) with the serving model: for each
# request-size bucket, the highest rate one instance sustains within the SLOs. Then an integer
# program picks how many instances of each option to rent and which buckets they serve, at the
# lowest $/h. Prices are the cheapest on-demand instance per GPU in `hardware_specs/systems/`.
#
# Two workloads: **chat** at 64 req/s with P90 TTFT 1 s / TPOT 40 ms, and **long-document**
# summarisation (~6400-token prompts) at 4 req/s with P90 TTFT 2 s / TPOT 40 ms.

# %%
FLEET_GPUS = ["h100-sxm", "a100-sxm-80gb", "l4", "a10g"]
cands = candidate_options(model, FLEET_GPUS, tps=(1,))
CASES = {"chat": (replace(chat, rate_rps=64), 1.0, 0.040), "long-document": (replace(longdoc, rate_rps=4), 2.0, 0.040)}
results, tput_at_slo = {}, {}
for name, (wl, ttft, tpot) in CASES.items():
    res, _, tput_at_slo[name] = plan_fleet(model, wl, ttft, tpot, FLEET_GPUS, tps=(1,), candidates=cands)
    results[name] = res
    plan = res.plan
    pred = {p["option"]: p for p in res.predicted}
    alloc = pd.DataFrame([{"gpu": o.gpu, "role": o.role, "instances": int(n), "usd_per_h": o.price_usd_per_h * n,
                           "utilisation": u, "req_per_s": pred[o.label]["rate_rps"],
                           "ttft_p90_ms": pred[o.label]["ttft_p_ms"] if o.role != "decode" else math.nan,
                           "tpot_p90_ms": pred[o.label]["tpot_p_ms"] if o.role != "prefill" else math.nan}
                          for o, n, u in zip(plan.options, plan.count, plan.utilisation) if n])
    print(f"\n{name} at {wl.rate_rps:g} req/s, SLO P90 TTFT {ttft * 1e3:g} ms / TPOT {tpot * 1e3:g} ms: "
          f"${plan.cost_usd_per_h:.2f}/h, predicted SLO attainment {res.slo_attainment:.0%} "
          f"(solver {plan.report.solver} {plan.report.status} in {plan.report.time_s:.2f} s)")
    print(alloc.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    singles = {g: c for g, c in res.single_type_cost_usd_per_h.items()}
    best_g = min(singles, key=singles.get)
    print("single type $/h: " + ", ".join(f"{g} {c:.2f}" if math.isfinite(c) else f"{g} cannot meet the SLOs"
                                          for g, c in singles.items())
          + f" -> the mix saves {1 - plan.cost_usd_per_h / singles[best_g]:.0%} against {best_g}")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, (name, res) in zip(axes, results.items()):
    costs = {"mixed fleet": res.plan.cost_usd_per_h, **res.single_type_cost_usd_per_h}
    names = list(costs)
    vals = [costs[n] if math.isfinite(costs[n]) else 0.0 for n in names]
    bars = ax.bar(names, vals, color=["C3"] + ["C0"] * (len(names) - 1))
    ax.bar_label(bars, labels=[f"${v:.2f}" if math.isfinite(costs[n]) else "infeasible" for n, v in zip(names, vals)],
                 fontsize=7)
    ax.set_ylabel("$ per hour")
    ax.set_title(f"{name} ({CASES[name][0].rate_rps:g} req/s)")
    ax.tick_params(axis="x", rotation=20)
fig.suptitle("Cheapest fleet meeting the SLOs: mixed GPU types vs one type")
fig.savefig(OUT / "05_fleet_cost.png", dpi=110, bbox_inches="tight")
plt.close(fig)

# %% [markdown]
# For chat, cheap L4 / A10G prefill instances take short prompts off the H100s, which then only
# need one aggregated and one decode instance; the mix is cheaper than three H100s. For long
# documents neither the L4 nor the A10G can serve the workload alone within the SLOs (a 40 ms
# TPOT is out of their reach on ~6000-token contexts), but an L4 prefill instance still takes
# one prompt in seven next to one H100 prefill and one H100 decode instance.

# %% [markdown]
# ## 3. Cost against latency: the Pareto front
#
# Tighter SLOs need more (or faster) GPUs. We scale both SLOs together from 0.5x to 3x of the
# targets above and, at each scale, solve for the cheapest mixed fleet and the cheapest fleet of
# each single GPU type (the same per-option throughput matrix serves all of them). Grey dots are
# all these fleets (crosses mark the single-type ones); the red line is the Pareto front: the fleets for which no other fleet offers
# a tighter SLO at the same or lower cost. Between two front points, a looser SLO buys nothing.

# %%
SCALES = (0.5, 0.75, 1.0, 1.5, 3.0)
options = [c[0] for c in cands]
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
front_rows = []
for ax, (name, (wl, ttft, tpot)) in zip(axes, CASES.items()):
    pts = []
    for scale in SCALES:
        tput = tput_at_slo[name] if scale == 1.0 else throughput_matrix(cands, wl, ttft * scale, tpot * scale)
        fleets = {"mix": options}
        fleets.update({g: [o for o in options if o.gpu == g] for g in FLEET_GPUS})
        for label, opts in fleets.items():
            keep = [options.index(o) for o in opts]
            try:
                cost = solve_fleet(opts, tput[:, keep], wl.bucket_rates_rps()).cost_usd_per_h
            except RoofplanError:
                continue            # this fleet cannot meet the SLOs at this scale
            pts.append({"workload": name, "fleet": label, "slo_ttft_ms": ttft * scale * 1e3,
                        "slo_tpot_ms": tpot * scale * 1e3, "cost_usd_per_h": cost})
    df = pd.DataFrame(pts)
    front = plots.pareto_plot(df["slo_tpot_ms"], df["cost_usd_per_h"],
                              [f"{f} {t / 1e3:g} s/{p:.0f} ms" for f, t, p in
                               zip(df["fleet"], df["slo_ttft_ms"], df["slo_tpot_ms"])],
                              None, xlabel="P90 TPOT SLO (ms); TTFT SLO scaled alike", ylabel="fleet $ per hour (log)",
                              minimize_x=True, maximize_y=False, title=f"{name} ({wl.rate_rps:g} req/s)", ax=ax)
    for k, g in enumerate(FLEET_GPUS):  # single-type fleets, one colour per GPU type
        d = df[df["fleet"] == g]
        ax.scatter(d["slo_tpot_ms"], d["cost_usd_per_h"], s=14, marker="x", color=("C0", "C1", "C2", "C4")[k], label=f"only {g}")
    ax.legend(fontsize=7)
    ax.set_yscale("log")       # single-type fleets near their limit cost tens of times more
    df["pareto"] = False
    df.loc[df.index[front], "pareto"] = True
    front_rows.append(df)
fig.suptitle(f"{model.name}: fleet cost vs SLO, mixed and single-type fleets (GPUs {', '.join(FLEET_GPUS)})")
fig.savefig(OUT / "05_pareto.png", dpi=110, bbox_inches="tight")
plt.close(fig)
fronts = pd.concat(front_rows, ignore_index=True)
print(fronts.pivot_table(index=["workload", "slo_ttft_ms", "slo_tpot_ms"], columns="fleet", values="cost_usd_per_h")
      [["mix"] + FLEET_GPUS].round(2).to_string())
print("Pareto front:")
print(fronts[fronts["pareto"]].to_string(index=False, float_format=lambda v: f"{v:.2f}"))

# %% [markdown]
# ## 4. Engines, quantized weights and the simulated check
#
# An option is also an engine (an executor profile: `vllm-v1`, `sglang`, `vllm-v0`, ...) and a
# weight format (`bf16`, `fp8` where the GPU has fp8 tensor cores, `int8` / `int4` weight-only):
# each is one more column of the ILP, with its own step tables. After the ILP picks a fleet, the
# discrete-event simulation runs each used option at the load the plan gives it (1000 seeded
# Poisson requests) and reports P50/P90/P99 TTFT and TPOT; an option that the closed forms pass but
# the simulation fails is derated to its simulated capacity and the fleet re-solved.
#
# Llama-3.1-70B serving chat at 4 req/s within P90 TTFT 2 s / TPOT 60 ms: in bf16 (141 GB of
# weights) it needs four H100s at TP 4; in int4 one H100 holds it and meets the SLOs.

# %%

m70 = load_model("llama-3.1-70b")
chat4 = replace(chat, rate_rps=4)
opts70 = candidate_options(m70, ["h100-sxm"], tps=(1, 2, 4), weight_dtypes=("bf16", "int4"))
quant = {}
for name, cands70 in (("bf16", [c for c in opts70 if c[0].weights == ""]), ("bf16 or int4", opts70)):
    quant[name], _, _ = plan_fleet(m70, chat4, 2.0, 0.060, ["h100-sxm"], candidates=cands70, sim_requests=1000)
    r = quant[name]
    used = ", ".join(f"{int(n)} x {o.label}" for o, n in zip(r.plan.options, r.plan.count) if n)
    print(f"weights {name:12s}: ${r.plan.cost_usd_per_h:.2f}/h  {used}")
sim_table = pd.DataFrame(quant["bf16 or int4"].simulated)[
    ["option", "rate_rps", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p90_ms", "tpot_p99_ms",
     "attainment", "meets"]]
print(sim_table.round(1).to_string(index=False))

# %% [markdown]
# Where the simulation overrules the closed forms: the mixed workload (a fifth of it ~6700-token
# documents) on 24 GB L4s and A10Gs. The closed forms treat the KV cache's size only as a
# stability limit; the simulation admits a request only when its prompt and output fit, so a
# decode instance near that limit queues requests. With the check's admission on, the fleet is
# re-solved until every option meets its SLOs in the simulation.

# %%
mixed2 = replace(load_serving_workload("mixed"), rate_rps=2)
small = candidate_options(model, ["l4", "a10g"], tps=(1,))
checked = {adm: plan_fleet(model, mixed2, 4.0, 0.100, ["l4", "a10g"], candidates=small, sim_requests=1000,
                           sim_admission=adm)[0] for adm in (False, True)}
for adm, r in checked.items():
    misses = [x["option"] for x in r.simulated if not x["meets"]]
    print(f"admission {'on ' if adm else 'off'}: ${r.plan.cost_usd_per_h:.2f}/h, simulated SLO attainment >= "
          f"{r.sim_attainment:.0%}, options missing in the simulation: {', '.join(misses) or 'none'}")

# %% [markdown]
# ## Checked against measured serving runs
#
# The DistServe authors measured every request of OPT-13B serving ShareGPT on A100-80GB: vLLM on
# one GPU and DistServe (prefill at TP 2 + decode at TP 1, 3 GPUs) at several Poisson rates
# (`benchmarks/data/distserve/`). Replaying the same arrivals through `serving.replay`, with the
# engines' executor profiles (fitted to their published step times, not to these runs), gives the
# SLO attainment curve (P90 TTFT <= 200 ms and P90 TPOT <= 100 ms) beside the measured one.

# %%
import sys  # noqa: E402

from simulator.core.paths import REPO_ROOT  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import distserve_sharegpt as dss  # noqa: E402

res = dss.compare()
fig, ax = plt.subplots(figsize=(6.5, 4))
for k, system in enumerate(dss.GPUS):
    rows = [x for x in res["runs"] if x["system"] == system]
    rate = [x["rate"] / dss.GPUS[system] for x in rows]
    ax.plot(rate, [x["attainment"][0] for x in rows], "o-", color=f"C{k}", label=f"{system} measured")
    ax.plot(rate, [x["attainment"][1] for x in rows], "x--", color=f"C{k}", label=f"{system} predicted")
ax.axhline(dss.ATTAIN, color="grey", lw=0.8)
ax.set_xlabel("request rate per GPU (req/s)")
ax.set_ylabel("SLO attainment")
ax.set_title("OPT-13B, ShareGPT, A100-80GB: measured vs replayed")
ax.legend(fontsize=7)
plots.save_figure(fig, OUT / "05_distserve_attainment.png")
for system, (m, p) in res["goodput_per_gpu"].items():
    print(f"{system}: goodput per GPU measured {m:.2f}, predicted {p:.2f} req/s")

# %% [markdown]
# ## Take-aways
#
# * One GPU's capacity under an SLO is set by whichever saturates first: prefill compute (long
#   prompts), decode bandwidth (tight TPOT) or the KV cache (small GPUs).
# * Mixing GPU types pays where one type is badly sized for part of the load; the planner is
#   never dearer than the best single type, by construction.
# * Quantized weights and engines are options like GPU types: int4 puts Llama-3.1-70B on one H100
#   instead of four (`--weight-dtypes bf16,int4`); the simulated check catches fleets the closed
#   forms size too tightly (small KV caches) and re-sizes them.
# * From the shell: `roofplan plan fleet --model llama-3.1-8b --workload chat --rate 64
#   --slo-ttft-ms 1000 --slo-tpot-ms 40 --gpus h100-sxm,a100-sxm-80gb,l4,a10g --tp 1
#   --plot pareto.png`.

# %%
print("figures:", ", ".join(sorted(p.name for p in OUT.glob("05_*.png"))))
