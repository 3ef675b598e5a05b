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

Energy (issue 15): each plan's power, energy per step and carbon are predict()'s
(simulator.core.power), computed for the plans that can matter (`with_energy`): the best `top` by
the objective (throughput, cost, energy, carbon) under power caps and a power budget, or the
time-energy Pareto front over GPU counts and caps (`energy_front`, Zeus's trade-off with the GPU
count in place of the batch size). A plan's energy is bounded below without predict(): its GPUs
idle all step and spend the compute-bound power on its compute-bound time (the search's own
compute and recompute terms), clipped at the TDP or the cap, and its hosts idle; a cap never makes
a step shorter. Plans are predicted in the order of that bound and the search stops when no bound
left can beat what was found, so the answer is exact and only a few plans go through predict().

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
OBJECTIVES = ("throughput", "cost", "energy", "carbon")
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
        raise FieldError("objective", objective, "unknown", f"use {', '.join(OBJECTIVES)}")
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
    if gpu_counts is None:   # cost, energy and carbon: fewer GPUs may do better per token
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
    key = "time_s" if objective == "throughput" else "gpu_h_per_Mtok"   # energy, carbon: ranked by with_energy
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


# ---------------------------------------------------------------------------------------------
# energy: predict() on the plans that can matter

FRONT_REL_TOL = 1e-9   # energies this close are one point of the front (the faster one)
KEYS = {"throughput": "time_s", "cost": "gpu_h_per_Mtok", "energy": "energy_j", "carbon": "energy_j"}


@dataclass(frozen=True)
class EnergyPlans:
    plans: pd.DataFrame        # predicted plans, best first (or the front, fastest first), energy columns added
    predicted: int             # plans (x caps) that went through predict()
    candidates: int            # plans x caps the bound had to consider


def _layer_activity(model: ModelConfig, job: Job, ex: ExecutorProfile) -> dict:
    """recompute -> (FLOPs, HBM bytes) of one decoder layer for one micro-batch of `job`, forward,
    backward and recomputed forward (communication left out; the lesser of a dense and an MoE
    layer): the layers' part of what predict() counts for a training step's energy."""
    from simulator.core.step import ATTENTION_OPS, stage_ops
    out = {}
    for rc in RECOMPUTE:
        kinds = []
        for moe in ((False, True) if model.is_moe and model.n_moe_layers < model.n_layers else (model.is_moe,)):
            fwd, bwd = stage_ops(model, job, ex, moe)
            ops = [o for o in fwd + bwd if o.cls != "communication"]
            if rc != "none":
                ops += [o for o in fwd if o.cls != "communication" and (rc == "full" or o.name.endswith(ATTENTION_OPS))]
            kinds.append((sum(float(np.sum(o.flops)) * o.count for o in ops), sum(float(np.sum(o.bytes)) * o.count for o in ops)))
        out[rc] = (min(k[0] for k in kinds), min(k[1] for k in kinds))
    return out


def _energy_bounds(plans: pd.DataFrame, model, system: System, cap_w: float | None, stage: dict) -> np.ndarray:
    """A lower bound on each plan's energy per step (J) under cap `cap_w` (module doc): each GPU at
    idle all step plus the compute-bound power on the compute-bound time and the FLOPs and HBM bytes
    of its stage's layers (not its ends or optimizer), at most the TDP (or the cap) all step; hosts
    at idle. The time is the uncapped one, which a cap only lengthens."""
    from simulator.core.memory import stage_layers
    from simulator.core.power import GpuPower, host_power
    gp = GpuPower.of(system.gpu, "bf16")
    keys = list(zip(plans["tp"].astype(int), plans["micro_batch"].astype(int), plans["sp"].astype(bool)))
    share = np.array([stage[k][0] for k in keys])
    layer = np.array([stage[k][1][rc] for k, rc in zip(keys, plans["recompute"])])     # [plan, (flops, bytes)]
    T = plans["time_s"].to_numpy(float)
    t_c = (plans["compute_s"].to_numpy(float) + plans["recompute_s"].to_numpy(float)) * share
    per_step = plans["n_micro"].to_numpy(float) * stage_layers(model, plans["pp"].to_numpy())
    top = min(gp.tdp_w, cap_w) if cap_w is not None else gp.tdp_w
    dynamic = gp.compute_w * t_c + per_step * (gp.j_per_flop * layer[:, 0] + gp.j_per_byte * layer[:, 1])
    per_gpu = np.minimum(gp.idle_w * T + dynamic, top * T) * (1 - 1e-9)   # bisection's last bits under a cap
    n = plans["gpus"].to_numpy(float)
    per_node = np.minimum(n, system.gpu_count)
    host = host_power(system, 0.0).total_w * per_node / system.gpu_count * T * (n / per_node)
    return n * per_gpu + host


def with_energy(res: PlanSearch, model: ModelConfig, system: System, seq: int, global_batch: int,
                executor: ExecutorProfile | None = None, kernels: KernelProfile | None = None,
                objective: str | None = None, caps: tuple = (None,), top: int = 10,
                power_budget_w: float | None = None, tokens: float | None = None,
                carbon_g_per_kwh: float | None = None, front: bool = False) -> EnergyPlans:
    """The search's plans with predict()'s time, power, energy and carbon under each power cap in
    `caps` (None: the default limit): the best `top` by `objective` (default the search's) among
    plans drawing at most `power_budget_w` in all, or with `front` the Pareto front of step time vs
    energy (every GPU count and cap the search covered). `tokens`: a run of that many tokens (steps,
    time, energy, CO2 per plan). Exact: plans are predicted in the order of a lower bound on their
    key (module doc) until none left can do better. A cap a plan cannot hold drops that plan."""
    from simulator.core import power
    from simulator.core.predict import predict
    from simulator.core.step import stage_times
    objective = objective or res.objective
    if objective not in OBJECTIVES:
        raise FieldError("objective", objective, "unknown", f"use {', '.join(OBJECTIVES)}")
    carbon = power.check_carbon(carbon_g_per_kwh if carbon_g_per_kwh is not None else power.DEFAULT_CARBON_G_PER_KWH)
    for c in caps:
        if c is not None:
            power.check_cap_above_idle(power.GpuPower.of(system.gpu, "bf16"), c)
    if power_budget_w is not None and not (np.isfinite(power_budget_w) and power_budget_w > 0):
        raise FieldError("power_budget_kw", f"{power_budget_w / 1e3:g}", "must be a positive number of kilowatts")
    if tokens is not None and not (np.isfinite(tokens) and tokens > 0):
        raise FieldError("tokens", tokens, "must be a positive number of tokens", "e.g. 1e12")
    ex = executor or load_executor_profile("default")
    kp = kernels or load_kernel_profile(system.gpu.name)
    plans = res.plans.reset_index(drop=True)
    stage = {}       # (tp, micro-batch, sp) -> (compute-bound share of kernel time, layer activity)
    for t, mb, sp in set(zip(plans["tp"].astype(int), plans["micro_batch"].astype(int), plans["sp"].astype(bool))):
        job = Job(phase="train", batch=mb, seq=seq, tp=t, micro_batch=mb, sp=sp)
        st = stage_times(model, system, job, ex, kp)
        stage[(t, mb, sp)] = (dict(st.bound_shares).get("compute", 0.0), _layer_activity(model, job, ex))
    tokens_per_step = global_batch * seq
    # candidates: (plan row, cap) with lower bounds on time and energy
    rows = np.repeat(np.arange(len(plans)), len(caps))
    cap_of = np.tile(np.array(caps, dtype=object), len(plans))
    e_lb = np.concatenate([_energy_bounds(plans, model, system, c, stage)[:, None] for c in caps], axis=1).ravel()
    t_lb = plans["time_s"].to_numpy(float)[rows]
    n = plans["gpus"].to_numpy(float)[rows]
    key = KEYS[objective]
    lb = {"time_s": t_lb, "gpu_h_per_Mtok": n * t_lb / 3600 / (tokens_per_step / 1e6), "energy_j": e_lb}[key]
    done: list[dict] = []
    refused: list[FieldError] = []

    def evaluate(i: int) -> dict | None:
        r = plans.iloc[rows[i]]
        cap = cap_of[i]
        job = Job(phase="train", batch=int(r["n_micro"] * r["micro_batch"]), seq=seq, tp=int(r["tp"]), pp=int(r["pp"]),
                  dp=int(r["dp"]), vpp=int(r["vpp"]), micro_batch=int(r["micro_batch"]), zero=int(r["zero"]),
                  recompute=str(r["recompute"]), sp=bool(r["sp"]), power_cap_w=cap)
        try:
            p = predict(model, system, job, ex, kp, check_memory=False, with_ops=False, carbon_g_per_kwh=carbon)
        except FieldError as e:
            if e.field != "power_cap_w":
                raise
            refused.append(e)
            return None
        out = {**r.to_dict(), "power_cap_w": np.nan if cap is None else float(cap), "time_s": p.time_s,
               "tokens_per_s": p.tokens_per_s, "model_flops_per_gpu_s": p.model_flops_per_gpu_s, "mfu": p.mfu,
               "gpu_h_per_Mtok": p.n_gpus * p.time_s / 3600 / (tokens_per_step / 1e6),
               **{k: v for k, v in p.energy.as_dict().items() if k not in ("power_cap_w",)},
               "plan_power_w": p.energy.energy_j / p.time_s, "clock_fraction": p.energy.clock_fraction}
        if tokens is not None:
            run = power.run_energy(p.energy, p.time_s, tokens_per_step, tokens)
            out.update(run_steps=run.steps, run_time_s=run.time_s, run_energy_j=run.energy_j, run_co2_g=run.co2_g)
        return out

    within = (lambda d: d["plan_power_w"] <= power_budget_w) if power_budget_w is not None else (lambda d: True)
    predicted = 0
    if front:
        pts: list[tuple[float, float]] = []     # (time, energy) of the front so far
        for i in np.argsort(t_lb, kind="stable"):
            if any(t <= t_lb[i] and e <= e_lb[i] for t, e in pts):
                continue                        # a predicted plan already beats its bound
            d = evaluate(i)
            predicted += 1
            if d is None or not within(d):
                continue
            done.append(d)
            pts = [(t, e) for t, e in pts if not (d["time_s"] <= t and d["energy_j"] <= e)] + [(d["time_s"], d["energy_j"])]
        if not done:
            raise _none_left(plans, rows, cap_of, e_lb, evaluate, refused, power_budget_w)
        df = pd.DataFrame(done).sort_values(["time_s", "energy_j"], kind="stable")
        e = df["energy_j"].to_numpy()
        before = np.concatenate([[np.inf], np.minimum.accumulate(e)[:-1]])
        df = df[e < before * (1 - FRONT_REL_TOL)]      # each point spends less than every faster one
        return EnergyPlans(df.reset_index(drop=True), predicted, len(rows))
    best: list[float] = []
    for i in np.argsort(lb, kind="stable"):
        if len(best) >= top and lb[i] >= best[top - 1]:
            break
        d = evaluate(i)
        predicted += 1
        if d is None or not within(d):
            continue
        done.append(d)
        best = sorted(best + [d[key]])
    if not done:
        raise _none_left(plans, rows, cap_of, e_lb, evaluate, refused, power_budget_w)
    df = pd.DataFrame(done).sort_values([key, "memory_bytes"], kind="stable").head(top).reset_index(drop=True)
    df["vs_best"] = df[key] / df[key].iloc[0] - 1
    df["why"] = explain(df)
    return EnergyPlans(df, predicted, len(rows))


def _none_left(plans, rows, cap_of, e_lb, evaluate, refused: list[FieldError], power_budget_w) -> RoofplanError:
    """Why no plan is left: every cap refused (the first refusal), or the budget binds (by how much:
    the least-power plan, found exactly by its power bound)."""
    if power_budget_w is None:
        return refused[0] if refused else RoofplanError("no plan can be predicted")
    t = plans["time_s"].to_numpy(float)[rows]
    p_lb = e_lb / t                       # energy bound over the uncapped time: a bound on power
    least = None
    for i in np.argsort(p_lb, kind="stable"):
        if least is not None and p_lb[i] >= least["plan_power_w"]:
            break
        d = evaluate(i)
        if d is not None and (least is None or d["plan_power_w"] < least["plan_power_w"]):
            least = d
    if least is None:
        return refused[0] if refused else RoofplanError("no plan can be predicted")
    what = (f"{int(least['gpus'])} GPUs tp{int(least['tp'])} pp{int(least['pp'])} dp{int(least['dp'])}"
            + (f" capped at {least['power_cap_w']:g} W" if least["power_cap_w"] == least["power_cap_w"] else ""))
    over = least["plan_power_w"] - power_budget_w
    return FieldError("power_budget_kw", f"{power_budget_w / 1e3:g}",
                      f"no plan draws that little: the least-power plan ({what}) draws "
                      f"{least['plan_power_w'] / 1e3:.3g} kW, over by {over / 1e3:.3g} kW",
                      "raise the budget, use fewer GPUs (--gpus; --objective cost, energy or carbon try halvings) "
                      "or cap each GPU's power (--power-cap)")
