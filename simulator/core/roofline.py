"""Time per op: roofline with calibrated efficiency curves (see profiles.py).

  GEMM       t = overhead + (t_c^p + t_m^p)^(1/p)      t_c = F / (peak_dtype eff_c), t_m = B / (bw eff_m)
             (weight-only int8/int4: t_c x (1 + DEQUANT_COMPUTE_OVERHEAD), simulator.core.quant)
  attention  prefill: t = overhead + F (1 + diag/S) / (peak_bf16 eff);  backward = ratio x forward
             decode:  t = overhead + max(B / (bw eff_m), F / (peak eff_c))
  memory ops t = kernels x kernel_overhead + slowdown x B / (bw eff_m)
  (an executor fitted to its own trace may replace the GEMM overhead and memory curve, the decode
  attention overhead and the per-kernel overhead with its in-stream values: ExecutorProfile)
  comm       collectives from simulator.core.comm (alpha-beta, ring/hierarchical, NCCL efficiencies)
Each op has a GPU time and a host time to issue it (`op_host_s`); simulator.core.step.lanes
places them on two lanes, where an eager executor that cannot keep the GPU fed makes it wait
(host-bound) and a CUDA graph has no host time.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from simulator.core.ops import STREAMING, Op
from simulator.core.profiles import ExecutorProfile, KernelProfile
from simulator.core.quant import DEQUANT_COMPUTE_OVERHEAD
from simulator.core.specs import System


def gemm_time(flops, byts, peak, bw, model):
    """Vectorised GEMM time and bound (True = compute bound)."""
    tci = np.asarray(flops, float) / peak
    tmi = np.asarray(byts, float) / bw
    tc = tci / model.compute(tci)
    tm = tmi / model.memory(tmi)
    p = model.smoothness
    # (tc^p + tm^p)^(1/p) written as hi (1 + (lo/hi)^p)^(1/p): two powers instead of three,
    # and no overflow for tiny times raised to a large p
    hi = np.maximum(tc, tm)
    ratio = np.minimum(tc, tm) / np.where(hi > 0, hi, 1.0)
    t = model.overhead_s + hi * (1.0 + ratio ** p) ** (1.0 / p)
    return t, tc >= tm


def memory_op_time(byts, kernels, bw, kp: KernelProfile, kernel_overhead_s: float, slowdown: float = 1.0):
    tmi = np.asarray(byts, float) / bw
    return kernels * kernel_overhead_s + slowdown * tmi / kp.memory(tmi)


def attn_prefill_time(flops, seq, peak, kp: KernelProfile):
    f = np.asarray(flops, float) * (1.0 + kp.attn_prefill_diag_tokens / np.maximum(seq, 1))
    ti = f / peak
    return kp.attn_prefill_overhead_s + ti / kp.attn_prefill(ti)


def attn_decode_time(flops, byts, peak, bw, kp: KernelProfile, overhead_s: float | None = None):
    tmi = np.asarray(byts, float) / bw
    tm = tmi / kp.attn_decode(tmi)
    tci = np.asarray(flops, float) / peak
    tc = tci / kp.attn_prefill(tci)
    return (kp.attn_decode_overhead_s if overhead_s is None else overhead_s) + np.maximum(tm, tc), tc > tm


def allreduce_time(byts, n, system: System, ranks_per_node=None):
    """All-reduce of `byts` per rank over `n` ranks of `system` (see simulator.core.comm)."""
    from simulator.core.comm import collective_time
    return collective_time("all_reduce", byts, n, system, ranks_per_node)


def op_gpu_time_array(op: Op, system: System, kp: KernelProfile, ex: ExecutorProfile, tp: int = 1):
    """Seconds for one instance of `op` on its stream and what bounds it: a label, or a boolean
    array (True = compute bound, else memory). The kernels' time plus the executor's gap between
    back-to-back kernels (`stream_gap_s`, which a trace's kernel durations do not contain). Works
    on array-valued ops too (flops/bytes as numpy arrays, as the vectorised sweep builds them):
    this is the one place an op is dispatched to its formula."""
    t, bound = _kernel_time(op, system, kp, ex, tp)
    if ex.stream_gap_s and op.cls != "communication":
        t = t + op.kernels * ex.stream_gap_s
    return t, bound


def _kernel_time(op: Op, system: System, kp: KernelProfile, ex: ExecutorProfile, tp: int = 1):
    gpu = system.gpu
    bw = gpu.hbm_bw_Bps
    if op.cls == "gemm":
        peak = gpu.peak_flops(op.dtype) * ex.gemm_efficiency_scale
        if op.kind == "dequant":   # weight-only int8/int4: in-register dequantisation (simulator.core.quant)
            peak = peak / (1.0 + DEQUANT_COMPUTE_OVERHEAD)
        return gemm_time(op.flops, op.bytes, peak, bw * ex.gemm_bandwidth_scale, ex.gemm_model(kp.gemm_for(op.dtype)))
    if op.cls == "attention":
        peak = gpu.peak_flops(op.dtype if op.dtype in gpu.peak_flops_by_dtype else "fp16")
        if op.kind == "attn_decode":
            return attn_decode_time(op.flops, op.bytes, peak, bw * ex.attn_decode_efficiency_scale, kp,
                                    ex.attn_decode_overhead_s)
        if op.kind == "attn_prefill_bwd":
            return kp.attn_bwd_ratio * attn_prefill_time(op.flops / 2.5, op.seq, peak, kp), "compute"
        return attn_prefill_time(op.flops, op.seq, peak, kp), "compute"
    if op.cls == "communication":
        if op.kind == "all_to_all":
            from simulator.core.comm import collective_time
            n = op.group or tp
            return collective_time("all_to_all", op.bytes, n, system, min(n, system.gpu_count)), "communication"
        return allreduce_time(op.bytes, tp, system, min(tp, system.gpu_count)), "communication"
    # one contiguous streaming kernel (the whole KV cache copied by torch.cat in decode, a fused
    # LayerNorm) is the microbenchmarks' kind: neither the in-model slowdown (broadcasts, strides,
    # mixed dtypes), the eager RMSNorm's, nor the stack's class scale (fitted on those) is for it
    if op.kind == STREAMING:
        slow = 1.0
    else:
        slow = kp.eager_slowdown * (kp.norm_slowdown if op.cls == "norm" else 1.0) \
            / ex.memory_efficiency_scale.get(op.cls, 1.0)
    return memory_op_time(op.bytes, op.kernels, bw, kp, ex.kernel_overhead(op.cls, kp.kernel_overhead_s), slow), "memory"


def op_gpu_time(op: Op, system: System, kp: KernelProfile, ex: ExecutorProfile, tp: int = 1) -> tuple[float, str]:
    """Seconds for one instance of `op` on one GPU of `system`, and what bounds it."""
    t, bound = op_gpu_time_array(op, system, kp, ex, tp)
    if not isinstance(bound, str):
        bound = "compute" if bound else "memory"
    return float(t), bound


def op_host_s(op: Op, ex: ExecutorProfile) -> float:
    """Host (CPU) seconds to issue one instance of `op`: the executor's dispatch cost for an op of
    its class (framework and Python work around the call) plus its cost per kernel launch.
    Collectives are issued by the communication library's own thread: none."""
    if op.cls == "communication":
        return 0.0
    return ex.host_per_op_s.get(op.cls, 0.0) + op.kernels * ex.host_overhead_per_kernel_s


def time_ops(ops: list[Op], system: System, kp: KernelProfile, ex: ExecutorProfile, tp: int = 1) -> pd.DataFrame:
    """One row per op with per-step totals: flops, bytes, gpu_time_s, host_time_s, time_s (the GPU
    time: the host's share of a step comes from the two lanes, simulator.core.step.lanes), bound."""
    rows = []
    for op in ops:
        t_gpu, bound = op_gpu_time(op, system, kp, ex, tp)
        t_host = op_host_s(op, ex)
        t = t_gpu
        rows.append({
            "name": op.name, "cls": op.cls, "pass": op.pass_, "count": op.count,
            "flops": op.flops * op.count, "bytes": op.bytes * op.count, "kernels": op.kernels * op.count,
            "gpu_time_s": t_gpu * op.count, "host_time_s": t_host * op.count, "time_s": t * op.count,
            "bound": bound,
        })
    return pd.DataFrame(rows)
