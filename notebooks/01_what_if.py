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
# # 1. What if: Llama-3.1-70B decode on 1, 2, 4 or 8 H100s vs A100s
#
# Before renting GPUs for a model we want four numbers for every candidate set-up:
#
# * **latency**: how long one decode step takes (every sequence in the batch gets one new token),
# * **throughput**: tokens per second over the whole batch,
# * **memory**: does the model (weights + KV cache + activations) fit in each GPU,
# * **cost**: dollars per million generated tokens at the cloud price of the GPUs.
#
# roofplan answers them analytically: it lists every kernel a decode step runs (the matrix
# multiplies, attention over the KV cache, norms, the all-reduces of tensor parallelism), times
# each one with a roofline whose efficiency curves were fitted to real H100 measurements, and
# adds up memory with the same formulas the CLI uses (`roofplan predict`, `roofplan whatif`).
#
# The workload: **Llama-3.1-70B, bf16, decode, 16 sequences, 2048 tokens already cached**,
# split over N GPUs with tensor parallelism (each GPU holds 1/N of every weight matrix).
#
# Run it as a script (`python notebooks/01_what_if.py`) or open it in Jupyter (jupytext).
# Figures go to `notebooks/out/`.

# %%

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from simulator.report import plots
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.pricing import cheapest_price_per_gpu_h
from simulator.core.specs import load_hardware
from simulator.core.predict import predict_many
from simulator.core.units import GiB
from simulator.core.workload import Job

OUT = plots.notebook_out_dir()

MODEL = "llama-3.1-70b"
GPUS = ["h100-sxm", "a100-sxm-80gb"]
COUNTS = [1, 2, 4, 8]
BATCH, CONTEXT = 16, 2048

model = load_model(MODEL)
print(f"{model.name}: {model.params_total() / 1e9:.1f} B parameters, {model.n_layers} layers, "
      f"{model.n_heads} query heads / {model.n_kv_heads} KV heads (grouped-query attention)")

# %% [markdown]
# ## The hardware and its price
#
# The GPU specs (peak bf16 FLOP/s, HBM bandwidth and capacity) come from the vendors' datasheets
# in `hardware_specs/gpus/`; the price is the cheapest on-demand instance in
# `hardware_specs/systems/` divided by its GPU count.

# %%
hw = {}
for name in GPUS:
    system = load_hardware(name)
    price, instance = cheapest_price_per_gpu_h(system.gpu.name)
    hw[name] = (system, price)
    g = system.gpu
    print(f"{name:14s} {g.peak_flops('bf16') / 1e12:5.0f} TFLOP/s bf16, {g.hbm_bw_Bps / 1e12:.2f} TB/s, "
          f"{g.mem_bytes / GiB:.0f} GiB, ${price:.2f} per GPU-hour ({instance})")

# %% [markdown]
# ## One prediction per (GPU, N)
#
# `predict()` returns the step time, the per-GPU peak memory and a per-op breakdown. We keep
# configurations that do not fit (`check_memory=False`) so the table can say *why* they fail.

# %%
rows, preds = [], {}
for name, (system, price) in hw.items():
    for n in COUNTS:
        p = predict(model, system, Job("decode", batch=BATCH, context=CONTEXT, tp=n), check_memory=False)
        preds[name, n] = p
        usd = price * n / 3600 / p.tokens_per_s * 1e6
        rows.append({"gpu": name, "N": n, "step_ms": p.time_s * 1e3, "tokens_per_s": p.tokens_per_s,
                     "GiB_per_gpu": p.peak_memory_bytes / GiB, "fits": p.fits, "usd_per_1M_tokens": usd,
                     "bound": p.bound})
table = pd.DataFrame(rows)
print(table.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))

# %% [markdown]
# Reading the table:
#
# * **N = 1 does not fit** on either GPU: 70.6 B parameters x 2 bytes = 141 GB of weights
#   alone, against 80 GiB of HBM.
# * Decode is **memory-bound**: each step streams every weight and the whole KV cache from HBM
#   once, for only 16 tokens of work, so the step time tracks HBM bandwidth (3.35 TB/s on H100
#   vs 2.04 TB/s on A100), not FLOP/s.
# * More GPUs split the weights, so each GPU streams less and the step gets faster, but the
#   all-reduces after attention and MLP (two per layer) and fixed per-kernel costs do not shrink:
#   going from 4 to 8 GPUs buys less than 2x.

# %%
fit = table[table["fits"]]
best = fit.loc[fit["usd_per_1M_tokens"].idxmin()]
fastest = fit.loc[fit["step_ms"].idxmin()]
print(f"cheapest per token: {best.gpu} x{best.N}: ${best.usd_per_1M_tokens:.2f} per 1M tokens, "
      f"{best.step_ms:.1f} ms per step")
print(f"lowest latency:     {fastest.gpu} x{fastest.N}: {fastest.step_ms:.1f} ms per step, "
      f"${fastest.usd_per_1M_tokens:.2f} per 1M tokens")
h8, a8 = preds["h100-sxm", 8], preds["a100-sxm-80gb", 8]
print(f"8 GPUs: H100 is {a8.time_s / h8.time_s:.2f}x faster than A100 "
      f"(HBM bandwidth ratio {hw['h100-sxm'][0].gpu.hbm_bw_Bps / hw['a100-sxm-80gb'][0].gpu.hbm_bw_Bps:.2f}x)")

# %% [markdown]
# ## Throughput and cost against the GPU count

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for name in GPUS:
    t = table[(table["gpu"] == name) & table["fits"]]
    ax1.plot(t["N"], t["tokens_per_s"], "o-", label=name)
    ax2.plot(t["N"], t["usd_per_1M_tokens"], "o-", label=name)
for ax, ylabel in ((ax1, "tokens/s (batch of 16)"), (ax2, "$ per 1M tokens")):
    ax.set_xscale("log", base=2)
    ax.set_xticks(COUNTS, [str(c) for c in COUNTS])
    ax.set_xlabel("GPUs (tensor parallel)")
    ax.set_ylabel(ylabel)
    ax.legend()
fig.suptitle(f"{MODEL} decode, batch {BATCH}, context {CONTEXT}")
fig.savefig(OUT / "01_throughput_cost.png", dpi=110, bbox_inches="tight")
plt.close(fig)

# %% [markdown]
# ## Where the memory goes
#
# Per GPU: the weights shrink as 1/N, the KV cache too (each GPU keeps the K and V of its own
# heads), and a fixed workspace remains. The dashed line is the H100's 80 GiB.

# %%
mem = plots.memory_plot([preds["h100-sxm", n] for n in COUNTS], OUT / "01_memory.png",
                        labels=[f"H100 x{n}" for n in COUNTS], capacity_bytes=hw["h100-sxm"][0].gpu.mem_bytes)
print(mem.round(2).to_string())

# %% [markdown]
# ## The ops on the roofline (H100 x4)
#
# Each dot is one kind of kernel, at its arithmetic intensity (FLOPs per byte moved from HBM)
# and the FLOP/s it achieves. Everything sits far left of the ridge point: at batch 16 a weight
# matrix does about 16 FLOPs per byte it reads, while the H100 needs ~295 to be compute-bound.
# Raising the batch moves the GEMMs right, up the bandwidth roof.

# %%
df, roofs = plots.roofline_plot(preds["h100-sxm", 4], hw["h100-sxm"][0], OUT / "01_roofline.png")
print(df.groupby("cls")[["intensity", "achieved_flops_s"]].median().round(2))
print(f"ridge point: {roofs['ridge_intensity']:.0f} FLOP/byte")

# %% [markdown]
# ## A batch sweep in one call
#
# `predict_many` evaluates the same formulas on numpy arrays: here every batch from 1 to 512 for
# each set-up at once. Throughput rises with the batch (weights are read once per step however
# many sequences share them) until the KV cache fills the memory.

# %%
batches = np.arange(1, 513)
fig, ax = plt.subplots(figsize=(7, 4))
for name, (system, price) in hw.items():
    for n in (4, 8):
        m = predict_many(model, system, Job("decode", tp=n), batches, context=CONTEXT)
        ok = m.fits
        ax.plot(batches[ok], m.tokens_per_s[ok], label=f"{name} x{n}")
        if not ok.all():
            print(f"{name} x{n}: fits up to batch {batches[ok].max()} at context {CONTEXT}")
ax.set_xlabel("batch (sequences)")
ax.set_ylabel("tokens/s")
ax.set_title(f"{MODEL} decode, context {CONTEXT}: throughput vs batch (until memory is full)")
ax.legend()
fig.savefig(OUT / "01_batch_sweep.png", dpi=110, bbox_inches="tight")
plt.close(fig)

# %% [markdown]
# ## Take-aways
#
# * The model needs at least 2 GPUs of 80 GiB; 4 leave room for a large KV cache.
# * For decode, compare GPUs by **HBM bandwidth per dollar**, not by FLOP/s.
# * The same questions for a whole grid of models, GPUs and sizes: `roofplan sweep
#   workloads/sweeps/serving.yaml --top 10 --plot pareto.png`.

# %%
print("figures:", ", ".join(sorted(p.name for p in OUT.glob("01_*.png"))))
