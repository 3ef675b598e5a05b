"""Figures: roofline with a prediction's ops placed on it, memory breakdown bars, a Gantt timeline
of compute and transfers, Pareto fronts. matplotlib is imported lazily with the Agg backend, so
the library and the CLI never need a display.

Each `*_data` function returns the numbers a figure draws (a DataFrame or dict) and each `*_plot`
function draws them into a PNG and returns the same data, so tests check the numbers, not pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from simulator.core.errors import RoofplanError
from simulator.core.units import GiB


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path) -> None:
    """Write a figure (.png, .svg or .pdf) and close it; a bad name or an unwritable place is
    a one-line user error."""
    p = Path(path)
    try:
        if p.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise RoofplanError(f"plot file {path}: use a .png, .svg or .pdf name")
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=120, bbox_inches="tight")
    except OSError as e:
        raise RoofplanError(f"plot file {path}: cannot write ({e.strerror}); choose a writable path") from None
    finally:
        _plt().close(fig)


# ---------------------------------------------------------------------------------------------
# roofline

def roofline_data(pred, system) -> tuple[pd.DataFrame, dict]:
    """Ops of a prediction on the roofline of `system.gpu`.

    Per op (summed over its instances): arithmetic intensity I = FLOPs / HBM bytes and achieved
    FLOP/s = FLOPs / time. Roofs (Williams, Waterman, Patterson 2009): attainable = min(peak,
    bw x I); the ridge is at I = peak / bw. Ops without FLOPs or bytes (communication, pure
    copies) have no place on the chart and are left out.
    """
    df = pred.ops
    df = df[(df["flops"] > 0) & (df["bytes"] > 0) & (df["time_s"] > 0)].copy()
    df["intensity"] = df["flops"] / df["bytes"]
    df["achieved_flops_s"] = df["flops"] / df["time_s"]
    peak = system.gpu.peak_flops(pred.job.dtype)
    bw = system.gpu.hbm_bw_Bps
    df["roof_flops_s"] = np.minimum(peak, bw * df["intensity"])
    roofs = {"peak_flops_s": peak, "hbm_bw_Bps": bw, "ridge_intensity": peak / bw}
    return df[["name", "cls", "bound", "flops", "bytes", "time_s", "intensity", "achieved_flops_s",
               "roof_flops_s"]].reset_index(drop=True), roofs


def roofline_plot(pred, system, path, ax=None) -> tuple[pd.DataFrame, dict]:
    plt = _plt()
    df, roofs = roofline_data(pred, system)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(7, 4.5))
    lo = min(df["intensity"].min() / 2, roofs["ridge_intensity"] / 100) if len(df) else 0.1
    hi = max(df["intensity"].max() * 2, roofs["ridge_intensity"] * 10) if len(df) else 1e4
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.plot(x, np.minimum(roofs["peak_flops_s"], roofs["hbm_bw_Bps"] * x) / 1e12, "k-", lw=1.5,
            label=f"roof: {roofs['peak_flops_s'] / 1e12:.0f} TFLOP/s, {roofs['hbm_bw_Bps'] / 1e12:.2f} TB/s")
    for cls, g in df.groupby("cls"):
        ax.scatter(g["intensity"], g["achieved_flops_s"] / 1e12, s=20 + 200 * g["time_s"] / max(pred.time_s, 1e-30),
                   label=cls, alpha=0.75)
    ax.axvline(roofs["ridge_intensity"], color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / HBM byte)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title(f"{pred.model} {pred.job.phase} on {system.gpu.name} (marker size: share of step time)")
    ax.legend(fontsize=7, loc="lower right")
    if own:
        save_figure(fig, path)
    return df, roofs


# ---------------------------------------------------------------------------------------------
# memory

def memory_data(preds: Sequence, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-GPU peak memory of each prediction by part (GiB), one row per prediction."""
    labels = labels or [f"{p.hardware} tp{p.job.tp}" for p in preds]
    rows = {lab: {k: v / GiB for k, v in p.memory.as_dict().items()} for lab, p in zip(labels, preds)}
    return pd.DataFrame.from_dict(rows, orient="index")


def memory_plot(preds: Sequence, path, labels: Sequence[str] | None = None, capacity_bytes: float | None = None,
                ax=None) -> pd.DataFrame:
    """Stacked bars of weights / KV cache / activations / ... per GPU, with the GPU's capacity."""
    plt = _plt()
    df = memory_data(preds, labels)
    df = df.loc[:, (df > 0).any(axis=0)]
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(df) + 2), 4))
    bottom = np.zeros(len(df))
    for col in df.columns:
        ax.bar(df.index, df[col], bottom=bottom, label=col.replace("_", " "))
        bottom += df[col].to_numpy()
    if capacity_bytes:
        ax.axhline(capacity_bytes / GiB, color="k", ls="--", lw=1, label=f"GPU memory {capacity_bytes / GiB:.0f} GiB")
    ax.set_ylabel("GiB per GPU")
    ax.set_title("Peak memory per GPU")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=7)
    if own:
        save_figure(fig, path)
    return df


# ---------------------------------------------------------------------------------------------
# timeline

def offload_timeline(pred) -> pd.DataFrame:
    """Per-layer schedule of a weight-offloaded inference step (double buffering, as in
    simulator.core.step.stream_schedule, which the tests check it against): copy of layer i may start once copy i-1 is done and the buffer it
    reuses (layer i-2's) is free; compute of layer i starts once its copy and compute i-1 are done.
    Rows: lane (transfer | compute), layer, start_s, duration_s."""
    job = pred.job
    if job.offload_weights != "cpu" or not pred.transfer_time_s:
        raise RoofplanError("a transfer timeline needs an offloaded prediction; use --offload weights=cpu")
    layer_rows = pred.ops["name"].str.startswith(("layer.", "moe_layer."))
    n = int(pred.ops.loc[layer_rows, "count"].max())
    compute = float(pred.ops.loc[layer_rows, "time_s"].sum()) / n
    transfer = pred.transfer_time_s / n
    rows, copy_end, comp_end = [], [], []
    for i in range(n):
        if job.overlap:
            start = max(copy_end[i - 1] if i else 0.0, comp_end[i - 2] if i >= 2 else 0.0)
        else:
            start = comp_end[i - 1] if i else 0.0
        copy_end.append(start + transfer)
        rows.append(("transfer", i, start, transfer))
        c0 = max(copy_end[i], comp_end[i - 1] if i else 0.0)
        comp_end.append(c0 + compute)
        rows.append(("compute", i, c0, compute))
    return pd.DataFrame(rows, columns=["lane", "layer", "start_s", "duration_s"])


def pipeline_timeline(pp: int, n_micro: int, fwd_s: float, bwd_s: float) -> pd.DataFrame:
    """1F1B pipeline schedule (Narayanan et al. 2021, PipeDream-Flush): stage s runs pp - s - 1
    warm-up forwards, then alternates one forward and one backward, then drains the backwards.
    F(s, i) waits for F(s-1, i); B(s, i) waits for B(s+1, i). With equal stages the step takes
    (n_micro + pp - 1) x (fwd + bwd): the (pp - 1) slots are the bubble predict() charges.
    Rows: lane (stage k), micro_batch, kind (fwd | bwd), start_s, duration_s."""
    if pp < 1 or n_micro < 1:
        raise RoofplanError("a pipeline timeline needs pp >= 1 stages and >= 1 micro-batches")
    order = []
    for s in range(pp):
        warm = min(pp - s - 1, n_micro)
        seq = [("fwd", i) for i in range(warm)]
        f, b = warm, 0
        while b < n_micro:
            if f < n_micro:
                seq.append(("fwd", f))
                f += 1
            seq.append(("bwd", b))
            b += 1
        order.append(seq)
    end: dict = {}
    pos = [0] * pp
    free = [0.0] * pp
    rows = []
    while any(pos[s] < len(order[s]) for s in range(pp)):
        progressed = False
        for s in range(pp):
            while pos[s] < len(order[s]):
                kind, i = order[s][pos[s]]
                dep = ("fwd", s - 1, i) if kind == "fwd" and s > 0 else ("bwd", s + 1, i) if kind == "bwd" and s < pp - 1 else None
                if kind == "bwd" and s == pp - 1:
                    dep = ("fwd", s, i)
                if dep is not None and dep not in end:
                    break
                start = max(free[s], end[dep] if dep else 0.0)
                dur = fwd_s if kind == "fwd" else bwd_s
                end[(kind, s, i)] = free[s] = start + dur
                rows.append((f"stage {s}", i, kind, start, dur))
                pos[s] += 1
                progressed = True
        if not progressed:
            raise RoofplanError("pipeline schedule deadlocked; this is a bug in pipeline_timeline")
    return pd.DataFrame(rows, columns=["lane", "micro_batch", "kind", "start_s", "duration_s"])


def timeline_plot(tasks: pd.DataFrame, path, title: str = "", ax=None) -> pd.DataFrame:
    """Gantt chart: one row per lane, one bar per task (columns lane, start_s, duration_s; bars
    are coloured by `kind` when the column exists, else by lane)."""
    plt = _plt()
    lanes = list(dict.fromkeys(tasks["lane"]))
    key = "kind" if "kind" in tasks else "lane"
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour_of = {k: colours[j % len(colours)] for j, k in enumerate(dict.fromkeys(tasks[key]))}
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(9, 0.6 * len(lanes) + 1.5))
    for k, lane in enumerate(lanes):
        t = tasks[tasks["lane"] == lane]
        ax.broken_barh(list(zip(t["start_s"] * 1e3, t["duration_s"] * 1e3)), (k - 0.35, 0.7),
                       facecolors=[colour_of[v] for v in t[key]], edgecolor="white", linewidth=0.3)
    if key == "kind":
        from matplotlib.patches import Patch
        ax.legend(handles=[Patch(color=c, label=k) for k, c in colour_of.items()], fontsize=7, loc="upper right")
    ax.set_yticks(range(len(lanes)), lanes)
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)")
    ax.set_title(title)
    if own:
        save_figure(fig, path)
    return tasks


# ---------------------------------------------------------------------------------------------
# Pareto

def pareto_front(x, y, minimize_x: bool = True, maximize_y: bool = True) -> np.ndarray:
    """Indices of the non-dominated points, ordered by x. A point is dominated when another is at
    least as good in both coordinates and better in one."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    xs = x if minimize_x else -x
    ys = -y if maximize_y else y            # both 'smaller is better' now
    order = np.lexsort((ys, xs))
    front, best = [], np.inf
    for i in order:
        if ys[i] < best:
            front.append(i)
            best = ys[i]
    return np.array(front, dtype=int)


def pareto_plot(x, y, labels: Sequence[str], path, xlabel: str = "", ylabel: str = "", minimize_x: bool = True,
                maximize_y: bool = True, title: str = "", annotate: int = 8, ax=None) -> np.ndarray:
    """All points in grey, the front highlighted and its first `annotate` points labelled.
    Returns the front's indices."""
    plt = _plt()
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    front = pareto_front(x, y, minimize_x, maximize_y)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(x, y, s=6, color="0.75", label="all configurations")
    ax.plot(x[front], y[front], "o-", color="C3", ms=4, label="Pareto front")
    step = max(1, len(front) // max(annotate, 1))
    for i in front[::step]:
        ax.annotate(labels[i], (x[i], y[i]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if np.all(x > 0) and x.max() / max(x.min(), 1e-300) > 100:
        ax.set_xscale("log")
    if np.all(y > 0) and y.max() / max(y.min(), 1e-300) > 100:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    if own:
        save_figure(fig, path)
    return front


def dollars_energy_plot(usd, energy, labels: Sequence[str], path, xlabel: str = "$ (lower is better)",
                        ylabel: str = "energy (lower is better)", title: str = "", marks: dict | None = None,
                        annotate: int = 8, ax=None) -> np.ndarray:
    """The dollars-energy Pareto front (both smaller is better; simulator.core.power): every point
    in grey, the non-dominated ones joined, and `marks` (name -> index, e.g. {"cheapest": 0,
    "least energy": 5}) ringed and named. Returns the front's indices, ordered by dollars."""
    plt = _plt()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(7, 4.5))
    front = pareto_plot(usd, energy, labels, None, xlabel=xlabel, ylabel=ylabel, minimize_x=True, maximize_y=False,
                        title=title, annotate=annotate, ax=ax)
    x, y = np.asarray(usd, float), np.asarray(energy, float)
    for k, (name, i) in enumerate((marks or {}).items()):
        ax.scatter([x[i]], [y[i]], s=90, facecolors="none", edgecolors=f"C{k}", linewidths=1.5, label=name)
    if marks:
        ax.legend(fontsize=7)
    if own:
        save_figure(fig, path)
    return front


def prediction_figure(pred, system, path) -> dict:
    """`roofplan predict --plot`: roofline (left) and memory breakdown (right) in one PNG."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    df, roofs = roofline_plot(pred, system, None, ax=a1)
    mem = memory_plot([pred], None, labels=[f"{system.gpu.name}"], capacity_bytes=system.gpu.mem_bytes, ax=a2)
    save_figure(fig, path)
    return {"roofline": df, "roofs": roofs, "memory": mem}


def notebook_out_dir():
    """Where the notebooks write their figures: $ROOFPLAN_NOTEBOOK_OUT, else notebooks/out/ of the
    repository (git-ignored); created if missing."""
    import os
    from pathlib import Path

    from simulator.core.paths import REPO_ROOT
    out = Path(os.environ.get("ROOFPLAN_NOTEBOOK_OUT", REPO_ROOT / "notebooks" / "out"))
    out.mkdir(parents=True, exist_ok=True)
    return out
