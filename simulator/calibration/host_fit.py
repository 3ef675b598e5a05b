"""Host-cost table of an eager executor from the CPU timeline of a profiler trace.

The host lane of the step assembler (simulator.core.step: `op_host_s`, `lanes`) charges, per
step, host_overhead_per_step_us before the first kernel (plus host_new_shape_us in decode), per
decoder layer host_per_layer_us, and per op host_per_op_us[class] + kernels x
host_overhead_per_kernel_us. This module measures those costs on the host-bound step of a
torch.profiler trace (the one whose kernels fill the least of its CPU span):

1. Top-level ops: CPU ops with no enclosing CPU op (annotations do not count) on the thread
   that runs the step, in issue order, each with the GPU activities (kernels, memsets) it
   issued. Kinds (`op_kind`): attention (SDPA), gemm (linear/matmul/mm), view (issues nothing:
   view, reshape, a cast to the same dtype), norm (pow/mean/rsqrt), copy (cat, copy_, casts,
   embedding), elementwise (the rest).
2. Layers: the run of identical blocks of op names around the attention calls (one per decoder
   layer); the ops before and after it are the step's ends (embedding, rotary tables, final
   norm, LM head).
3. Profiled costs: the mean CPU time per kind; the Python between ops (host time of the step not
   inside a top-level op) per layer and outside the layers. The step's host time runs from its
   first op to the next step (or the last host event), less synchronising calls (waiting on the
   GPU is not host work). An attention call >= 10 x the median call (and >= 1 ms) builds a
   backend graph for a new shape (cuDNN SDPA at each decode step's new KV length): it is counted
   as a steady call, its excess is the new-shape cost.
4. Mapping onto roofplan ops (`profile_fields`): per kernel = the mean elementwise/norm/copy op
   (roofplan counts one kernel per such aten op); per GEMM / attention op = the mean linear /
   steady SDPA call less its kernels at the per-kernel cost; per layer = Python per layer + view
   ops per layer; per step = Python outside the layers + view ops there.
5. Profiler deflation: record_shapes and the profiler's per-event bookkeeping slow every op
   about 2x, but not uniformly (the graph build, native code with few events, much less), so
   the profiled costs are scaled by one factor k fitted on measurements without the profiler:
   `fit_end_to_end` solves k so that `simulator.core.predict.predict` reproduces the un-profiled
   batch-1 prefill cases of the traced model (host-bound, no graph build), then
   host_new_shape_us so that it reproduces the decode case(s), and reports the other cases of
   the executor as held out. With only the traced step's own un-profiled time (`--step-time`)
   k = step time / traced host time, which needs a step without a graph build (one number
   cannot give both the deflation and the build).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.core.errors import RoofplanError
from simulator.calibration.trace import Trace

HOST_BOUND_GPU_BUSY = 0.5   # a step whose kernels fill less than this share of its CPU span is host-bound
KINDS = ("view", "elementwise", "norm", "copy", "gemm", "attention")
DISPATCH_KINDS = ("elementwise", "norm", "copy")     # one aten op, one kernel: the per-kernel cost
BUILD_FACTOR, BUILD_MIN_S = 10.0, 1e-3               # an attention call this much slower builds a graph
SYNC_CALLS = frozenset({"cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy",
                        "cuStreamSynchronize", "cuCtxSynchronize", "cuEventSynchronize"})

_GEMM = {"linear", "matmul", "mm", "bmm", "addmm", "baddbmm"}
_NORM = {"pow", "mean", "rsqrt", "native_layer_norm", "rms_norm", "_fused_rms_norm", "layer_norm"}
_COPY = {"cat", "copy_", "to", "_to_copy", "contiguous", "pad", "index_select", "embedding", "clone", "index",
         "index_copy_", "gather", "scatter"}
_ATTN = {"scaled_dot_product_attention", "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention",
         "_scaled_dot_product_efficient_attention", "_flash_attention_forward"}


def op_kind(name: str, kernels: int) -> str:
    """Kind of one top-level forward op; `kernels`: GPU activities it issued (a cast to the same
    dtype or contiguous() on a contiguous tensor issues none and costs like a view)."""
    base = name.split("::", 1)[-1]
    if base in _ATTN:
        return "attention"
    if base in _GEMM:
        return "gemm"
    if kernels == 0:
        return "view"
    if base in _NORM:
        return "norm"
    if base in _COPY:
        return "copy"
    return "elementwise"


def top_level_ops(trace: Trace) -> pd.DataFrame:
    """Top-level CPU ops (no enclosing CPU op; annotations do not count), indexed by their
    cpu_ops row: name, ts_s, dur_s, tid, kernels (GPU activities issued inside), kind."""
    c = trace.cpu_ops
    parent, user = c["parent"].to_numpy(), c["user"].to_numpy()
    outer = np.full(len(c), -1)
    for i in range(len(c)):          # rows are in start order: a parent precedes its children
        p = parent[i]
        outer[i] = outer[p] if p >= 0 and outer[p] >= 0 else (-1 if user[i] else i)
    issued = Counter(int(outer[int(i)]) for i in trace.kernels["op_index"]
                     if i is not None and not (isinstance(i, float) and math.isnan(i)) and outer[int(i)] >= 0)
    top = c.loc[~user & (outer == np.arange(len(c))), ["name", "ts_s", "dur_s", "tid"]].copy()
    top["kernels"] = [issued.get(i, 0) for i in top.index]
    top["kind"] = [op_kind(n, k) for n, k in zip(top["name"], top["kernels"])]
    return top


@dataclass(frozen=True)
class HostStep:
    """One step's host timeline. `ops`: top-level ops of the step's thread in issue order with
    kind, layer (-1 before the layers, `layers` after) and build (the call built a graph)."""
    segment: str
    phase: str
    ops: pd.DataFrame
    t0_s: float
    t1_s: float
    sync_s: float              # synchronising calls in the window, outside ops
    layers: int
    layer_t0_s: float
    layer_t1_s: float
    layer_sync_s: float        # of which inside the layers

    @property
    def host_s(self) -> float:
        return self.t1_s - self.t0_s - self.sync_s

    @property
    def layer_region_s(self) -> float:
        return self.layer_t1_s - self.layer_t0_s - self.layer_sync_s

    @property
    def in_layers(self) -> pd.DataFrame:
        return self.ops[(self.ops["layer"] >= 0) & (self.ops["layer"] < self.layers)]

    @property
    def outside(self) -> pd.DataFrame:
        return self.ops[(self.ops["layer"] < 0) | (self.ops["layer"] >= self.layers)]


def host_step(trace: Trace, segment: str, tops: pd.DataFrame | None = None) -> HostStep:
    """The host timeline of one segment (see module doc, steps 1-3)."""
    tops = top_level_ops(trace) if tops is None else tops
    segs = trace.segments.sort_values("t0_s")
    seg = segs.set_index("name").loc[segment]
    mine = tops[(tops["ts_s"] >= seg.t0_s) & (tops["ts_s"] < seg.t1_s)]
    if not len(mine):
        raise RoofplanError(f"trace {trace.path}: segment {segment} has no CPU ops; record with activities=[CPU, CUDA]")
    tid = mine["tid"].iloc[0]
    ops = mine[mine["tid"] == tid].sort_values("ts_s", kind="stable").copy()
    ts, end = ops["ts_s"].to_numpy(), (ops["ts_s"] + ops["dur_s"]).to_numpy()
    rt = trace.runtime if trace.runtime is not None else pd.DataFrame(columns=["name", "ts_s", "dur_s", "tid"])
    rt = rt[rt["tid"] == tid]
    later = segs[segs["t0_s"] > seg.t0_s]["t0_s"]
    t0 = float(ts[0])
    if len(later):
        t1 = float(later.iloc[0])
    else:      # the last step: to the last host event of its thread (a trailing sync included, then
        # removed), inside its ProfilerStep annotation when it has one
        tail = rt[rt["ts_s"] >= t0]
        if seg.phase == "step":
            tail = tail[tail["ts_s"] < seg.t1_s]
        t1 = float(max(end.max(), (tail["ts_s"] + tail["dur_s"]).max() if len(tail) else 0.0))
    sync = rt[rt["name"].isin(SYNC_CALLS) & (rt["ts_s"] >= t0) & (rt["ts_s"] < t1)]
    if len(sync):      # a sync inside an op is part of that op's time; only top-level ones are removed
        j = np.searchsorted(ts, sync["ts_s"].to_numpy(), side="right") - 1
        inside = (j >= 0) & (sync["ts_s"].to_numpy() < end[np.maximum(j, 0)])
        sync = sync[~inside]
    names, kinds = ops["name"].tolist(), ops["kind"].tolist()
    att = [i for i, k in enumerate(kinds) if k == "attention"]
    where = f"trace {trace.path}: segment {segment}"
    if len(att) < 2:
        raise RoofplanError(f"{where} has {len(att)} attention call(s); the host fit needs a decoder step with 2 or more layers")
    gaps = [b - a for a, b in pairwise(att)]
    period = gaps[0]
    if any(g != period for g in gaps):
        raise RoofplanError(f"{where}: the layers issue different op sequences (attention calls {period} and "
                            f"{next(g for g in gaps if g != period)} ops apart); the host fit needs identical layers")
    start = att[0]
    while start > max(att[0] - period + 1, 0) and names[start - 1] == names[start - 1 + period]:
        start -= 1
    n_layers = len(att)
    stop = start + n_layers * period
    block = names[start:start + period]
    if stop > len(names) or any(names[start + i * period:start + (i + 1) * period] != block for i in range(n_layers)):
        raise RoofplanError(f"{where}: the layers issue different op sequences; the host fit needs identical layers")
    pos = np.arange(len(ops))
    ops["layer"] = np.where(pos < start, -1, np.where(pos >= stop, n_layers, (pos - start) // period))
    att_dur = ops.loc[ops["kind"] == "attention", "dur_s"]
    ops["build"] = (ops["kind"] == "attention") & (ops["dur_s"] >= max(BUILD_FACTOR * float(att_dur.median()), BUILD_MIN_S))
    l0 = float(ts[start])
    l1 = float(ts[stop]) if stop < len(ts) else t1
    in_region = (sync["ts_s"] >= l0) & (sync["ts_s"] < l1)
    return HostStep(segment, str(seg.phase), ops.reset_index(drop=True), t0, t1, float(sync["dur_s"].sum()), n_layers,
                    l0, l1, float(sync.loc[in_region, "dur_s"].sum()))


def host_bound_segment(trace: Trace, max_busy: float) -> tuple[str, dict] | None:
    """The segment whose kernels fill the smallest share (< max_busy) of its CPU span, with its stats."""
    st = trace.segment_stats()
    st = st[st["kernels"] > 0].copy()
    st["busy"] = st["kernel_time_s"] / st["cpu_span_s"].clip(lower=1e-12)
    hb = st[st["busy"] < max_busy]
    if not len(hb):
        return None
    s = hb.sort_values("busy").iloc[0]
    k = trace.kernels[trace.kernels["segment"] == s["segment"]]
    return str(s["segment"]), {"segment": str(s["segment"]), "launches": int(k["op_index"].nunique()),
                               "kernels": int(s["kernels"]), "traced_cpu_span_s": float(s["cpu_span_s"]),
                               "kernel_time_s": float(s["kernel_time_s"]), "gpu_busy": float(s["busy"])}


@dataclass(frozen=True)
class TraceCosts:
    """Profiled host costs of one step (seconds): mean per kind (graph builds counted as steady
    calls), Python between ops per layer and outside the layers, view ops likewise, the graph
    build's excess over a steady attention call (per step), and the kind counts."""
    kind_s: dict
    counts: dict
    python_layer_s: float
    python_step_s: float
    view_layer_s: float
    view_step_s: float
    build_s: float
    builds: int
    layers: int

    @property
    def per_kernel_s(self) -> float:
        n = sum(self.counts[k] for k in DISPATCH_KINDS)
        return sum(self.counts[k] * self.kind_s[k] for k in DISPATCH_KINDS) / n if n else 0.0


def trace_costs(step: HostStep) -> TraceCosts:
    ops = step.ops
    steady = ops[~ops["build"]]
    kind_s = {k: float(steady.loc[steady["kind"] == k, "dur_s"].mean()) if (steady["kind"] == k).any() else 0.0
              for k in KINDS}
    counts = {k: int((ops["kind"] == k).sum()) for k in KINDS}
    lay, out = step.in_layers, step.outside
    builds = ops[ops["build"]]
    return TraceCosts(
        kind_s=kind_s, counts=counts,
        python_layer_s=(step.layer_region_s - float(lay["dur_s"].sum())) / step.layers,
        python_step_s=(step.host_s - step.layer_region_s) - float(out["dur_s"].sum()),
        view_layer_s=float(lay.loc[lay["kind"] == "view", "dur_s"].sum()) / step.layers,
        view_step_s=float(out.loc[out["kind"] == "view", "dur_s"].sum()),
        build_s=float(builds["dur_s"].sum()) - len(builds) * kind_s["attention"], builds=len(builds), layers=step.layers)


def predict_step_host(step: HostStep, c: TraceCosts) -> dict:
    """Host time of a traced step from another step's profiled costs, op by op as the trace issued
    them (kind means + Python per layer and per step + graph builds): the whole step, and its
    second half of layers (past the profiler's warm-up). Seconds."""
    ops = step.ops
    per_op = np.array([c.kind_s[k] for k in ops["kind"]])
    pred = float(per_op.sum()) + step.layers * c.python_layer_s + c.python_step_s + int(ops["build"].sum()) * c.build_s
    half = step.layers // 2
    late = ops[(ops["layer"] >= half) & (ops["layer"] < step.layers)]
    t_half = float(late["ts_s"].iloc[0])
    meas_late = step.layer_t1_s - t_half - float(late.loc[late["build"], "dur_s"].sum()) \
        + int(late["build"].sum()) * c.kind_s["attention"]
    pred_late = float(np.array([c.kind_s[k] for k in late["kind"]]).sum()) + (step.layers - half) * c.python_layer_s
    return {"segment": step.segment, "phase": step.phase, "ops": len(ops), "layers": step.layers,
            "measured_host_s": step.host_s, "predicted_host_s": pred, "error": pred / step.host_s - 1,
            "late_layers": f"L{half}-L{step.layers - 1}", "measured_late_layer_s": meas_late / (step.layers - half),
            "predicted_late_layer_s": pred_late / (step.layers - half), "late_layer_error": pred_late / meas_late - 1}


def kernels_per_op(ops) -> dict:
    """Kernels of one roofplan GEMM and attention op (roofplan's op list of the traced model)."""
    out = {}
    for cls in ("gemm", "attention"):
        ks = [float(np.mean(o.kernels)) for o in ops if o.cls == cls and o.name.startswith("layer.")]
        out[cls] = float(np.mean(ks)) if ks else 1.0
    return out


def profile_fields(c: TraceCosts, kpo: dict, k: float = 1.0) -> dict:
    """The executor's host fields (microseconds) from profiled costs deflated by k (module doc, 4)."""
    per_kernel = c.per_kernel_s
    return {"host_overhead_per_kernel_us": k * per_kernel * 1e6,
            "host_per_op_us": {cls: k * max(c.kind_s[cls] - kpo[cls] * per_kernel, 0.0) * 1e6 for cls in ("gemm", "attention")},
            "host_per_layer_us": k * (c.python_layer_s + c.view_layer_s) * 1e6,
            "host_overhead_per_step_us": k * (c.python_step_s + c.view_step_s) * 1e6}


def rounded(fields: dict) -> dict:
    """0.01 us per kernel and per op, 1 us per layer and per step, 10 us per new shape."""
    out = {"host_overhead_per_kernel_us": round(fields["host_overhead_per_kernel_us"], 2),
           "host_per_op_us": {k: round(v, 2) for k, v in fields["host_per_op_us"].items()},
           "host_per_layer_us": int(round(fields["host_per_layer_us"])),
           "host_overhead_per_step_us": int(round(fields["host_overhead_per_step_us"]))}
    if "host_new_shape_us" in fields:
        out["host_new_shape_us"] = int(round(fields["host_new_shape_us"], -1))
    return out


def kind_table(c: TraceCosts, k: float | None, new_shape_us: float | None = None) -> dict:
    """Per kind: count, mean us profiled, us un-profiled (k x profiled); plus the Python and build rows."""
    t = {kind: {"count": c.counts[kind], "mean_us_profiled": round(c.kind_s[kind] * 1e6, 2)} for kind in KINDS}
    t["python_per_layer"] = {"count": c.layers, "mean_us_profiled": round(c.python_layer_s * 1e6, 2)}
    t["python_outside_layers"] = {"count": 1, "mean_us_profiled": round(c.python_step_s * 1e6, 2)}
    t["new_shape_build"] = {"count": c.builds, "mean_us_profiled": round(c.build_s * 1e6, 1)}
    for row in t.values():
        if k is not None:
            row["us_unprofiled"] = round(row["mean_us_profiled"] * k, 2)
    if new_shape_us is not None and c.builds:
        t["new_shape_build"]["us_unprofiled"] = new_shape_us     # fitted, not k x profiled
    return t


# ---------------------------------------------------------------- deflation by un-profiled measurements
def traced_model(struct: dict, layers: int, candidates: list[str]):
    """The first of `candidates` (model names) with the trace's hidden size, MLP width and layer
    count, or None."""
    from simulator.core.models import load_model
    for name in candidates:
        try:
            m = load_model(name)
        except RoofplanError:
            continue
        if m.hidden == struct.get("hidden") and m.ffn_dim == struct.get("ffn") and m.n_layers == layers:
            return m
    return None


def _executor(prof: dict, name: str):
    from simulator.core.profiles import parse_executor_profile
    d = {k: v for k, v in prof.items() if k not in ("name", "kind")}
    d.setdefault("description", "being fitted")
    d.setdefault("source", "being fitted")
    return parse_executor_profile(d, Path(f"{name}.yaml"))


def _case_id(case: dict) -> str:
    return str(case.get("id") or f"{case['model']} {case['phase']} b{case['batch']} "
               f"{'l' + str(case.get('context', 0)) if case['phase'] == 'decode' else 's' + str(case.get('seq', 0))}")


def _plain(case: dict) -> bool:
    """No offload, one GPU: the host lane alone sets the pace of a small step."""
    return not case.get("offload") and all(int(case.get(k, 1)) == 1 for k in ("tp", "pp", "dp"))


def pick_executor(cases: list[dict], model: str, preferred: str) -> str | None:
    """The executor whose cases the fit uses: `preferred` (the output profile's name) when the file
    has a batch-1 prefill of `model` with it, else the only non-default executor that has one."""
    have = sorted({c.get("executor", "default") for c in cases if c["model"] == model and c["phase"] == "prefill"
                   and int(c["batch"]) == 1 and _plain(c)} - {"default"})
    if preferred in have:
        return preferred
    return have[0] if len(have) == 1 else None


def fit_end_to_end(c: TraceCosts, kpo: dict, prof: dict, name: str, model, cases: list[dict], system, kp,
                   where: str) -> tuple[dict, dict]:
    """k on the un-profiled batch-1 prefill cases of `model` with executor `name` (host-bound ones),
    then host_new_shape_us on its decode cases when the traced step built a graph (the executor's
    other cases are predicted once the whole profile is fitted: `evaluate_cases`, called by
    trace_fit.fit_executor_profile). `prof`: the profile fitted so far (structure, GEMM scale,
    kept fields). Returns (host fields, evidence)."""
    from scipy.optimize import brentq

    from simulator.calibration.accuracy import job_from_case
    from simulator.core.models import load_model
    from simulator.core.predict import predict

    models = {model.name: model}
    mine = [x for x in cases if x.get("executor", "default") == name]
    pre = [x for x in mine if x["model"] == model.name and x["phase"] == "prefill" and int(x["batch"]) == 1 and _plain(x)]
    dec = [x for x in mine if x["model"] == model.name and x["phase"] == "decode" and _plain(x)]
    if not pre:
        raise RoofplanError(f"{where} has no batch-1 prefill of {model.name} with executor {name}; the profiler "
                            "deflation is fitted on one (un-profiled, host-bound, no graph build)")
    if c.builds and not dec:
        raise RoofplanError(f"{where} has no decode case of {model.name} with executor {name}; the traced step builds "
                            f"an attention graph per step ({c.build_s * 1e3:.1f} ms traced), fitted on one")

    def run(case, fields: dict):
        if case["model"] not in models:
            models[case["model"]] = load_model(case["model"])
        ex = _executor({**prof, **fields}, name)
        return predict(models[case["model"]], system, job_from_case(case), ex, kp, check_memory=False, with_ops=False)

    def solve(f, hi: float, what: str) -> float:
        """Root on [0, hi] of f, the mean log error of the predictions (rising in the parameter)."""
        lo_err, hi_err = f(0.0), f(hi)
        if lo_err > 0 or hi_err < 0:
            side = "with no host cost at all" if lo_err > 0 else f"even at {hi:g}"
            raise RoofplanError(f"{where}: cannot fit {what}: the prediction misses the measured time {side}")
        return float(brentq(f, 0.0, hi, xtol=1e-9))

    def deflated(k: float) -> dict:
        return {**profile_fields(c, kpo, k), "host_new_shape_us": 0}

    def k_error(group):
        return lambda k: float(np.mean([math.log(run(x, deflated(k)).time_s / x["time_s"]) for x in group]))
    k = solve(k_error(pre), 5.0, "the profiler deflation")
    # a batch-1 prefill that the GPU bounds says nothing about the host: refit without it
    host_bound = [x for x in pre if run(x, deflated(k)).bound == "host"]
    if not host_bound:
        raise RoofplanError(f"{where}: the batch-1 prefill cases of {model.name} ({', '.join(map(_case_id, pre))}) are "
                            "bound by the GPU, not the host; the profiler deflation needs a host-bound one (a short prompt)")
    if len(host_bound) < len(pre):
        pre = host_bound
        k = solve(k_error(pre), 5.0, "the profiler deflation")
    fields = rounded(profile_fields(c, kpo, k))
    new_shape = 0.0
    if c.builds:
        new_shape = solve(lambda us: float(np.mean([math.log(run(x, {**fields, "host_new_shape_us": us}).time_s / x["time_s"])
                                                    for x in dec])), 1e7, "the new-shape cost")
    fields = rounded({**fields, "host_new_shape_us": new_shape})
    ev = {"k_prof": k, "k_fitted_on": [{"id": _case_id(x), "measured_s": x["time_s"]} for x in pre],
          "new_shape_fitted_on": [{"id": _case_id(x), "measured_s": x["time_s"]} for x in dec] if c.builds else []}
    return fields, ev


def evaluate_cases(prof: dict, name: str, cases: list[dict], fitted: set[str], traced: str, system, kp) -> dict:
    """Every case of executor `name` predicted with profile `prof`, each marked fitted or held out
    (of the traced model or another): {"end_to_end": rows, "other_models": the held-out inference
    cases of other models, summarised (when there are any)}."""
    from simulator.calibration.accuracy import job_from_case
    from simulator.core.models import load_model
    from simulator.core.predict import predict

    ex, models, rows = _executor(prof, name), {}, []
    for x in cases:
        role = "fitted" if _case_id(x) in fitted else (
            "held out: traced model" if x["model"] == traced else "held out: other model")
        row = {"id": _case_id(x), "model": x["model"], "phase": x["phase"], "batch": int(x["batch"]),
               "seq": int(x.get("seq", 0)), "context": int(x.get("context", 0)), "role": role,
               "measured_s": float(x["time_s"])}
        try:
            if x["model"] not in models:
                models[x["model"]] = load_model(x["model"])
            p = predict(models[x["model"]], system, job_from_case(x), ex, kp, check_memory=False, with_ops=False)
        except RoofplanError as e:
            rows.append({**row, "note": str(e)})
            continue
        rows.append({**row, "predicted_s": p.time_s, "error": p.time_s / x["time_s"] - 1, "bound": p.bound})
    out = {"end_to_end": rows}
    other = [r for r in rows if r["role"] == "held out: other model" and "error" in r and r["phase"] in ("prefill", "decode")]
    if other:
        errs = [r["error"] for r in other]
        out["other_models"] = {"models": sorted({r["model"] for r in other}), "inference_cases": len(errs),
                               "min_error": min(errs), "max_error": max(errs), "mape": float(np.mean(np.abs(errs)))}
    return out


def fit_step_time(c: TraceCosts, step: HostStep, kpo: dict, step_time_s: float, where: str) -> tuple[dict, dict]:
    """k = the traced step's un-profiled time / its traced host time (module doc, 5)."""
    if c.builds:
        raise RoofplanError(f"{where}: --step-time is one number, but step {step.segment} has two unknowns, the profiler "
                            f"deflation and a graph build ({c.build_s * 1e3:.1f} ms traced); pass --end-to-end E2E.yaml "
                            "(un-profiled batch-1 prefill and decode cases of the traced model) instead")
    k = step_time_s / step.host_s
    return rounded({**profile_fields(c, kpo, k), "host_new_shape_us": 0.0}), {"k_prof": k, "k_fitted_on": [
        {"id": f"--step-time (the traced {step.segment} step)", "measured_s": step_time_s}], "new_shape_fitted_on": []}


def fit_host(trace: Trace, segment: str, stats: dict, struct: dict | None, prof: dict, name: str, system, kp,
             step_time_s: float | None = None, end_to_end: tuple[str, list[dict]] | None = None) -> tuple[dict, dict]:
    """The executor's host fields from the host-bound `segment` of `trace`, deflated by
    un-profiled measurements: `end_to_end` (file name, its cases) or the traced step's own
    `step_time_s` (module doc). Returns (fields, evidence for the report)."""
    from simulator.core.models import list_models
    from simulator.core.ops import forward_ops
    from simulator.core.workload import Job

    where = f"trace {Path(trace.path).name}"
    if end_to_end is None and step_time_s is None:
        raise RoofplanError(f"{where}: its host-bound step {segment} ran under the profiler, which slows the host about 2x; "
                            "pass --end-to-end E2E.yaml with un-profiled batch-1 prefill and decode cases of the traced "
                            "model (or --step-time S of a traced step without a graph build) to deflate its host costs")
    if end_to_end is not None and step_time_s is not None:
        raise RoofplanError("--step-time and --end-to-end both set the profiler deflation; pass one")
    tops = top_level_ops(trace)
    step = host_step(trace, segment, tops)
    c = trace_costs(step)
    struct = struct or {}
    if end_to_end is not None:
        e2e_name, cases = end_to_end
        model = traced_model(struct, step.layers, sorted({x["model"] for x in cases}))
        if model is None:
            raise RoofplanError(f"{e2e_name} has no model with the traced one's shape (hidden {struct.get('hidden')}, "
                                f"MLP {struct.get('ffn')}, {step.layers} layers); measure that model without the profiler")
        ex_name = pick_executor(cases, model.name, name)
        if ex_name is None:
            have = sorted({x.get("executor", "default") for x in cases if x["model"] == model.name} - {"default"})
            raise RoofplanError(f"{e2e_name}: no batch-1 prefill of {model.name} with executor '{name}' (the output's name)"
                                + (f"; name the output after one of: {', '.join(have)}" if have else ""))
    else:
        model = traced_model(struct, step.layers, list_models())
    kpo = {"gemm": 1.0, "attention": 1.0}
    if model is not None:
        probe = _executor(prof, name)
        kpo = kernels_per_op(forward_ops(model, Job("decode", batch=1, context=128), probe, layers=model.n_layers))
    if end_to_end is not None:
        fields, fit_ev = fit_end_to_end(c, kpo, prof, ex_name, model, end_to_end[1], system, kp, end_to_end[0])
        fit_ev["executor_cases"] = ex_name
    else:
        fields, fit_ev = fit_step_time(c, step, kpo, step_time_s, where)
    k = fit_ev["k_prof"]
    traced = []
    for s in trace.segments["name"]:
        if s == segment:
            continue
        try:
            traced.append(predict_step_host(host_step(trace, s, tops), c))
        except RoofplanError:
            continue
    held = {"traced_steps": traced}
    ev = {"trace": Path(trace.path).name, **stats, "wall_s": step_time_s or stats["traced_cpu_span_s"], "host_s": step.host_s, "sync_s": step.sync_s,
          "layers": step.layers, "ops": len(step.ops), "ops_per_layer": len(step.in_layers) // step.layers,
          "model": model.name if model is not None else None, "kernels_per_op": kpo,
          "kinds": kind_table(c, k, fields.get("host_new_shape_us")),
          "profiled_fields_us": rounded({**profile_fields(c, kpo), "host_new_shape_us": c.build_s * 1e6}),
          **fit_ev, "held_out": held}
    return fields, ev


# ---------------------------------------------------------------- training steps
TRAIN_NODE = "autograd::engine::evaluate_function: "
TRAIN_NODE_CLASSES = ("elementwise", "norm", "gemm", "attention", "embedding", "loss")
_NODE_GEMM = {"Mm", "Bmm", "Addmm", "Linear", "Matmul"}
_NODE_NORM = {"Pow", "Rsqrt", "Mean", "NativeLayerNorm", "RmsNorm", "FusedRmsNorm"}
_NODE_LOSS = {"NllLoss", "NllLoss2D", "LogSoftmax", "CrossEntropyLoss"}


def node_class(name: str) -> str:
    """The op class of the forward kernel an autograd node differentiates (its name less
    "Backward<n>"): MmBackward0 -> gemm, PowBackward0 -> norm, the SDPA backward -> attention."""
    base = re.sub(r"Backward\d*$", "", name.removeprefix(TRAIN_NODE))
    if "Attention" in base:
        return "attention"
    for cls, names in (("gemm", _NODE_GEMM), ("norm", _NODE_NORM), ("loss", _NODE_LOSS)):
        if base in names:
            return cls
    return "embedding" if base == "Embedding" else "elementwise"


@dataclass(frozen=True)
class TrainHost:
    """One training step's CPU timeline, profiled seconds: the forward (the thread that runs the
    model, from the step's first op to the first autograd node), the backward (the autograd
    engine's thread, first node to last), optimizer.step + zero_grad, and the backward nodes
    that launch kernels: count and mean CPU time per class (`node_class`)."""
    segment: str
    layers: int
    forward_s: float
    backward_s: float
    optimizer_s: float
    node_count: dict
    node_s: dict
    bookkeeping_nodes: int      # view and gradient-accumulation nodes that launch nothing


def _sync_s(trace: Trace, tid, t0: float, t1: float) -> float:
    rt = trace.runtime
    if rt is None:
        return 0.0
    s = rt[(rt["tid"] == tid) & rt["name"].isin(SYNC_CALLS) & (rt["ts_s"] >= t0) & (rt["ts_s"] < t1)]
    return float(s["dur_s"].sum())


def train_host_step(trace: Trace, segment: str, tops: pd.DataFrame | None = None) -> TrainHost:
    """The host timeline of a training segment (see TrainHost)."""
    tops = top_level_ops(trace) if tops is None else tops
    seg = trace.segments.set_index("name").loc[segment]
    where = f"trace {Path(trace.path).name}: segment {segment}"
    mine = tops[(tops["ts_s"] >= seg.t0_s) & (tops["ts_s"] < seg.t1_s)]
    nodes = mine[mine["name"].str.startswith(TRAIN_NODE)]
    if not len(nodes):
        raise RoofplanError(f"{where} has no autograd backward nodes ({TRAIN_NODE}...); record a whole training step")
    b0, b1 = float(nodes["ts_s"].min()), float((nodes["ts_s"] + nodes["dur_s"]).max())
    main = mine.sort_values("ts_s").iloc[0]
    fwd = mine[(mine["tid"] == main["tid"]) & (mine["ts_s"] < b0)]
    attn = fwd[fwd["kind"] == "attention"]
    if len(attn) < 2:
        raise RoofplanError(f"{where}: its forward has {len(attn)} attention call(s); the training host fit needs a decoder "
                            "step with 2 or more layers")
    bwd_tid = nodes["tid"].iloc[0]
    if ((mine["tid"] == bwd_tid) & (mine["kind"] == "attention") & (mine["ts_s"] >= b0)).any():
        raise RoofplanError(f"{where} recomputes the forward in its backward (gradient checkpointing); the training host "
                            "fit needs a step without recompute")
    f0 = float(fwd["ts_s"].min())
    c = trace.cpu_ops
    opt = c[c["user"] & c["name"].str.startswith(("Optimizer.step", "Optimizer.zero_grad"))
            & (c["ts_s"] >= b0) & (c["ts_s"] < seg.t1_s)]
    work = nodes[nodes["kernels"] > 0]
    cls = work["name"].map(node_class)
    return TrainHost(segment, len(attn), b0 - f0 - _sync_s(trace, main["tid"], f0, b0),
                     b1 - b0 - _sync_s(trace, bwd_tid, b0, b1), float(opt["dur_s"].sum()),
                     {k: int((cls == k).sum()) for k in TRAIN_NODE_CLASSES},
                     {k: float(work.loc[cls == k, "dur_s"].mean()) if (cls == k).any() else 0.0 for k in TRAIN_NODE_CLASSES},
                     int(len(nodes) - len(work)))


def fit_train_host(trace: Trace, segment: str, k: float, prof: dict, name: str, system, kp) -> tuple[dict, dict]:
    """The executor's training host fields from a traced training step, deflated by the profiler
    factor k of the inference fit (the same profiler and machine): each backward node class costs
    k x its mean traced node; host_backward_per_layer_us and host_autograd_scale are solved so
    that the host lane of the traced model (simulator.core.step) issues the forward and the
    backward in k x their traced spans; host_optimizer_us = k x optimizer.step + zero_grad.
    Returns (fields, evidence)."""
    from simulator.calibration.trace_fit import layer_structure
    from simulator.core.models import list_models
    from simulator.core.roofline import op_host_s
    from simulator.core.step import end_ops, stage_ops, train_host_s
    from simulator.core.workload import Job

    where = f"trace {Path(trace.path).name}: segment {segment}"
    th = train_host_step(trace, segment)
    model = traced_model(layer_structure(trace), th.layers, list_models())
    if model is None:
        raise RoofplanError(f"{where}: no model in the zoo has the traced shape ({th.layers} layers); add its config to "
                            "workloads/models")
    if model.is_moe:
        raise RoofplanError(f"{where}: the training host fit covers dense decoders; {model.name} is a mixture of experts")
    fallback = th.node_s["elementwise"]
    per_node_us = {c: round(k * (th.node_s[c] or fallback) * 1e6, 1) for c in TRAIN_NODE_CLASSES}
    ex = _executor({**prof, "host_backward_per_kernel_us": per_node_us, "host_backward_per_layer_us": 0,
                    "host_autograd_scale": 1.0}, name)
    job = Job(phase="train", batch=1, seq=1024, recompute="none")      # host costs do not depend on the sizes
    fwd, _ = stage_ops(model, job, ex, False)
    fwd = [o for o in fwd if o.cls != "communication"]
    emb, head = end_ops(model, job, ex)
    ends = emb + head
    L = model.n_layers
    # forward lane at autograd scale s: step cost + s x (layers x (per layer + ops) + end ops' forward)
    unscaled = L * (ex.host_per_layer_s + sum(op_host_s(o, ex) for o in fwd)) \
        + sum(op_host_s(o, ex) for o in ends if o.pass_ != "bwd")
    scale = (k * th.forward_s - ex.host_overhead_per_step_s) / unscaled
    nodes_s = L * sum(train_host_s(o, ex, True) for o in fwd) + sum(train_host_s(o, ex, True) for o in ends if o.pass_ == "bwd")
    per_layer = (k * th.backward_s - nodes_s) / L
    if scale <= 0 or per_layer < 0:
        raise RoofplanError(f"{where}: its forward or backward CPU span ({th.forward_s * 1e3:.1f} / {th.backward_s * 1e3:.1f} ms "
                            f"profiled) is shorter than the inference host costs give; is k = {k:.3f} the same profiler's?")
    fields = {"host_autograd_scale": round(scale, 4), "host_backward_per_kernel_us": per_node_us,
              "host_backward_per_layer_us": int(round(per_layer * 1e6)), "host_optimizer_us": int(round(k * th.optimizer_s * 1e6))}
    ev = {"trace": Path(trace.path).name, "segment": segment, "model": model.name, "layers": th.layers, "k_prof": k,
          "forward_ms_profiled": th.forward_s * 1e3, "backward_ms_profiled": th.backward_s * 1e3,
          "optimizer_ms_profiled": th.optimizer_s * 1e3, "bookkeeping_nodes": th.bookkeeping_nodes,
          "nodes": {c: {"count": th.node_count[c], "mean_us_profiled": round(th.node_s[c] * 1e6, 1),
                        "us_unprofiled": per_node_us[c]} for c in TRAIN_NODE_CLASSES}}
    return fields, ev
