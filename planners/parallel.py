"""`roofplan plan parallel`: search every training parallelism plan for a model on N GPUs of a system.

Space: tp in the divisors of the node size that divide the heads; pp dividing the layers with
tp x pp dividing N; dp = N / (tp pp); micro-batch in 1, 2, 4, 8 (dividing the per-replica batch);
schedule 1F1B or interleaved with v = 2, 4 virtual stages; ZeRO 0-3 (0-1 with pp > 1, as
DeepSpeed and Megatron allow); recompute none / selective / full; sequence parallel on or off
(tp > 1). The per-layer kernel times depend only on (tp, micro-batch, sp), so the core times
them once per triple (simulator.core.step.stage_times) and every other term is a numpy formula
over the rest of the grid (simulator.core.step.train_terms and simulator.core.memory.memory_terms,
the same functions `predict` and `train_step` use for one plan). Plans that do not fit in GPU memory are dropped; the rest are
ranked by step time (throughput) or by GPU-hours per token over N and its halvings (cost); each
plan is explained against the best by the time terms that differ most.

ZeRO-3 parameter gathers run on the communication stream beside compute (perfect prefetch, as
DeepSpeed and FSDP intend; each micro-batch takes the longer of the two): an upper bound. Narayanan et al. 2021 (Fig. 10) measured
DeepSpeed ZeRO-3 70% slower than PTD-P for GPT-3 175B at 1536 GPUs; `--zero 0,1` keeps the search
to Megatron-style plans.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from simulator.core.errors import FieldError, RoofplanError
from simulator.core.models import ModelConfig
from simulator.core.memory import memory_terms
from simulator.core.parallel import RECOMPUTE, ParallelPlan
from simulator.core.step import TRAIN_TERMS, optimizer_seconds_per_param, stage_times, train_flops, train_terms
from simulator.core.workload import Job
from simulator.core.profiles import ExecutorProfile, KernelProfile, load_executor_profile, load_kernel_profile
from simulator.core.specs import System

MICRO_BATCHES = (1, 2, 4, 8)
VPPS = (1, 2, 4)
TERMS = tuple(k for k in TRAIN_TERMS if k != "cp_comm")   # the planner keeps cp = 1
OBJECTIVES = ("throughput", "cost")
MAX_GPUS = 2**20            # past any cluster (a sweep grid's bound too)
MAX_GLOBAL_BATCH = 2**24    # sequences per step: past any published run, and n_micro stays in int64


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class PlanSearch:
    plans: pd.DataFrame        # fitting plans, best first, with time terms and memory
    evaluated: int             # plans scored (fitting or not)
    search_time_s: float
    objective: str


def _grid_for(model: ModelConfig, system: System, n_gpus: int, global_batch: int, tp: int, mb: int,
              zeros=(0, 1, 2, 3)):
    """Valid (pp, vpp, zero, sp) combinations for one (tp, micro-batch) as int arrays."""
    L = model.n_layers
    rows = []
    for pp in divisors(L):
        if n_gpus % (tp * pp):
            continue
        dp = n_gpus // (tp * pp)
        if global_batch % (dp * mb):
            continue
        m = global_batch // (dp * mb)
        for v, zero, sp in itertools.product(VPPS, zeros, (0, 1)):
            if v > 1 and (pp == 1 or L % (pp * v) or m % pp):
                continue
            if pp > 1 and zero > 1:
                continue
            if sp and tp == 1:
                continue
            if dp == 1 and zero:
                continue
            rows.append((pp, dp, m, v, zero, sp))
    return np.array(rows, dtype=np.int64).reshape(-1, 6)


def _score(model, system, seq, ex, opt, N, tp, mb, grid, st):
    """Time and memory of the grid rows (pp, dp, m, v, zero, sp) sharing one (tp, micro-batch, sp)."""
    pp, dp, m, v, zero, sp = grid.T
    frames = []
    for rc in RECOMPUTE:
        t = train_terms(model, system, seq, st, tp, pp, dp, 1, 1, mb, m, v, zero, rc, True, opt)
        mem = memory_terms(model, seq, ex, tp, pp, dp, 1, 1, mb, m, v, sp.astype(bool), zero, rc)
        total_mem = sum(np.broadcast_to(x, pp.shape).astype(float) for x in mem.values())
        df = pd.DataFrame({"gpus": N, "tp": tp, "pp": pp, "dp": dp, "micro_batch": mb, "n_micro": m,
                           "vpp": v, "zero": zero, "sp": sp.astype(bool), "recompute": rc,
                           "time_s": t["time"], "memory_bytes": total_mem})
        for k in TERMS:
            df[f"{k}_s"] = np.broadcast_to(t[k], pp.shape)
        frames.append(df)
    return frames, len(grid) * len(RECOMPUTE)


def search(model: ModelConfig, system: System, n_gpus: int, global_batch: int, seq: int,
           objective: str = "throughput", executor: ExecutorProfile | None = None,
           kernels: KernelProfile | None = None, gpu_counts: list[int] | None = None,
           zeros=(0, 1, 2, 3)) -> PlanSearch:
    """Score every plan (see module doc); `gpu_counts` overrides the GPU counts tried, `zeros` the
    ZeRO stages allowed."""
    if not zeros or any(z not in (0, 1, 2, 3) for z in zeros):
        raise FieldError("zero", ",".join(map(str, zeros)), "not understood", "use a comma list of 0, 1, 2, 3")
    if objective not in OBJECTIVES:
        raise FieldError("objective", objective, "unknown", "use throughput or cost")
    for name, v in (("gpus", n_gpus), ("global_batch", global_batch), ("seq", seq)):
        if v < 1:
            raise FieldError(name, v, "must be a positive integer")
    for name, v, top in (("gpus", n_gpus, MAX_GPUS), ("global_batch", global_batch, MAX_GLOBAL_BATCH)):
        if v > top:
            raise FieldError(name, v, f"is more than {top:,}, beyond any cluster or training run", "check the number")
    if seq > model.max_positions:
        raise FieldError("seq", seq, f"exceeds {model.name}'s limit of {model.max_positions}", "use a shorter seq")
    if n_gpus > system.gpu_count and (system.network is None or not system.network_count):
        raise FieldError("gpus", n_gpus, f"span several {system.name} nodes but it has no network in its spec",
                         f"use gpus <= {system.gpu_count} or a system with a network")
    t0 = time.perf_counter()
    ex = executor or load_executor_profile("default")
    kp = kernels or load_kernel_profile(system.gpu.name)
    opt = optimizer_seconds_per_param(model, system, ex, kp)
    if gpu_counts is None:
        gpu_counts = [n_gpus] if objective == "throughput" else \
            sorted({n_gpus // 2**i for i in range(0, 12) if n_gpus // 2**i >= 1 and n_gpus % 2**i == 0})
    tps = [t for t in divisors(system.gpu_count)
           if model.n_heads % t == 0 and (model.n_kv_heads % t == 0 or t % model.n_kv_heads == 0)]
    frames = []
    evaluated = 0
    cache = {}
    for N in gpu_counts:
        for tp in tps:
            for mb in MICRO_BATCHES:
                g = _grid_for(model, system, N, global_batch, tp, mb, zeros)
                if not len(g):
                    continue
                for sp_on in (False, True):
                    rows = g[g[:, 5] == int(sp_on)]
                    if not len(rows):
                        continue
                    if (tp, mb, sp_on) not in cache:
                        job = Job(phase="train", batch=mb, seq=seq, tp=tp, micro_batch=mb, sp=sp_on)
                        cache[tp, mb, sp_on] = stage_times(model, system, job, ex, kp)
                    frames_, n_ = _score(model, system, seq, ex, opt, N, tp, mb, rows, cache[tp, mb, sp_on])
                    frames += frames_
                    evaluated += n_
    if not frames:
        raise FieldError("global_batch", global_batch, f"no plan divides it over {n_gpus} GPUs",
                         "use a global batch that is a multiple of the data-parallel degree")
    allp = pd.concat(frames, ignore_index=True)
    fit = allp[allp["memory_bytes"] <= system.gpu.mem_bytes].copy()
    if fit.empty:
        least = allp.loc[allp["memory_bytes"].idxmin()]
        raise RoofplanError(
            f"no plan fits: the smallest needs {least.memory_bytes / 2**30:.1f} GiB per GPU on {system.gpu.name} "
            f"({system.gpu.mem_bytes / 2**30:.0f} GiB); use more GPUs, a shorter seq or a smaller model")
    mf, _ = train_flops(model, seq, global_batch, "none")
    fit["tokens_per_s"] = global_batch * seq / fit["time_s"]
    fit["model_flops_per_gpu_s"] = mf / fit["gpus"] / fit["time_s"]
    fit["mfu"] = fit["model_flops_per_gpu_s"] / system.gpu.peak_flops("bf16")
    fit["gpu_h_per_Mtok"] = fit["gpus"] * fit["time_s"] / 3600 / (global_batch * seq / 1e6)
    key = "time_s" if objective == "throughput" else "gpu_h_per_Mtok"
    fit = fit.sort_values([key, "memory_bytes"], kind="stable").reset_index(drop=True)
    fit["vs_best"] = fit[key] / fit[key].iloc[0] - 1
    fit["why"] = explain(fit)
    return PlanSearch(plans=fit, evaluated=evaluated, search_time_s=time.perf_counter() - t0, objective=objective)


def explain(plans: pd.DataFrame) -> list[str]:
    """Per plan: the (at most two) time terms that exceed the best plan's most, and memory."""
    best = plans.iloc[0]
    out = []
    for _, r in plans.iterrows():
        if r.name == 0:
            out.append("best")
            continue
        if r["gpus"] != best["gpus"]:
            out.append(f"{r['gpus']} GPUs instead of {best['gpus']}")
            continue
        diffs = sorted(((r[f"{k}_s"] - best[f"{k}_s"], k) for k in TERMS), reverse=True)
        parts = [f"{k} {d * 1e3:+.0f} ms" for d, k in diffs[:2] if d > 1e-4]
        dm = (r["memory_bytes"] - best["memory_bytes"]) / 2**30
        if abs(dm) >= 1:
            parts.append(f"memory {dm:+.0f} GiB")
        out.append(", ".join(parts) or "same time")
    return out


def plan_of(row) -> ParallelPlan:
    """The ParallelPlan of a result row (for train_step)."""
    return ParallelPlan(tp=int(row["tp"]), pp=int(row["pp"]), dp=int(row["dp"]), micro_batch=int(row["micro_batch"]),
                        global_batch=int(row["n_micro"] * row["dp"] * row["micro_batch"]), vpp=int(row["vpp"]),
                        sp=bool(row["sp"]), zero=int(row["zero"]), recompute=str(row["recompute"]))


def compare_with(search_result: PlanSearch, model: ModelConfig, system: System, plan: ParallelPlan, seq: int,
                 executor: ExecutorProfile | None = None) -> str:
    """One line: how the best plan differs from `plan` (e.g. a published configuration)."""
    from simulator.core.parallel import train_step
    ref = train_step(model, system, plan, seq, executor)
    best = search_result.plans.iloc[0]
    terms = ref.terms()
    diffs = sorted(((terms[k] - best[f"{k}_s"], k) for k in TERMS), reverse=True)
    gain = ", ".join(f"{k} {d * 1e3:+.0f} ms" for d, k in diffs[:3] if d > 1e-4)
    return (f"reference tp{plan.tp} pp{plan.pp} dp{plan.dp} mb{plan.micro_batch} v{plan.vpp} zero{plan.zero} "
            f"{plan.recompute}{' sp' if plan.sp else ''}: {ref.time_s:.2f} s/step; best {best['time_s']:.2f} s/step "
            f"({ref.time_s / best['time_s'] - 1:+.1%} for the reference; it spends more on: {gain or 'nothing'})")
