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

from collections import Counter
from dataclasses import dataclass

from simulator.core.errors import FieldError, FixError, RoofplanError
from simulator.core.models import ModelConfig, list_models, load_model
from simulator.core.ops import OP_CLASSES
from simulator.core.predict import Prediction
from simulator.core.workload import Job
from simulator.calibration.trace import Trace, shape


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


@dataclass(frozen=True)
class SegmentShape:
    """What one segment's recorded shapes say about the job it ran (None: the trace cannot tell).

    From the aten::linear calls (weight [N, K], input [.., S, K]): `hidden` is the most common K
    (q, k, v, gate and up read the hidden state, even under tensor parallelism); the MLP down
    projections are the weights [hidden, K > hidden] and their K is `ffn` (per TP rank); the
    LM head is the widest weight reading the hidden state, called fewer times than the down
    projections (once per forward), its N is `vocab` (per TP rank) and down calls / head calls
    is `layers`. `seq_lengths`: the S of the layer linears' [B, S, K] inputs (1 in decode; the
    LM head of a prefill sees only the last position and does not count; several when the
    segment holds forwards of several lengths, e.g. a whole generate()). `backward_ops`:
    autograd backward nodes (CPU ops named *Backward*) run in the segment."""
    backward_ops: int
    cpu_ops: int
    linears: int
    hidden: int | None = None
    ffn: int | None = None
    vocab: int | None = None
    layers: int | None = None
    seq_lengths: tuple[int, ...] = ()

    def describe(self) -> str:
        parts = [f"{k} {v}" for k, v in (("hidden", self.hidden), ("ffn", self.ffn), ("vocab", self.vocab))
                 if v is not None]
        if self.layers is not None:
            parts.append(f"{self.layers} layers")
        return ", ".join(parts)

    def step(self) -> tuple[str | None, str]:
        """(phase, description) of the step the segment looks like."""
        if self.backward_ops:
            return "train", f"a training step ({self.backward_ops} backward ops)"
        if len(self.seq_lengths) != 1:
            return None, "an inference step"
        if self.seq_lengths[0] > 1:
            return "prefill", f"a prefill ({self.seq_lengths[0]} tokens per sequence, no backward ops)"
        return "decode", "a decode step (1 token per sequence)"


def segment_shape(trace: Trace, segment: str) -> SegmentShape:
    """The SegmentShape of one segment (see its docstring)."""
    s = trace.segments.set_index("name").loc[segment]
    c = trace.cpu_ops[(trace.cpu_ops["ts_s"] >= s.t0_s) & (trace.cpu_ops["ts_s"] < s.t1_s) & ~trace.cpu_ops["user"]]
    backward = int(c["name"].str.contains("Backward", regex=False).sum())
    lin = []
    for dims in c.loc[c["name"] == "aten::linear", "dims"]:
        x, w = shape(dims, 0), shape(dims, 1)
        if x and len(w) == 2:
            lin.append((x, w[0], w[1]))                     # input, N, K
    if not lin:
        return SegmentShape(backward, len(c), 0)
    hidden = Counter(k for _, _, k in lin).most_common(1)[0][0]
    down = [k for _, n, k in lin if n == hidden and k > hidden]
    ffn = Counter(down).most_common(1)[0][0] if down else None
    widest = max(n for _, n, k in lin if k == hidden) if any(k == hidden for _, _, k in lin) else None
    heads = sum(1 for _, n, k in lin if k == hidden and n == widest)
    vocab = layers = None
    if down and widest and heads < len(down):
        vocab = widest
        layers = len(down) // heads if len(down) % heads == 0 else None
    seqs = sorted({x[-2] for x, n, k in lin if len(x) == 3 and not (k == hidden and n == vocab)})
    return SegmentShape(backward, len(c), len(lin), hidden, ffn, vocab, layers, tuple(seqs))


def _model_signature(m: ModelConfig) -> str:
    return f"hidden {m.hidden}, ffn {m.ffn_dim}, vocab {m.vocab}, {m.n_layers} layers"


def _model_agrees(sh: SegmentShape, m: ModelConfig, tp: int = 1, pp: int = 1, train: bool = False) -> bool:
    """Whether model `m` could have produced the shapes (one TP rank of `tp`, one stage of `pp`):
    hidden exactly; ffn and vocab whole or split tp ways (vocab padded by up to 256 per rank, as
    vLLM and Megatron pad the LM head); layers only for a forward of the whole model (training
    recomputes layers under checkpointing). Mixture-of-experts models: ffn of a dense, expert or
    shared MLP, layers unchecked (each expert is called for its tokens only)."""
    if sh.hidden is not None and sh.hidden != m.hidden:
        return False
    ffns = {m.ffn_dim} | ({m.expert_ffn_dim, m.shared_ffn_dim} if m.is_moe else set())
    if sh.ffn is not None and sh.ffn not in ffns | {f // tp for f in ffns}:
        return False
    if sh.vocab is not None and sh.vocab != m.vocab and not 0 <= sh.vocab * tp - m.vocab < 256 * tp:
        return False
    if sh.layers is not None and pp == 1 and not train and not m.is_moe and sh.layers != m.n_layers:
        return False
    return True


def check_job(trace: Trace, segment: str, model: ModelConfig, job: Job) -> list[str]:
    """Refuse a trace segment that is not the job's: a training step compared as prefill or
    decode (or the reverse), a prefill as decode, another model's shapes (see SegmentShape).
    One FixError line says what the segment looks like and which --model/--phase would match.
    Returns warnings where the trace cannot tell (no recorded shapes)."""
    sh = segment_shape(trace, segment)
    warnings = []
    looks_phase, looks_step = sh.step()
    phase_bad = False
    if job.phase == "train":
        phase_bad = sh.cpu_ops > 0 and not sh.backward_ops
    elif sh.backward_ops:
        phase_bad = True
    elif job.phase == "decode":
        phase_bad = looks_phase == "prefill"
    elif job.phase == "prefill":
        phase_bad = looks_phase == "decode" and job.seq > 1
    if not sh.cpu_ops:
        warnings.append(f"trace {trace.path} (segment {segment}) has no CPU ops: roofplan cannot check that it is a "
                        f"{job.phase} step of {model.name}; record with activities=[CPU, CUDA]")
    elif not sh.linears:
        warnings.append(f"trace {trace.path} (segment {segment}) has no aten::linear calls with recorded shapes: "
                        f"roofplan cannot check that it is of {model.name}; record with record_shapes=True")
    elif len(sh.seq_lengths) > 1 and job.phase != "train":
        warnings.append(f"trace {trace.path} (segment {segment}) holds forwards of {', '.join(map(str, sh.seq_lengths))} "
                        f"tokens per sequence (prefill and decode together?): its time is not one {job.phase} step; "
                        "profile one step per ProfilerStep, or compare one segment")
    model_bad = bool(sh.linears) and not _model_agrees(sh, model, job.tp, job.pp, job.phase == "train")
    if not (phase_bad or model_bad):
        return warnings
    esc = lambda t: t.replace("{", "{{").replace("}", "}}")      # the path goes into a format template
    fixes = {}
    looks = f"trace {esc(trace.path)} (segment {esc(segment)}) looks like "
    if model_bad:
        matches = [n for n in list_models() if _model_agrees(sh, load_model(n), job.tp, job.pp, looks_phase == "train")]
        looks += f"{looks_step} of a model with {sh.describe()}" if phase_bad else f"a model with {sh.describe()}"
        looks += f" ({', '.join(matches[:4])})" if matches else " (no model roofplan knows)"
        what = f"a {job.phase} step of {model.name}" if phase_bad else model.name
        looks += f", not {what} ({_model_signature(model)})"
        fixes["model"] = ("model", matches[0]) if len(matches) == 1 else "model"
    else:
        looks += f"{looks_step}, not a {job.phase} step"
    if phase_bad and looks_phase:
        fixes["phase"] = ("phase", looks_phase)
    elif phase_bad:
        fixes["phase"] = "phase"
    parts = ["{" + k + "}" if isinstance(v, tuple) else "the {" + k + "} the trace recorded" for k, v in fixes.items()]
    raise FixError(looks + "; pass " + (" " if all(isinstance(v, tuple) for v in fixes.values()) else ", ").join(parts),
                   **fixes)


def segment_wall_s(trace: Trace, segment: str) -> float:
    s = trace.segments.set_index("name").loc[segment]
    k = trace.kernels[trace.kernels["segment"] == segment]
    c = trace.cpu_ops[(trace.cpu_ops["ts_s"] >= s.t0_s) & (trace.cpu_ops["ts_s"] < s.t1_s)]
    end = max(float((k["ts_s"] + k["dur_s"]).max()) if len(k) else s.t0_s,
              float((c["ts_s"] + c["dur_s"]).max()) if len(c) else s.t0_s)
    start = min(float(s.t0_s), float(k["ts_s"].min()) if len(k) else np.inf)
    return end - start


def compare(trace: Trace, segment: str, pred: Prediction, stream_gap_s: float = 0.0) -> tuple[pd.DataFrame, dict]:
    """Per class: measured kernel time and count vs predicted kernel time and count; plus the
    end-to-end summary. A trace's kernel durations leave out the gaps between back-to-back
    kernels, which the predicted stream time includes (the executor's `stream_gap_s` per kernel)."""
    meas = trace.by_class(segment)
    p = pred.ops.groupby("cls")[["gpu_time_s", "time_s", "kernels"]].sum()
    gaps = p["kernels"] * stream_gap_s * (p.index != "communication")
    p["gpu_time_s"] = p["gpu_time_s"] - gaps
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
    stall_s, stalls = host_stalls(trace, segment)
    weights = df["measured_s"] / max(kern_meas, 1e-30)
    summary = {
        "segment": segment, "measured_kernel_time_s": kern_meas, "predicted_gpu_time_s": kern_pred,
        "kernel_time_error": kern_pred / kern_meas - 1 if kern_meas else np.nan,
        "measured_wall_s": wall, "predicted_step_s": pred.time_s, "step_error": pred.time_s / wall - 1,
        "class_mape_weighted": float(np.nansum(np.abs(df["error"].fillna(0)) * weights)),
        "bound": pred.bound, "measured_host_stall_s": stall_s, "host_stalls": stalls,
    }
    return df, summary


def host_stalls(trace: Trace, segment: str) -> tuple[float, int]:
    """(seconds, count) of the segment's GPU idle gaps longer than trace_fit.MAX_STREAM_GAP_S
    between consecutive kernels: the stream waiting for the host, which under the profiler is
    slower than without it (a GPU-bound step's traced wall time carries them, its prediction not)."""
    from simulator.calibration.trace_fit import MAX_STREAM_GAP_S
    gaps = trace.kernel_gaps(segment)
    long = gaps[gaps > MAX_STREAM_GAP_S]
    return float(long.sum()), int(len(long))


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
