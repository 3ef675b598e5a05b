"""Predicted vs measured: a trace segment against `predict()` of the same job, class by class.

GPU kernel time per op class is compared with the prediction's GPU time per class (apples to
apples: a kernel's duration is GPU time, whatever the host did). End to end, the traced wall
time of the segment (first launching CPU op to the last kernel's end, or to the last CPU op when
the host is the bottleneck) is compared with the predicted step time; note that the profiler
slows the host (several us per recorded op), so a host-bound traced step is longer than the
same step run without it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.core.errors import FieldError, RoofplanError
from simulator.core.ops import OP_CLASSES
from simulator.core.predict import Prediction
from simulator.calibration.trace import Trace


def pick_segment(trace: Trace, phase: str, segment: str | None = None) -> str:
    """The segment to compare: `segment` by name, else the last one of the job's phase, else the
    only one."""
    names = trace.segments["name"].tolist()
    if segment:
        if segment not in names:
            raise RoofplanError(f"trace {trace.path} has no segment '{segment}'; it has {', '.join(names)}")
        return segment
    same = trace.segments[trace.segments["phase"] == phase]["name"].tolist()
    if same:
        return same[-1]
    # ProfilerStep#N steps (any phase) and a backward-carrying trace (train): the last step,
    # the one least disturbed by profiler start-up
    generic = trace.segments[trace.segments["phase"] == "step"]["name"].tolist()
    if phase == "train":
        generic += trace.segments[trace.segments["phase"] == "train"]["name"].tolist()
    if generic or len(names) == 1:
        return (generic or names)[-1]
    raise FieldError("phase", phase, f"trace {trace.path} has no {phase} segment (it has {', '.join(names)})",
                     "name one as segment, or use another phase")


def segment_wall_s(trace: Trace, segment: str) -> float:
    s = trace.segments.set_index("name").loc[segment]
    k = trace.kernels[trace.kernels["segment"] == segment]
    c = trace.cpu_ops[(trace.cpu_ops["ts_s"] >= s.t0_s) & (trace.cpu_ops["ts_s"] < s.t1_s)]
    end = max(float((k["ts_s"] + k["dur_s"]).max()) if len(k) else s.t0_s,
              float((c["ts_s"] + c["dur_s"]).max()) if len(c) else s.t0_s)
    start = min(float(s.t0_s), float(k["ts_s"].min()) if len(k) else np.inf)
    return end - start


def compare(trace: Trace, segment: str, pred: Prediction) -> tuple[pd.DataFrame, dict]:
    """Per class: measured kernel time and count vs predicted GPU time and kernel count; plus the
    end-to-end summary."""
    meas = trace.by_class(segment)
    p = pred.ops.groupby("cls")[["gpu_time_s", "time_s", "kernels"]].sum()
    classes = [c for c in OP_CLASSES if c in meas.index or c in p.index]
    rows = []
    for c in classes:
        m_t = float(meas["time_s"].get(c, 0.0))
        p_t = float(p["gpu_time_s"].get(c, 0.0))
        rows.append({"cls": c, "measured_s": m_t, "predicted_s": p_t,
                     "error": p_t / m_t - 1 if m_t > 0 else np.nan,
                     "measured_kernels": int(meas["kernels"].get(c, 0)),
                     "predicted_kernels": int(p["kernels"].get(c, 0))})
    df = pd.DataFrame(rows)
    kern_meas = float(meas["time_s"].sum())
    kern_pred = float(p["gpu_time_s"].sum())
    wall = segment_wall_s(trace, segment)
    weights = df["measured_s"] / max(kern_meas, 1e-30)
    summary = {
        "segment": segment, "measured_kernel_time_s": kern_meas, "predicted_gpu_time_s": kern_pred,
        "kernel_time_error": kern_pred / kern_meas - 1 if kern_meas else np.nan,
        "measured_wall_s": wall, "predicted_step_s": pred.time_s, "step_error": pred.time_s / wall - 1,
        "class_mape_weighted": float(np.nansum(np.abs(df["error"].fillna(0)) * weights)),
        "bound": pred.bound,
    }
    return df, summary


def plot(df: pd.DataFrame, summary: dict, title: str, path: str | Path) -> None:
    """Grouped bars: measured vs predicted time per class, plus the end-to-end pair."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(df["cls"]) + ["kernels total", "step (wall)"]
    meas = list(df["measured_s"] * 1e3) + [summary["measured_kernel_time_s"] * 1e3, summary["measured_wall_s"] * 1e3]
    pred = list(df["predicted_s"] * 1e3) + [summary["predicted_gpu_time_s"] * 1e3, summary["predicted_step_s"] * 1e3]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4))
    ax.bar(x - 0.2, meas, 0.4, label="measured (trace)")
    ax.bar(x + 0.2, pred, 0.4, label="predicted")
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel("time (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    from simulator.report.plots import save_figure
    save_figure(fig, path)


def _blocks(ops: pd.DataFrame) -> list[tuple[list[dict], int]]:
    """Consecutive rows with the same count > 1 form a block repeated `count` times (a layer)."""
    out: list[tuple[list[dict], int]] = []
    for r in ops.to_dict("records"):
        n = int(r["count"])
        if out and n > 1 and out[-1][1] == n:
            out[-1][0].append(r)
        else:
            out.append(([r], n))
    return out


def chrome_trace(pred: Prediction, t0_us: float = 0.0) -> dict:
    """The predicted step as a Chrome trace (open in Perfetto beside the measured one): the two
    lanes of simulator.core.step.lanes, layers unrolled in order. The host track has one event per
    op (its dispatch time, and the executor's per-step and per-layer work); the GPU track one per
    op instance, starting when the op is issued and the previous kernel is done."""
    ev = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": f"roofplan predicted: {pred.model} {pred.job.phase}"}},
          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "GPU (predicted)"}},
          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 2, "args": {"name": "host (predicted)"}}]
    issue = end = t0_us
    rows = pred.ops[pred.ops["name"] != "host.exposed"]
    for block, n in _blocks(rows):
        for i in range(n):
            for r in block:
                c = max(int(r["count"]), 1)
                gpu_us = r["gpu_time_s"] / c * 1e6
                host_us = r["host_time_s"] / c * 1e6
                name = r["name"].replace("layer.", f"layer{i}.") if n > 1 else r["name"]
                if host_us > 0:
                    ev.append({"ph": "X", "cat": "host", "name": name, "pid": 1, "tid": 2, "ts": round(issue, 3),
                               "dur": round(host_us, 3)})
                    issue += host_us
                if r["cls"] == "host":
                    continue
                start = max(end, issue)
                args = {"class": r["cls"], "flops": r["flops"] / c, "bytes": r["bytes"] / c,
                        "kernels": r["kernels"] / c, "bound": r["bound"]}
                ev.append({"ph": "X", "cat": r["cls"], "name": name, "pid": 1, "tid": 1, "ts": round(start, 3),
                           "dur": round(gpu_us, 3), "args": args})
                end = start + gpu_us
    return {"traceEvents": ev, "displayTimeUnit": "ms",
            "otherData": {"predicted_step_s": pred.time_s, "hardware": pred.hardware}}


def write_chrome_trace(pred: Prediction, path: str | Path) -> None:
    p = Path(path)
    raw = json.dumps(chrome_trace(pred)).encode()
    try:
        if p.suffix == ".gz":
            import gzip
            raw = gzip.compress(raw)
        p.write_bytes(raw)
    except OSError as e:
        raise RoofplanError(f"cannot write {p} ({e.strerror})") from None
