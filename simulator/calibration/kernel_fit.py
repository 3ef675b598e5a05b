"""A stack's kernels as its own trace times them, in its stream: the executor fields that replace
the kernel profile's microbenchmarked constants for that stack.

The kernel profile comes from isolated microbenchmarks: one kernel per timed region (CUDA events,
L2 flushed before each repetition), GEMMs as torch.matmul(x, w[K, N]), flash attention. A stack's
own kernels run back to back in its stream, and some are other kernels: Hugging Face calls
F.linear (weight [N, K]: other cuBLAS kernels) and cuDNN's SDPA in decode. What its trace says:

* `kernel_overhead_us` by class (norm, elementwise): the mean traced duration of the class's
  kernels launched by ops whose every input holds fewer than TINY_ELEMS elements, in segments
  where nearly all of them are (a decode step). Their work is a fraction of a microsecond, so
  the duration is the kernel's fixed cost. (The 8B decode step:
  1.2-1.4 us for an add or rsqrt, 2-3 us for a broadcast multiply or a dtype cast, 9 us for the
  mean over 16 rows of 4096; an isolated launch, event-timed: 4.9 us.)
* `gemm_overhead_us`, `gemm_memory_efficiency`: the GEMM calls the kernel profile calls memory
  bound (their kernels summed, split-K reductions included), fitted by least squares on relative
  error as t = overhead + B / (bw x efficiency), the efficiency flat in size. (The 8B decode step:
  5.1 us + 87% of HBM bandwidth from 8 MB to 1 GB, where the microbenchmarks' curve falls to 60%
  below 30 MB: their L2 flush and isolated launch, and another layout.)
* `attn_decode_overhead_us`: the decode attention calls' traced time beyond the kernel
  profile's time for their bytes (one KV length per step: an overhead, not a curve).
* `memory_efficiency_scale` by class: in a prefill segment that keeps the GPU busy, the class's
  predicted work time (the per-kernel overheads above taken out) over its traced one. The
  eager RMSNorm that norm_slowdown microbenchmarks already carries the in-model slowdown
  (eager_slowdown) the kernel profile puts on top; RoPE's strided cats and broadcasts run
  below it. Fitted on the prefill, checked on a training step's classes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from simulator.core.profiles import Curve, KernelProfile
from simulator.core.roofline import attn_decode_time, gemm_time
from simulator.core.specs import System
from simulator.calibration.trace import Trace

TINY_ELEMS = 2 ** 18          # every input under 256 Ki elements (1 MiB in fp32): the work is < 0.5 us
FLOOR_CLASSES = ("norm", "elementwise")
MOSTLY_TINY = 0.75            # share of a segment's kernels of a class that must be tiny
MIN_FLOOR_KERNELS = 50        # a class's floor needs this many tiny kernels
MIN_GEMM_CALLS = 20           # and the GEMM fit this many memory-bound calls ...
MIN_GEMM_SIZES = 3            # ... of this many sizes (two parameters)


def _largest_input(dims) -> int | None:
    """Elements of the largest input tensor of a recorded `Input Dims` (tensor lists included),
    None when the shapes were not recorded."""
    if not isinstance(dims, list) or not dims:
        return None
    sizes = [1]
    for d in dims:
        if isinstance(d, list) and d and isinstance(d[0], list):
            sizes += [int(np.prod(x)) for x in d]
        elif isinstance(d, list) and d:
            sizes.append(int(np.prod(d)))
    return max(sizes)


def fit_kernel_floors(traces: list[Trace]) -> tuple[dict, dict] | None:
    """{class: seconds} mean duration of the tiny ops' kernels of each FLOOR_CLASSES class, in the
    segments where most of the class's kernels (MOSTLY_TINY) are tiny: there they are the whole
    sequence the stack issues (a decode step's norms: casts, reductions and broadcasts), where a
    prefill's tiny ones are its cheapest (the rsqrt of one value per token). None when no class
    has MIN_FLOOR_KERNELS of them."""
    durs: dict[str, list] = {c: [] for c in FLOOR_CLASSES}
    used: set[str] = set()
    for t in traces:
        if t.cpu_only:
            continue
        k = t.kernels[t.kernels["cls"].isin(FLOOR_CLASSES) & (t.kernels["op_index"] >= 0)]
        if not len(k):
            continue
        elems = np.array([_largest_input(d) or np.inf for d in t.cpu_ops["dims"].to_numpy()[k["op_index"]]], float)
        k = k.assign(tiny=elems < TINY_ELEMS)
        for (seg, c), g in k.groupby(["segment", "cls"]):
            if g["tiny"].mean() >= MOSTLY_TINY:
                durs[c].append(g.loc[g["tiny"], "dur_s"].to_numpy())
                used.add(f"{seg} of {Path(t.path).name}")
    out, ev = {}, {}
    for c, parts in durs.items():
        d = np.concatenate(parts) if parts else np.array([])
        if len(d) >= MIN_FLOOR_KERNELS:
            out[c] = float(d.mean())
            ev[c] = {"kernels": int(len(d)), "mean_us": float(d.mean() * 1e6), "median_us": float(np.median(d) * 1e6)}
    return (out, {"tiny_elems": TINY_ELEMS, "segments": sorted(used), "classes": ev}) if out else None


def fit_gemm_in_stream(traces: list[Trace], system: System, kp: KernelProfile, efficiency_scale: float = 1.0,
                       dtype: str = "bf16") -> tuple[tuple[float, float], dict] | None:
    """(overhead s, flat memory efficiency) of the traces' memory-bound inference GEMM calls of
    `dtype` (least squares on relative error); None with fewer than MIN_GEMM_CALLS calls of
    MIN_GEMM_SIZES sizes."""
    from scipy.optimize import least_squares

    from simulator.calibration.trace_fit import gemm_calls
    def forward(t):     # a training step's weight gradients (x^T dy) are other kernels
        train = set(t.segments.loc[t.segments["phase"] == "train", "name"])
        c = gemm_calls(t)
        return c[~c["segment"].isin(train)].assign(trace=Path(t.path).name)
    parts = [forward(t) for t in traces if not t.cpu_only]
    calls = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if not len(calls):
        return None
    calls = calls[(calls["dtype"] == dtype) & (calls["flops"] > 0)]
    base = kp.gemm_for(dtype)
    peak, bw = system.gpu.peak_flops(dtype) * efficiency_scale, system.gpu.hbm_bw_Bps
    before, compute_bound = gemm_time(calls["flops"], calls["bytes"], peak, bw, base)
    mem = calls[~np.asarray(compute_bound)].copy()
    mem["before_s"] = np.asarray(before)[~np.asarray(compute_bound)]
    if len(mem) < MIN_GEMM_CALLS or mem["bytes"].nunique() < MIN_GEMM_SIZES:
        return None

    def model(x):
        from dataclasses import replace
        return replace(base, overhead_s=x[0] * 1e-6, memory=Curve.flat(x[1]))

    def rel(x):
        return gemm_time(mem["flops"], mem["bytes"], peak, bw, model(x))[0] / mem["time_s"].to_numpy() - 1.0
    r = least_squares(rel, [base.overhead_s * 1e6, 0.8], bounds=([0.0, 0.05], [50.0, 1.0]))
    mem["after_s"] = gemm_time(mem["flops"], mem["bytes"], peak, bw, model(r.x))[0]
    sizes = mem.groupby("bytes").agg(calls=("time_s", "size"), measured_us=("time_s", "mean"),
                                     profile_us=("before_s", "mean"), fitted_us=("after_s", "mean"))
    ev = {"calls": int(len(mem)), "traces": sorted(set(mem["trace"])), "measured_s": float(mem["time_s"].sum()),
          "profile_s": float(mem["before_s"].sum()), "fitted_s": float(mem["after_s"].sum()),
          "sizes": [{"MB": round(b / 1e6, 2), **{k: (round(float(v), 2) if k != "calls" else int(v)) for k, v in row.items()}}
                    for b, row in zip(sizes.index, (sizes * [1, 1e6, 1e6, 1e6]).to_dict("records"))]}
    return (float(r.x[0] * 1e-6), float(r.x[1])), ev


def fit_attn_decode_overhead(traces: list[Trace], system: System, kp: KernelProfile,
                             efficiency_scale: float = 1.0) -> tuple[float, dict] | None:
    """Mean traced time of the decode attention calls (one query token) beyond the kernel
    profile's time for their bytes; None without such calls."""
    rows = []
    for t in traces:
        if t.cpu_only:
            continue
        k = t.kernels[(t.kernels["cls"] == "attention") & (t.kernels["flop_op"] >= 0)]
        for op, g in k.groupby("flop_op"):
            c = t.cpu_ops.loc[op]
            dims = c["dims"]
            q = dims[0] if isinstance(dims, list) and dims and isinstance(dims[0], list) else []
            if len(q) == 4 and q[2] == 1 and c["bytes"] > 0:
                rows.append((float(g["dur_s"].sum()), float(c["flops"]), float(c["bytes"])))
    if not rows:
        return None
    meas, flops, byts = (np.array(x) for x in zip(*rows))
    peak = system.gpu.peak_flops("bf16")
    work, _ = attn_decode_time(flops, byts, peak, system.gpu.hbm_bw_Bps * efficiency_scale, kp, 0.0)
    over = max(float(np.mean(meas - work)), 0.0)
    return over, {"calls": len(rows), "measured_us": float(meas.mean() * 1e6), "work_us": float(np.mean(work) * 1e6),
                  "profile_overhead_us": kp.attn_decode_overhead_s * 1e6}


def fit_memory_scales(traces: list[Trace], system: System, kp: KernelProfile, prof: dict,
                      name: str) -> tuple[dict, dict] | None:
    """{class: scale} for FLOOR_CLASSES from the first prefill segment that keeps the GPU busy
    (kernels >= GPU_BOUND_BUSY of its span) of a model roofplan knows: predicted work time with
    the profile so far (per-kernel overheads and stream gaps out) over the traced class time
    less the same overheads. None without such a segment."""
    from simulator.core.predict import predict
    from simulator.calibration.host_fit import _executor
    from simulator.calibration.trace_fit import GPU_BOUND_BUSY
    ex = _executor({**prof, "memory_efficiency_scale": {}}, name)
    for t in traces:
        for seg in _segments(t, "prefill"):
            if t.gpu_busy(seg) < GPU_BOUND_BUSY or not (mj := _segment_job(t, seg, "prefill")):
                continue
            model, job = mj
            pred = predict(model, system, job, ex, kp, check_memory=False).ops.groupby("cls")[["gpu_time_s", "kernels"]].sum()
            meas = t.by_class(seg)
            out, ev = {}, {"trace": Path(t.path).name, "segment": seg, "model": model.name, "batch": job.batch,
                           "seq": job.seq, "classes": {}}
            for c in FLOOR_CLASSES:
                if c not in pred.index or c not in meas.index:
                    continue
                kernels, floor = float(pred.loc[c, "kernels"]), ex.kernel_overhead(c, kp.kernel_overhead_s)
                predicted = float(pred.loc[c, "gpu_time_s"]) - kernels * ex.stream_gap_s    # as a trace times it
                work_pred, work_meas = predicted - kernels * floor, float(meas.loc[c, "time_s"]) - kernels * floor
                if work_pred > 0 and work_meas > 0:
                    out[c] = work_pred / work_meas
                    ev["classes"][c] = {"measured_s": float(meas.loc[c, "time_s"]), "predicted_unscaled_s": predicted,
                                        "scale": out[c]}
            if out:
                return out, ev
    return None


def _segments(t: Trace, phase: str) -> list[str]:
    """The segments of `phase` of a trace with device kernels."""
    return [] if t.cpu_only else list(t.segments.loc[t.segments["phase"] == phase, "name"])


def _segment_job(t: Trace, segment: str, phase: str):
    """(model, Job) of a prefill or training segment: the model roofplan knows with the trace's own
    hidden size, MLP width and layer count, batch and sequence from its layer linears' [B, S, K]
    inputs; None when the trace cannot tell."""
    from simulator.core.errors import RoofplanError
    from simulator.core.models import list_models
    from simulator.core.workload import Job
    from simulator.calibration.host_fit import traced_model
    from simulator.calibration.trace_fit import layer_structure
    from simulator.calibration.validate import segment_shape
    sh, batch = segment_shape(t, segment), _batch(t, segment)
    if not sh.layers or batch is None or len(sh.seq_lengths) != 1:
        return None
    try:
        model = traced_model(layer_structure(t), sh.layers, list_models())
    except RoofplanError:
        return None
    return (model, Job(phase=phase, batch=batch, seq=sh.seq_lengths[0])) if model else None


def _batch(t: Trace, segment: str) -> int | None:
    """Sequences of a forward segment: the leading size of its layer linears' [B, S, K] inputs."""
    from collections import Counter

    from simulator.calibration.trace import shape
    s = t.segments.set_index("name").loc[segment]
    c = t.cpu_ops[(t.cpu_ops["ts_s"] >= s.t0_s) & (t.cpu_ops["ts_s"] < s.t1_s) & (t.cpu_ops["name"] == "aten::linear")]
    bs = [shape(d, 0)[0] for d in c["dims"] if len(shape(d, 0)) == 3]
    return Counter(bs).most_common(1)[0][0] if bs else None


def held_out_classes(traces: list[Trace], system: System, kp: KernelProfile, prof: dict, name: str,
                     gemm_fitted_on: frozenset[str] = frozenset()) -> list[dict]:
    """Per op class of every training segment of a model roofplan knows, with the finished
    profile: none of the in-stream fields above looked at a training step (the GEMM fit keeps to
    inference calls, the floors to mostly-tiny segments, the scales to a prefill), so these are
    held out; the gemm class is left out for the traces in `gemm_fitted_on` (their compute-bound
    GEMMs fitted gemm_efficiency_scale). One dict per segment: trace, segment, model, batch, seq
    and {class: error} for classes above 1% of its kernel time."""
    from simulator.core.predict import predict
    from simulator.calibration.host_fit import _executor
    from simulator.calibration.validate import compare
    out = []
    ex = _executor(prof, name)
    for t in traces:
        for seg in _segments(t, "train"):
            if not (mj := _segment_job(t, seg, "train")):
                continue
            model, job = mj
            df, s = compare(t, seg, predict(model, system, job, ex, kp, check_memory=False), ex.stream_gap_s)
            big = df[(df["measured_s"] > 0.01 * s["measured_kernel_time_s"])
                     & ~((df["cls"] == "gemm") & (Path(t.path).name in gemm_fitted_on))]
            out.append({"trace": Path(t.path).name, "segment": seg, "model": model.name, "batch": job.batch,
                        "seq": job.seq, "classes": {r.cls: float(r.error) for r in big.itertuples()},
                        "kernel_time_error": float(s["kernel_time_error"])})
    return out
