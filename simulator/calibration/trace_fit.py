"""Fit an executor profile (profiles.ExecutorProfile) to profiler traces.

What a trace tells about a software stack, and how each field is derived:

* layer structure -- `kv_cache_concat`: decode appends with aten::cat([cache, new token]).
  `fused_qkv`, `fused_gate_up`: from the weight shapes of the aten::linear
  calls (record_shapes). Per MLP down projection (weight [hidden, ffn]) an unfused stack calls
  q, k, v, gate and up separately (5 linears that read the hidden state), a fused one qkv and
  gate_up (2). `repeat_kv`: SDPA called with fewer K/V heads than query heads uses native GQA.
* host costs (`host_overhead_per_kernel_us`, `host_per_op_us`, `host_per_layer_us`,
  `host_overhead_per_step_us`, `host_new_shape_us`): the CPU timeline of the most host-bound
  step (GPU busy < 50% of its CPU span), op kind by op kind, deflated by the profiler's slowdown
  fitted on un-profiled measurements (end_to_end.yaml cases or the step's own time); see
  simulator.calibration.host_fit.
* the stack's kernels in its own stream (`kernel_overhead_us` by class, `gemm_overhead_us`,
  `gemm_memory_efficiency`, `attn_decode_overhead_us`, `memory_efficiency_scale`): see
  simulator.calibration.kernel_fit.
* CPU-only traces: `kernel_overhead_us` (see cpu_op_overhead).
* `gemm_efficiency_scale`: measured GEMM kernel time of the trace's own GEMM calls (shapes
  from `Input Dims`) over the kernel profile's prediction for the same shapes, compute-bound
  calls only (the scale multiplies the peak, which memory-bound GEMMs do not reach).
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.core.errors import FieldError, RoofplanError
from simulator.core.profiles import KernelProfile
from simulator.core.roofline import gemm_time
from simulator.core.specs import System
from simulator.calibration.host_fit import (HOST_BOUND_GPU_BUSY, evaluate_cases, fit_host, fit_train_host,
                                           host_bound_segment)
from simulator.calibration.trace import Trace, shape


def gemm_calls(trace: Trace, segment: str | None = None) -> pd.DataFrame:
    """One row per GEMM CPU op (outermost op carrying FLOPs, excluding SDPA) with its measured
    kernel time: name, flops, bytes, time_s, kernels, segment."""
    k = trace.kernels[(trace.kernels["flop_op"] >= 0) & (trace.kernels["cls"] == "gemm")]
    if segment is not None:
        k = k[k["segment"] == segment]
    g = k.groupby("flop_op").agg(time_s=("dur_s", "sum"), kernels=("dur_s", "size"), segment=("segment", "first"))
    ops = trace.cpu_ops.loc[g.index, ["name", "flops", "bytes", "dtype"]]
    return ops.join(g).reset_index(drop=True)


def fit_gemm_scale(trace: Trace, system: System, kp: KernelProfile, dtype: str | None = None) -> tuple[float, dict]:
    """Scale on the GEMM peak that makes the kernel profile reproduce the trace's compute-bound
    GEMM time: s with sum(t_pred(peak s)) = sum(t_meas), solved by brentq on [0.3, 3] (t_pred
    falls monotonically in s; a root outside gives the nearer end). Returns (scale, evidence)."""
    calls = gemm_calls(trace)
    if not len(calls):
        raise RoofplanError(f"trace {trace.path}: no GEMM calls with recorded shapes; record with record_shapes=True")
    if dtype is None:   # the dtype that carries most GEMM FLOPs in the trace
        dtype = calls.groupby("dtype")["flops"].sum().idxmax() or "bf16"
    calls = calls[calls["dtype"] == dtype]
    gpu = system.gpu
    model = kp.gemm_for(dtype)
    peak, bw = gpu.peak_flops(dtype), gpu.hbm_bw_Bps
    _, compute_bound = gemm_time(calls["flops"], calls["bytes"], peak, bw, model)
    big = calls[np.asarray(compute_bound) & (calls["flops"] > 0)]
    if not len(big):
        return 1.0, {"gemm_calls": len(calls), "compute_bound_calls": 0}
    measured = float(big["time_s"].sum())

    def predicted(s):
        return float(np.sum(gemm_time(big["flops"], big["bytes"], peak * s, bw, model)[0]))

    from scipy.optimize import brentq

    def excess(s):
        return predicted(s) - measured
    lo, hi = 0.3, 3.0
    if excess(hi) > 0:       # slower than measured even at 3 x peak
        scale = hi
    elif excess(lo) <= 0:
        scale = lo
    else:                    # to float resolution, like the 60 geometric halvings it replaces
        scale = float(brentq(excess, lo, hi, xtol=1e-15))
    return scale, {"gemm_calls": len(calls), "compute_bound_calls": len(big), "measured_s": measured,
                   "predicted_unscaled_s": predicted(1.0)}


def cpu_op_overhead(trace: Trace, step_time_s: float | None = None) -> tuple[float, int]:
    """Fixed cost per op of a CPU-only trace (dispatch, allocation, thread wake-up): the wall time
    of a step not covered by leaf ops, plus the median duration of the memory-bound
    leaf ops (too small to stream at bandwidth), per op, scaled by step_time_s / traced span when
    the step was also timed without the profiler; the least disturbed step wins. Goes to `kernel_overhead_us`: on a CPU
    there is no launch queue, every op pays it in series."""
    best, n_ops = float("inf"), 0
    for st in trace.segment_stats().itertuples():     # least disturbed step: the smallest per-op cost
        k = trace.kernels[trace.kernels["segment"] == st.segment]
        if not len(k):
            continue
        small = k[k["cls"].isin(["elementwise", "norm"])]["dur_s"]
        gaps = max(0.0, float(st.cpu_span_s - st.kernel_time_s))
        per_op = gaps / len(k) + (float(small.median()) if len(small) else 0.0)
        # the profiler slows every op; a step time measured without it rescales the traced one
        scale = min(step_time_s / float(st.cpu_span_s), 1.0) if step_time_s else 1.0
        if per_op * scale < best:
            best, n_ops = per_op * scale, len(k)
    return best, n_ops


def layer_structure(trace: Trace) -> dict:
    """fused_qkv / fused_gate_up / repeat_kv from the recorded shapes (see module docstring)."""
    lin = trace.cpu_ops[(trace.cpu_ops["name"] == "aten::linear") & trace.cpu_ops["dims"].notna()]
    shapes = []
    for dims in lin["dims"]:
        w = shape(dims, 1)
        if shape(dims, 0) and len(w) == 2:
            shapes.append((w[0], w[1]))     # weight [N, K]
    if not shapes:
        raise RoofplanError(f"trace {trace.path}: no aten::linear calls with recorded shapes; record with record_shapes=True")
    hidden = Counter(k for _, k in shapes).most_common(1)[0][0]
    vocab = max(n for n, _ in shapes)
    down = [(n, k) for n, k in shapes if n == hidden and k > hidden]
    if not down:
        raise RoofplanError(f"trace {trace.path}: no MLP down projection (weight [{hidden}, ffn]) found; is it a transformer decoder?")
    n_down = len(down)
    ffn = Counter(k for _, k in down).most_common(1)[0][0]
    gate_up_calls = sum(1 for n, k in shapes if k == hidden and n == ffn) / n_down
    fused_gate_up = gate_up_calls < 1.5
    # per layer: every linear but the LM head, minus down and o, minus gate/up = q/k/v calls
    per_layer = sum(1 for n, _ in shapes if n != vocab) / n_down
    qkv_calls = per_layer - 2 - (1 if fused_gate_up else 2)
    fused_qkv = qkv_calls < 1.5
    sdpa = trace.cpu_ops[(trace.cpu_ops["name"] == "aten::scaled_dot_product_attention") & trace.cpu_ops["dims"].notna()]
    gqa_native = any(len(shape(d, 0)) > 1 and len(shape(d, 1)) > 1 and shape(d, 1)[1] < shape(d, 0)[1] for d in sdpa["dims"])
    repeat = bool((trace.cpu_ops["name"] == "aten::repeat_interleave").any()) and not gqa_native
    return {"fused_qkv": bool(fused_qkv), "fused_gate_up": bool(fused_gate_up), "repeat_kv": repeat,
            "kv_cache_concat": _kv_cache_concat(trace),
            "hidden": hidden, "ffn": ffn, "layers_seen": n_down}


def _kv_cache_concat(trace: Trace) -> bool:
    """Decode appends to the KV cache with torch.cat([cache [B, h, L, d], new [B, h, 1, d]])."""
    cat = trace.cpu_ops[(trace.cpu_ops["name"] == "aten::cat") & trace.cpu_ops["dims"].notna()]
    for dims in cat["dims"]:
        parts = dims[0] if dims and isinstance(dims[0], list) and dims[0] and isinstance(dims[0][0], list) else []
        if len(parts) == 2 and all(len(p) == 4 for p in parts) and parts[0][2] > 1 and parts[1][2] == 1 \
                and parts[0][:2] == parts[1][:2] and parts[0][3] == parts[1][3]:
            return True
    return False


GPU_BOUND_BUSY = 0.85     # a segment whose kernels fill this share of its GPU span has a queue ahead
MAX_STREAM_GAP_S = 20e-6  # longer gaps wait for the host, not for the stream


def fit_stream_gap(traces: list) -> tuple[float, dict] | None:
    """The gap between back-to-back kernels of this stack's stream: the median idle time between
    consecutive kernels of the GPU-bound segments (kernels fill >= GPU_BOUND_BUSY of the GPU span,
    so the next kernel is already queued). None when no trace has such a segment."""
    gaps, used = [], []
    for t in traces:
        for seg in t.segments["name"]:
            if int((t.kernels["segment"] == seg).sum()) < 100 or t.gpu_busy(seg) < GPU_BOUND_BUSY:
                continue
            g = t.kernel_gaps(seg)
            g = g[(g >= 0) & (g < MAX_STREAM_GAP_S)]
            gaps.append(g)
            used.append({"trace": Path(t.path).name, "segment": seg, "gaps": int(len(g)),
                         "median_us": float(np.median(g) * 1e6) if len(g) else None})
    if not gaps or not sum(len(g) for g in gaps):
        return None
    return float(np.median(np.concatenate(gaps))), {"segments": used}


def _in_stream_kernels(traces: list[Trace], system: System, kp: KernelProfile, prof: dict, name: str,
                       evidence: dict) -> dict:
    """The kernel fields a stack's own trace times better than the microbenchmarks (see
    simulator.calibration.kernel_fit), in the order each needs the ones before it."""
    from simulator.calibration import kernel_fit as kf
    out: dict = {}
    floors = kf.fit_kernel_floors(traces)
    if floors:
        out["kernel_overhead_us"] = {c: round(v * 1e6, 3) for c, v in floors[0].items()}
        evidence["kernel_floors"] = floors[1]
    gemm = kf.fit_gemm_in_stream(traces, system, kp, prof.get("gemm_efficiency_scale", 1.0))
    if gemm:
        out["gemm_overhead_us"] = round(gemm[0][0] * 1e6, 3)
        out["gemm_memory_efficiency"] = round(gemm[0][1], 4)
        evidence["gemm_in_stream"] = gemm[1]
    attn = kf.fit_attn_decode_overhead(traces, system, kp, prof.get("attn_decode_efficiency_scale", 1.0))
    if attn:
        out["attn_decode_overhead_us"] = round(attn[0] * 1e6, 3)
        evidence["attn_decode"] = attn[1]
    scales = kf.fit_memory_scales(traces, system, kp, {**prof, **out}, name)
    if scales:
        out["memory_efficiency_scale"] = {c: round(v, 4) for c, v in scales[0].items()}
        evidence["memory_scales"] = scales[1]
    return out


def fit_executor_profile(traces: list[Trace], system: System, kp: KernelProfile, name: str,
                         step_time_s: float | None = None, base: dict | None = None,
                         end_to_end: tuple[str, list[dict]] | None = None) -> tuple[dict, dict]:
    """An executor profile (YAML dict) from one or more traces of the same stack; `base` holds
    fields the traces cannot tell (the profile being refitted, or default.yaml's). The host costs
    come from the first trace with a host-bound step, deflated by `end_to_end` (file name and its
    cases) or `step_time_s` (see host_fit). Returns (profile, evidence)."""
    if step_time_s is not None and not (math.isfinite(step_time_s) and step_time_s > 0):
        # a nan here once became `host_overhead_per_kernel_us: .nan`, which predict ignored
        raise FieldError("step_time_s", step_time_s, "must be a finite number of seconds > 0",
                         "give the un-profiled wall time of the traced step")
    prof = dict(base or {})
    evidence: dict = {}
    structs = {}        # per trace: each fit identifies its own trace's model (traces may be of two models)
    for t in traces:
        try:
            structs[id(t)] = layer_structure(t)
        except RoofplanError:
            continue
    struct = next(iter(structs.values()), None)
    if struct:
        prof.update({k: struct[k] for k in ("fused_qkv", "fused_gate_up", "repeat_kv")})
        # only a trace with decode steps shows how the cache grows: a training trace beside it says nothing
        prof["kv_cache_concat"] = any(x["kv_cache_concat"] for x in structs.values())
        evidence["layer_structure"] = struct
    scales = [fit_gemm_scale(t, system, kp) for t in traces]
    flops = [s[1].get("measured_s", 0.0) for s in scales]
    if sum(flops) > 0:
        scale = float(np.average([s[0] for s in scales], weights=flops))
        prof["gemm_efficiency_scale"] = round(scale, 4)
        evidence["gemm"] = [s[1] for s in scales]
    gap = fit_stream_gap([t for t in traces if not t.cpu_only])
    if gap is not None:
        prof["stream_gap_us"] = round(gap[0] * 1e6, 2)
        evidence["stream_gap"] = gap[1]
    prof.update(_in_stream_kernels(traces, system, kp, prof, name, evidence))
    host = None
    for t in traces:
        if t.cpu_only:      # no launch queue on a CPU: its per-op cost is kernel_overhead_us below
            continue
        hb = host_bound_segment(t, HOST_BOUND_GPU_BUSY)
        if hb:
            host = (t, *hb)
            break
    train = [(t, s) for t in traces if not t.cpu_only for s, ph in zip(t.segments["name"], t.segments["phase"])
             if ph == "train"]
    if train and not host:
        evidence["train_host_kept"] = ("the training host costs need the profiler factor of an inference fit: pass "
                                       "the same stack's inference trace (a host-bound step) and --end-to-end too")
    if host:
        fields, evidence["host"] = fit_host(host[0], host[1], host[2], structs.get(id(host[0])), prof, name, system, kp,
                                            step_time_s, end_to_end)
        prof.update(fields)
        if train:
            # the training host lane, deflated by the inference fit's profiler factor (same profiler)
            fields, evidence["train_host"] = fit_train_host(*train[0], evidence["host"]["k_prof"], prof, name, system, kp)
            prof.update(fields)
        h = evidence["host"]
        if "kernel_floors" in evidence or "memory_scales" in evidence:
            from simulator.calibration.kernel_fit import held_out_classes
            gemm_fitted = frozenset(Path(t.path).name for t, (_, e) in zip(traces, scales) if e.get("compute_bound_calls"))
            h["held_out"]["trace_classes"] = held_out_classes(traces, system, kp, prof, name, gemm_fitted)
        if end_to_end is not None:      # every case of the executor with the final profile: fitted or held out
            fitted = {x["id"] for x in h["k_fitted_on"] + h["new_shape_fitted_on"]}
            cases = [x for x in end_to_end[1] if x.get("executor", "default") == h["executor_cases"]]
            h["held_out"].update(evaluate_cases(prof, h["executor_cases"], cases, fitted, h["model"], system, kp))
    elif not any(t.cpu_only for t in traces):
        for flag, val in (("step_time_s", step_time_s), ("end_to_end", end_to_end and end_to_end[0])):
            if val:
                raise FieldError(flag, val, "applies to a host-bound step, but no trace has one "
                                 f"(GPU busy >= {HOST_BOUND_GPU_BUSY:.0%} everywhere)")
    cpu = [t for t in traces if t.cpu_only]
    if cpu:
        k_over, n = cpu_op_overhead(cpu[0], step_time_s)
        prof["kernel_overhead_us"] = round(k_over * 1e6, 3)
        evidence["cpu_op_overhead"] = {"ops": n, "overhead_s": k_over}
    prof["description"] = prof.get("description") or f"fitted by roofplan calibrate from {len(traces)} trace(s)"
    return prof, evidence
