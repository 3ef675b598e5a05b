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
# # 2. Calibrate from measurements, then read the validation report
#
# A datasheet says an H100 SXM does 989 TFLOP/s in bf16 and moves 3.35 TB/s from HBM. Real
# kernels reach less, and how much less depends on their size: a small matrix multiply cannot
# fill 132 streaming multiprocessors, a large one plateaus (and the clock drops under load).
# roofplan captures this with **efficiency curves**: the fraction of peak a kernel reaches as
# a function of its *ideal* time (work / peak). Fitting them takes one file of microbenchmarks.
#
# This notebook
# 1. reads the shared H100 microbenchmarks (`microbench.jsonl`: GEMMs, attention, elementwise
#    kernels, copies),
# 2. fits a kernel profile with `simulator.calibration.calibrate.fit_kernel_profile`,
# 3. checks the fit against the microbenchmarks it came from, and
# 4. validates end to end: whole prefill / decode / training steps measured on the same GPU
#    (`end_to_end.yaml`) against `predict()` with the fitted profile.
#
# The measurements live beside the repository in `shared/measurements/h100-sxm/` (or set
# `ROOFPLAN_MEASUREMENTS` to a folder with the same files). Figures go to `notebooks/out/`.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml

from simulator.core.paths import REPO_ROOT
from simulator.calibration.accuracy import job_from_case, load_cases, mape
from simulator.calibration.calibrate import fit_kernel_profile, read_microbench
from simulator.calibration.copy_fit import fitted_cases, in_sample_lines
from simulator.core.errors import RoofplanError
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile, load_kernel_profile, parse_kernel_profile
from simulator.core.roofline import attn_decode_time, gemm_time
from simulator.core.specs import load_gpu, load_hardware, load_link

from simulator.report import plots  # noqa: E402

OUT = plots.notebook_out_dir()
MEAS = Path(os.environ.get("ROOFPLAN_MEASUREMENTS", REPO_ROOT.parent / "shared" / "measurements" / "h100-sxm"))
if not (MEAS / "microbench.jsonl").is_file():
    raise SystemExit(f"no microbench.jsonl in {MEAS}; set ROOFPLAN_MEASUREMENTS to the measurements folder")

# %% [markdown]
# ## 1. The microbenchmarks
#
# One JSON object per line; `kind` says what was timed. GEMM rows give M, N, K and the median
# time of `torch.matmul` with the L2 cache flushed.

# %%
rows = read_microbench(MEAS / "microbench.jsonl")
kinds = pd.Series([r["kind"] for r in rows]).value_counts()
print(kinds.to_string())
gemm_rows = pd.DataFrame([r for r in rows if r["kind"] == "gemm"])
print(gemm_rows.groupby("dtype").size().rename("GEMM rows per dtype").to_string())

# %% [markdown]
# ## 2. Fit the kernel profile
#
# `fit_kernel_profile` fits each curve by least squares on the log of the time (so a 6 us
# kernel and a 20 ms kernel weigh the same). It returns the profile (the YAML that goes into
# `hardware_specs/profiles/kernels/`) and the fit's RMS log-error per part.

# %%
gpu = load_gpu("h100-sxm")
profile_yaml, fit_errors = fit_kernel_profile(rows, gpu, load_link(gpu.host_link), source=str(MEAS.name))
path = OUT / "h100-sxm-fitted.yaml"
path.write_text(yaml.safe_dump(profile_yaml, sort_keys=False))
kp = parse_kernel_profile(profile_yaml, path)
print("fit error by part:")
for part, err in fit_errors.items():
    print(f"  {part:20s} {err:.3f}")
g = kp.gemm["bf16"]
print("bf16 GEMM compute efficiency at ideal times", [f"{10 ** x:.0e} s" for x in g.compute.log_t])
print("                                         ", [f"{e:.2f}" for e in g.compute.eff])

# %% [markdown]
# ## 3. Does the fit reproduce its own measurements?
#
# Predicted vs measured time for every GEMM (all dtypes) and every decode-attention kernel.
# Points on the diagonal are exact; the dotted lines are +-20 %.

# %%
bw = gpu.hbm_bw_Bps


def gemm_pred(r):
    a = {"fp32": 4, "tf32": 4, "fp8": 1}.get(r["dtype"], 2)
    out_b = 4 if r["dtype"] in ("fp32", "tf32") else 2
    flops = 2.0 * r["M"] * r["N"] * r["K"]
    byts = (r["M"] * r["K"] + r["K"] * r["N"]) * a + r["M"] * r["N"] * out_b
    t, _ = gemm_time(flops, byts, gpu.peak_flops(r["dtype"]), bw, kp.gemm_for(r["dtype"]))
    return float(t)


gemm_rows = gemm_rows[gemm_rows["dtype"].isin(list(kp.gemm))]
gemm_rows["predicted_s"] = [gemm_pred(r) for _, r in gemm_rows.iterrows()]
ad = pd.DataFrame([r for r in rows if r["kind"] == "attn_decode"])
ad["predicted_s"] = [float(attn_decode_time(4.0 * r["B"] * r["Hq"] * r["L"] * r["D"], r["kv_bytes"],
                                            gpu.peak_flops("bf16"), bw, kp)[0]) for _, r in ad.iterrows()]

fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
for ax, df, title in ((axes[0], gemm_rows, "GEMM"), (axes[1], ad, "decode attention")):
    for key, part in (df.groupby("dtype") if "dtype" in df else [("bf16", df)]):
        ax.scatter(part["time_s"] * 1e6, part["predicted_s"] * 1e6, s=12, label=str(key))
    lo, hi = df["time_s"].min() * 1e6 / 2, df["time_s"].max() * 1e6 * 2
    ax.plot([lo, hi], [lo, hi], "k-", lw=1)
    for f in (0.8, 1.2):
        ax.plot([lo, hi], [lo * f, hi * f], "k:", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured (us)")
    ax.set_ylabel("predicted (us)")
    ax.set_title(title)
    ax.legend(fontsize=7)
fig.savefig(OUT / "02_fit_vs_microbench.png", dpi=110, bbox_inches="tight")
plt.close(fig)
for name, df in (("GEMM", gemm_rows), ("decode attention", ad)):
    err = df["predicted_s"] / df["time_s"] - 1
    print(f"{name:17s} {len(df):4d} kernels: median |error| {100 * err.abs().median():.1f} %, "
          f"90th percentile {100 * err.abs().quantile(0.9):.1f} %")

# %% [markdown]
# The efficiency curve itself: achieved fraction of peak vs ideal time. Dots: measured; crosses:
# the fitted model (compute curve + memory term + fixed overhead); line: the compute curve alone.
# Small GEMMs reach a few percent of peak because a fixed per-kernel overhead of a few
# microseconds and their memory traffic dominate; large ones plateau near 70 %.

# %%
bf = gemm_rows[gemm_rows["dtype"] == "bf16"]
ideal = 2.0 * bf["M"] * bf["N"] * bf["K"] / gpu.peak_flops("bf16")
fig, ax = plt.subplots(figsize=(7, 4))
ax.scatter(ideal, ideal / bf["time_s"], s=10, label="measured (compute ideal / time)")
ax.scatter(ideal, ideal / bf["predicted_s"], s=12, marker="x", color="C2", label="fitted model")
x = np.logspace(-7, -1.5, 200)
ax.plot(x, g.compute(x), "C3-", label="fitted compute efficiency")
ax.set_xscale("log")
ax.set_xlabel("ideal compute time F / peak (s)")
ax.set_ylabel("fraction of 989 TFLOP/s")
ax.set_title("H100 bf16 GEMM efficiency")
ax.legend(fontsize=8)
fig.savefig(OUT / "02_gemm_efficiency.png", dpi=110, bbox_inches="tight")
plt.close(fig)

# %% [markdown]
# ## 4. Validation: whole steps, measured vs predicted
#
# `end_to_end.yaml` holds measured step times and peak memory of real runs on the same H100:
# CUDA-graph decode, eager prefill, weight-offloaded decode, Hugging Face eager inference and
# training. Each case names its executor profile (how the software stack issues kernels). We
# predict each with the freshly fitted profile and with the one shipped in `hardware_specs/`.

# %%
hardware, cases = load_cases(MEAS / "end_to_end.yaml")
system = load_hardware(hardware)
shipped = load_kernel_profile(system.gpu.name)
report = []
for c in cases:
    row = {"id": c.get("id", ""), "group": c.get("group", ""), "measured_ms": c["time_s"] * 1e3}
    try:
        ex = load_executor_profile(c.get("executor", "default"))
        model, job = load_model(c["model"]), job_from_case(c)
        row["fitted_ms"] = predict(model, system, job, ex, kp).time_s * 1e3
        row["shipped_ms"] = predict(model, system, job, ex, shipped).time_s * 1e3
    except RoofplanError as e:
        row["error"] = str(e)
    report.append(row)
report = pd.DataFrame(report)
report["fitted_err_%"] = 100 * (report["fitted_ms"] / report["measured_ms"] - 1)
report["shipped_err_%"] = 100 * (report["shipped_ms"] / report["measured_ms"] - 1)
pd.set_option("display.width", 160)
print(report.drop(columns=[c for c in ("error",) if c in report]).round(2).to_string(index=False))
for _, r in report[report.get("error", pd.Series(dtype=str)).notna()].iterrows() if "error" in report else []:
    print(f"not predicted: {r['id']}: {r['error']}")
for line in in_sample_lines(fitted_cases(hardware, cases)):   # the shipped profile was fitted on these
    print(line)

# %% [markdown]
# Read it per group: the *graph* cases are GPU time only (the fitted kernels alone should
# explain them); *eager* cases add host overhead per kernel, which the executor profile carries.
# A case an executor profile was fitted on (accelerate's copy efficiency, its one case) is in
# sample: its error proves nothing, and the line under the table gives its held-out one.
# The shipped profile also folds in corrections fitted to the PyTorch profiler traces (memory-
# bound kernels are slower inside a real model than in microbenchmarks), which is why it can
# beat a profile fitted to microbenchmarks only.

# %%
summary = report.groupby("group").agg(cases=("id", "size"),
                                      fitted_MAPE=("fitted_err_%", lambda s: mape(s / 100) * 100),
                                      shipped_MAPE=("shipped_err_%", lambda s: mape(s / 100) * 100))
print(summary.round(1).to_string())

fig, ax = plt.subplots(figsize=(10, 0.28 * len(report) + 1.5))
y = np.arange(len(report))
ax.barh(y - 0.2, report["fitted_err_%"], height=0.4, label="fitted here")
ax.barh(y + 0.2, report["shipped_err_%"], height=0.4, label="shipped profile")
ax.set_yticks(y, report["id"], fontsize=7)
ax.axvline(0, color="k", lw=0.8)
for v in (-20, 20):
    ax.axvline(v, color="grey", ls=":", lw=0.8)
ax.invert_yaxis()
ax.set_xlabel("predicted / measured - 1 (%)")
ax.set_title("End-to-end validation on H100 SXM")
ax.legend(fontsize=8)
fig.savefig(OUT / "02_validation.png", dpi=110, bbox_inches="tight")
plt.close(fig)

# %% [markdown]
# ## Next
#
# * To calibrate another GPU, run the same microbenchmarks there and call
#   `fit_kernel_profile` with that GPU's spec; save the YAML as
#   `hardware_specs/profiles/kernels/<gpu>.yaml` and every command picks it up.
# * GPUs without their own profile use the H100 curves against their own peaks (the curves are
#   in units of ideal time, so they carry over); expect larger errors there.

# %%
print("figures:", ", ".join(sorted(p.name for p in OUT.glob("02_*.png"))))
