"""predict(): one step of a job on a system -> time, memory, breakdown; predict_many(): the same
for arrays of sizes. Both are thin: the step assembler (simulator.core.step) does the work, so
the CLI, the sweeps, the planners and the serving simulator get one number per configuration."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from simulator.core.errors import FieldError, FixError, RoofplanError
from simulator.core.memory import MemoryBreakdown
from simulator.core.models import ModelConfig
from simulator.core.ops import forward_ops
from simulator.core.profiles import ExecutorProfile, KernelProfile, load_executor_profile, load_kernel_profile
from simulator.core.specs import System
from simulator.core.memory import stage_layers, stage_params, trainable_fraction
from simulator.core.ops import optimizer_ops
from simulator.core import power
from simulator.core.step import (ATTENTION_OPS, BOUNDS, TRAIN_TERMS, StepCost, end_ops, inference_cost, stage_ops,
                                 train_layer_python_s, train_ops_host_s,
                                 train_cost, train_flops)
from simulator.core.roofline import op_gpu_time, time_ops
from simulator.core.units import DTYPE_BYTES, fmt_bytes
from simulator.core.workload import Job, validate_job

MEMORY_PARTS = ("weights", "kv_cache", "activations", "gradients", "optimizer", "workspace")
OP_COLUMNS = ["name", "cls", "pass", "count", "flops", "bytes", "kernels", "gpu_time_s", "host_time_s", "time_s", "bound"]


@dataclass(frozen=True)
class Prediction:
    model: str
    hardware: str
    job: Job
    time_s: float                    # one step, wall clock
    peak_memory_bytes: float         # per GPU
    memory: MemoryBreakdown
    ops: pd.DataFrame                # per-op breakdown (this GPU, whole step), for display
    bound: str                       # compute | memory | transfer | host | communication
    tokens_per_s: float
    transfer_time_s: float = 0.0     # host->GPU weight streaming (offload)
    notes: tuple[str, ...] = field(default_factory=tuple)
    model_flops: float = 0.0         # useful FLOPs of the step (all GPUs), no recompute
    hardware_flops: float = 0.0      # executed FLOPs (all GPUs), recompute included
    n_gpus: int = 1
    fits: bool = True
    peak_flops: float = 0.0          # per GPU, the job's dtype
    time_by_resource: dict = field(default_factory=dict)
    time_terms: dict = field(default_factory=dict)    # training: compute, bubble, tp_comm, ...
    host_time_s: float = 0.0         # the host lane: CPU time to issue the step's ops
    device_busy_s: float = 0.0       # the device lanes: kernels, copies and collectives
    expected_error: dict | None = None   # validated error at this calibration level (core.expected_error)
    critical_path: tuple = ()        # inference: per op segment, the lane (host / device) that set the pace
    gpu_flops: float = 0.0           # FLOPs one GPU (of the busiest stage) executes in the step
    gpu_hbm_bytes: float = 0.0       # bytes it moves to and from its HBM
    energy: power.StepEnergy | None = None   # power, energy and carbon of the step (core.power)

    def by_class(self) -> pd.DataFrame:
        """Time, FLOPs and bytes by op class (host: host time the device could not hide)."""
        g = self.ops.groupby("cls")[["flops", "bytes", "time_s"]].sum()
        g = g[(g["time_s"] > 0) | (g["flops"] > 0) | (g["bytes"] > 0)]
        g["share"] = g["time_s"] / max(g["time_s"].sum(), 1e-30)
        return g.sort_values("time_s", ascending=False)

    @property
    def mfu(self) -> float:
        return self.model_flops / (self.time_s * self.peak_flops * self.n_gpus) if self.peak_flops else 0.0

    @property
    def model_flops_per_gpu_s(self) -> float:
        return self.model_flops / self.n_gpus / self.time_s

    @property
    def hardware_flops_per_gpu_s(self) -> float:
        return self.hardware_flops / self.n_gpus / self.time_s

    def as_dict(self) -> dict:
        j = self.job
        by = self.by_class()
        d = {
            "model": self.model, "hardware": self.hardware, "phase": j.phase,
            "batch": j.batch, "seq": j.seq, "context": j.context,
            "dtype": j.dtype, "weight_dtype": j.weight_dtype or j.dtype, "kv_dtype": j.kv_dtype or j.dtype,
            "tp": j.tp, "pp": j.pp, "dp": j.dp, "n_gpus": self.n_gpus,
            "time_s": self.time_s, "peak_memory_bytes": self.peak_memory_bytes,
            "tokens_per_s": self.tokens_per_s, "bound": self.bound, "fits": self.fits,
            "transfer_time_s": self.transfer_time_s,
            "host_time_s": self.host_time_s, "device_busy_s": self.device_busy_s,
            "model_flops": self.model_flops, "hardware_flops": self.hardware_flops,
            "model_flops_per_gpu_s": self.model_flops_per_gpu_s,
            "hardware_flops_per_gpu_s": self.hardware_flops_per_gpu_s, "mfu": self.mfu,
            "memory_bytes": self.memory.as_dict(),
            "time_by_class_s": {k: float(v) for k, v in by["time_s"].items()},
            "time_by_resource_s": dict(self.time_by_resource),
            "expected_error": self.expected_error,
            "critical_path": [{k: (float(np.asarray(v).reshape(-1)[0]) if k.endswith("_s") else v) for k, v in seg.items()}
                              for seg in self.critical_path],
            "notes": list(self.notes),
            "gpu_flops": self.gpu_flops, "gpu_hbm_bytes": self.gpu_hbm_bytes,
        }
        if self.energy is not None:
            d.update(self.energy.as_dict())
            d["energy_notes"] = list(self.energy.notes)
        if j.phase == "train":
            d.update({"cp": j.cp, "ep": j.ep, "vpp": j.vpp, "sp": j.sp, "zero": j.zero, "recompute": j.recompute,
                      "lora_rank": j.lora_rank, "lora_targets": j.lora_targets, "micro_batch": j.micro_batch, "n_micro": j.n_micro,
                      "global_batch": j.batch * j.dp, "time_terms_s": dict(self.time_terms)})
        return d


def system_for_job(system: System, job: Job) -> System:
    """The system a job runs on: a bare GPU name grows to as many GPUs as tp x pp x dp x cp asks;
    a named system must have them. Also checks that the GPU has the job's dtype."""
    from simulator.core.specs import system_from_gpu
    system.gpu.peak_flops(job.dtype)  # clear error if the GPU lacks the dtype
    check_weight_dtype_on(system.gpu, job)  # weight_dtype fp8 needs fp8 tensor cores
    from simulator.core.specs import MAX_BARE_NODE_GPUS
    n = job.n_gpus
    if n > system.gpu_count and system.name == system.gpu.name:
        if n > MAX_BARE_NODE_GPUS:
            raise FieldError("n_gpus", n, f"the plan needs {n} GPUs (tp x pp x dp x cp) but a bare {system.gpu.name} "
                             f"stands for one node of at most {MAX_BARE_NODE_GPUS}",
                             "use a system with a network (roofplan hw list --kind system) or smaller degrees")
        return system_from_gpu(system.gpu, n)
    if job.tp > system.gpu_count:
        raise FieldError("tp", job.tp, f"exceeds the {system.gpu_count} GPUs of a {system.name} node",
                         f"keep tensor parallelism inside a node (tp <= {system.gpu_count})")
    if n > system.gpu_count and (system.network is None or not system.network_count):
        raise FieldError("n_gpus", n, f"the plan needs {n} GPUs (tp x pp x dp x cp) but {system.name} has "
                         f"{system.gpu_count} and no network to reach more", "use a larger system or smaller degrees")
    return system


def check_weight_dtype_on(gpu, job: Job) -> None:
    """weight_dtype fp8 (W8A8) runs its GEMMs on fp8 tensor cores: the GPU's spec must list an
    fp8 peak (Hopper, Ada, Blackwell do; A100, T4, V100 do not)."""
    from simulator.core.quant import gemm_dtype
    if gemm_dtype(job) not in gpu.peak_flops_by_dtype:
        raise FieldError("weight_dtype", job.weight_dtype, f"{gpu.name} has no fp8 tensor cores (W8A8 needs them)",
                         "use int8 or int4 (weight-only), or a GPU with fp8 such as h100-sxm or l40s")


def _scalar(x) -> float:
    return float(np.asarray(x).reshape(-1)[0]) if np.ndim(x) else float(x)


def predict(model: ModelConfig, system: System, job: Job, executor: ExecutorProfile | None = None,
            kernels: KernelProfile | None = None, check_memory: bool = True, with_ops: bool = True,
            carbon_g_per_kwh: float = power.DEFAULT_CARBON_G_PER_KWH) -> Prediction:
    """One step of `job` (any phase, any plan) on `system`: time, per-GPU memory, breakdowns, and
    its power, energy and carbon (`Prediction.energy`, simulator.core.power, at grid intensity
    `carbon_g_per_kwh`). `job.power_cap_w` caps each GPU's board power: the clock drops until the
    step fits and compute-bound time stretches with it. `with_ops=False` skips the per-op display
    table (the numbers are the same; sweeps use it)."""
    job = validate_job(job, model)
    ex = executor or load_executor_profile("default")
    kp = kernels or load_kernel_profile(system.gpu.name)
    system = system_for_job(system, job)
    notes: list[str] = []
    power.check_carbon(carbon_g_per_kwh)
    if job.phase == "train":
        cost = train_cost(model, system, job, ex, kp)
        stage = _train_stage_ops(model, system, job, ex, kp)
        df = _train_table(model, system, job, ex, kp, cost, stage) if with_ops else pd.DataFrame(columns=OP_COLUMNS)
        gpu_flops, gpu_bytes = _train_activity(model, job, ex, stage)
        model_flops, hardware_flops = train_flops(model, job.seq, job.batch * job.dp, job.recompute, job.lora_rank)
        tokens = job.batch * job.seq * job.dp
        if job.pp > 1:
            notes.append(f"1F1B pipeline of {job.pp} stages: bubble {(job.pp - 1) / job.vpp:g} micro-batch slots")
    else:
        cost, rows = inference_cost(model, system, job, ex, kp, keep_ops=True)
        df = pd.DataFrame([{"name": r.name, "cls": r.cls, "pass": r.pass_, "count": r.count,
                            "flops": _scalar(r.flops), "bytes": _scalar(r.bytes), "kernels": _scalar(r.kernels),
                            "gpu_time_s": _scalar(r.gpu_time_s), "host_time_s": _scalar(r.host_time_s),
                            "time_s": _scalar(r.time_s), "bound": str(np.asarray(r.bound).reshape(-1)[0])}
                           for r in rows])
        _check_host_memory(model, system, job)
        if job.pp > 1:
            notes.append(f"pipeline of {job.pp} stages: latency is the sum of the stages")
        tokens = job.batch * (1 if job.phase == "decode" else job.seq) * job.dp
        gpu_flops, gpu_bytes = float(df["flops"].sum()), float(df["bytes"].sum())
        model_flops = hardware_flops = sum(o.flops * o.count for o in forward_ops(model, job, ex, layers=int(stage_layers(model, job.pp)))
                                           if o.cls in ("gemm", "attention")) * job.pp * job.tp * job.dp
    mem = cost.memory.scalar()
    peak = float(mem.total)
    step_time = float(cost.time_s)
    fits = peak <= system.gpu.mem_bytes
    if check_memory and not fits:
        raise_out_of_memory(model, system, job, mem)
    resources = {k: float(v) for k, v in cost.time_by_resource.items()}
    terms = {k: float(v) for k, v in cost.time_by_term.items()} if job.phase == "train" else {}
    # one GPU's compute-bound seconds: inference resources hold the whole pipeline (pp stages in turn)
    stages = job.pp if job.phase != "train" else 1
    act = power.Activity(time_s=step_time, compute_s=resources.get("compute", 0.0) / stages, flops=gpu_flops,
                         hbm_bytes=gpu_bytes)
    clock = (1.0, 1.0)
    if job.power_cap_w is not None:
        clock = power.clock_under_cap(act, power.GpuPower.of(system.gpu, job.dtype), job.power_cap_w)
        step_time, resources, terms, df = _capped(clock, step_time, resources, terms, df)
        act = power.Activity(time_s=step_time, compute_s=resources.get("compute", 0.0) / stages, flops=gpu_flops,
                             hbm_bytes=gpu_bytes)
        notes.append(f"power cap {job.power_cap_w:g} W per GPU: clock x{clock[1] / clock[0]:.2f} of its default, "
                     f"compute-bound time x{clock[0] / clock[1]:.2f}")
    energy = power.step_energy(act, system, job.dtype, job.n_gpus, tokens, float(cost.host_time_s), clock,
                               carbon_g_per_kwh, job.power_cap_w,
                               samples=job.batch * job.dp if job.phase == "train" else None) \
        if system.gpu.tdp_w > 0 else None
    return Prediction(
        model=model.name, hardware=system.name, job=job, time_s=step_time, peak_memory_bytes=peak,
        memory=mem, ops=df, bound=str(cost.bound), tokens_per_s=tokens / step_time,
        transfer_time_s=float(cost.transfer_time_s), notes=tuple(notes), model_flops=model_flops,
        hardware_flops=hardware_flops, n_gpus=job.n_gpus, fits=fits, peak_flops=system.gpu.peak_flops(job.dtype),
        time_by_resource=resources, time_terms=terms,
        host_time_s=float(cost.host_time_s), device_busy_s=float(cost.device_busy_s),
        expected_error=_expected(system, kp, ex, job.phase, job.weight_dtype), critical_path=cost.critical_path,
        gpu_flops=gpu_flops, gpu_hbm_bytes=gpu_bytes, energy=energy)


def _capped(clock: tuple[float, float], step_time: float, resources: dict, terms: dict, df: pd.DataFrame):
    """The step under a power cap: compute-bound time x f0 / f (simulator.core.power), everything
    else as it was. Training adds the extra time as its own `power_cap` term (the terms still add up
    to the step); the op table stretches its compute-bound rows."""
    stretch = clock[0] / clock[1]
    extra = resources.get("compute", 0.0) * (stretch - 1.0)
    resources = {**resources, "compute": resources.get("compute", 0.0) * stretch}
    if terms:
        terms = {**terms, "power_cap": extra}
    if len(df):
        df = df.copy()
        rows = df["bound"] == "compute"
        df.loc[rows, ["gpu_time_s", "time_s"]] *= stretch
    return step_time + extra, resources, terms, df


def _expected(system: System, kp: KernelProfile, ex: ExecutorProfile, phase: str, weight_dtype: str = "") -> dict | None:
    from simulator.core.expected_error import expected_error
    e = expected_error(system, kp, ex, phase, weight_dtype)
    return e.as_dict() if e else None


def raise_out_of_memory(model: ModelConfig, system: System, job: Job, mem: MemoryBreakdown):
    """One line: what does not fit, by how much, the components, and what to change."""
    peak = float(mem.total)
    gpu = system.gpu
    parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in mem.as_dict().items() if v)
    head = (f"{model.name} {job.phase} does not fit: needs {fmt_bytes(peak)} per GPU but {gpu.name} has "
            f"{fmt_bytes(gpu.mem_bytes)} (over by {fmt_bytes(peak - gpu.mem_bytes)}; {parts}); use ")
    if job.phase == "train":
        raise FixError(head.replace("{", "{{").replace("}", "}}") + "more GPUs ({tp}, {pp}), a smaller {batch} or "
                       "{micro_batch}, {recompute}, {zero} or {lora}", tp="tp", pp="pp", batch="batch",
                       micro_batch="micro_batch", recompute=("recompute", "full"), zero="zero", lora="lora_rank")
    raise FixError(head.replace("{", "{{").replace("}", "}}") + "more GPUs ({tp}, {pp}), a smaller {batch} or "
                   "{context}, or {offload}", tp="tp", pp="pp", batch="batch", context="context",
                   offload=("offload_weights", "cpu"))


def _check_host_memory(model: ModelConfig, system: System, job: Job) -> None:
    if job.offload_weights != "cpu" or system.host_mem_bytes is None:
        return
    from simulator.core.memory import weight_params_per_gpu
    need = (weight_params_per_gpu(model, job) - (model.embedding_params + model.head_params) / job.tp) * DTYPE_BYTES[job.dtype]
    if need > system.host_mem_bytes:
        raise RoofplanError(
            f"offloaded weights need {fmt_bytes(need)} of host memory but {system.name} has "
            f"{fmt_bytes(system.host_mem_bytes)}; use a system with more host memory or more GPUs")


def _train_stage_ops(model, system, job, ex, kp) -> list:
    """The ops one GPU of the busiest stage runs for one training micro-batch (communication left
    out): its layers forward, backward and recomputed, and its stage ends. The display table and
    the energy (FLOPs, bytes) both read this list."""
    layers = int(stage_layers(model, job.pp))
    moe_layers = min(model.n_moe_layers, layers) if model.is_moe else 0
    ops = []
    for moe, n in ((False, layers - moe_layers), (True, moe_layers)):
        if n:
            fwd, bwd = stage_ops(model, job, ex, moe, count=n)
            ops += [o for o in fwd + bwd if o.cls != "communication"]
            if job.recompute != "none":
                ops += [replace(o, name=o.name + ".recompute", pass_="bwd") for o in fwd if o.cls != "communication"
                        and (job.recompute == "full" or o.name.endswith(ATTENTION_OPS))]
    emb, head = end_ops(model, job, ex)

    def gpu_seconds(end):   # = time_ops(end)["time_s"].sum(), without building the table
        return sum(op_gpu_time(o, system, kp, ex, job.tp)[0] * o.count for o in end)
    ops += emb + head if job.pp == 1 else (emb if emb and gpu_seconds(emb) >= gpu_seconds(head) else head)
    return ops


def _train_activity(model, job, ex, stage_ops_: list) -> tuple[float, float]:
    """(FLOPs, HBM bytes) one GPU of the busiest stage moves in a training step: the stage's ops
    times the micro-batches, plus the optimizer over its share of the trainable parameters (the
    same count train_terms times: stage parameters x trainable fraction, / dp under ZeRO >= 1)."""
    m = job.n_micro
    flops = m * sum(float(np.sum(o.flops)) * o.count for o in stage_ops_)
    nbytes = m * sum(float(np.sum(o.bytes)) * o.count for o in stage_ops_)
    params = float(stage_params(model, job.tp, job.pp, job.ep)) * trainable_fraction(model, job.lora_rank, ex, job.lora_targets) \
        / (job.dp if job.zero >= 1 else 1)
    for o in optimizer_ops(model, job, params):
        if not (ex.autocast_weight_casts and o.name == "optimizer.cast_weights"):
            flops += float(o.flops) * o.count
            nbytes += float(o.bytes) * o.count
    return flops, nbytes


def _train_table(model, system, job, ex, kp, cost: StepCost, ops: list) -> pd.DataFrame:
    """Per-op table of a training step for display: the busiest stage's ops for one micro-batch
    times the micro-batches, then one row per step term that is not an op (communication,
    bubble, optimizer), so the rows add up to the step time."""
    m = job.n_micro
    df = time_ops(ops, system, kp, ex, job.tp)
    df["host_time_s"] = train_ops_host_s(ops, ex, job.recompute)
    df[["flops", "bytes", "kernels", "gpu_time_s", "host_time_s", "time_s"]] *= m
    # the host work that is no op's: per step, per layer, the optimizer
    layers = int(stage_layers(model, job.pp))
    host_rows = [(n, h) for n, h in (("step.host", m * ex.host_overhead_per_step_s),
                                     ("layer.python", m * layers * train_layer_python_s(ex, job.recompute)),
                                     ("optimizer.host", ex.host_optimizer_s)) if h > 0]
    t = cost.time_by_term
    extra = [("optimizer", "optimizer", "opt", "memory", t["optimizer"])] + [
        (name, "communication", "comm", "communication", t[name]) for name in ("tp_comm", "pp_comm", "dp_comm",
                                                                              "ep_comm", "cp_comm")] + [
        ("pipeline_bubble", "bubble", "idle", "bubble", t["bubble"])]
    # what the GPU waits for an eager host (the lanes' share of the compute term beyond the kernels)
    shown = float(df["time_s"].sum()) + sum(float(v) for *_, v in extra)
    extra.append(("host.exposed", "host", "idle", "host", max(float(cost.time_s) - shown, 0.0)))
    rows = [{"name": n, "cls": c, "pass": p, "count": 1, "flops": 0.0, "bytes": 0.0, "kernels": 0,
             "gpu_time_s": 0.0 if c == "host" else float(v), "host_time_s": 0.0, "time_s": float(v), "bound": b}
            for n, c, p, b, v in extra if float(v) > 1e-9 * float(cost.time_s)]
    rows += [{"name": n, "cls": "host", "pass": "fwd", "count": 1, "flops": 0.0, "bytes": 0.0, "kernels": 0,
              "gpu_time_s": 0.0, "host_time_s": h, "time_s": 0.0, "bound": "host"} for n, h in host_rows]
    return pd.concat([df, pd.DataFrame(rows)], ignore_index=True) if rows else df


# ---------------------------------------------------------------------------------------------
# many sizes at once


@dataclass(frozen=True)
class ManyPredictions:
    """Arrays broadcast to one shape: one element per configuration (SI units)."""
    time_s: np.ndarray
    tokens_per_s: np.ndarray
    peak_memory_bytes: np.ndarray
    fits: np.ndarray
    bound: np.ndarray                 # strings from BOUNDS or "transfer"
    transfer_time_s: np.ndarray
    memory: dict                      # MEMORY_PARTS -> array
    n_gpus: int
    energy: dict = field(default_factory=dict)   # power.StepEnergy fields -> array (power_w, energy_j, ...)
    energy_notes: tuple[str, ...] = ()
    cap_floor_w: np.ndarray | None = None   # under a power cap: nan, or the watts of a step the cap cannot
                                            # bring down (predict() refuses it; time and energy are nan)

    def cap_errors(self, cap_w: float | None) -> np.ndarray:
        """predict()'s refusal message per configuration ("" where the cap holds or there is none)."""
        out = np.full(np.shape(self.time_s), "", object)
        if self.cap_floor_w is not None and cap_w is not None:
            for i in zip(*np.nonzero(~np.isnan(self.cap_floor_w))):
                out[i] = str(power.cap_floor_error(cap_w, float(self.cap_floor_w[i])))
        return out


def check_sizes(model: ModelConfig, phase: str, batch, seq, context) -> np.ndarray:
    """Boolean mask of configurations whose sizes validate_job accepts (the structure -- tp,
    dtype, ... -- is checked once on a representative)."""
    total = seq + (context + 1 if phase == "decode" else 0)
    ok = (batch >= 1) & (seq >= 0) & (context >= 0) & (total <= model.max_positions)
    if phase == "prefill":
        ok = ok & (seq >= 1)
    return ok


def predict_many(model: ModelConfig, system: System, job: Job, batch, seq=0, context=0,
                 executor: ExecutorProfile | None = None, kernels: KernelProfile | None = None,
                 carbon_g_per_kwh: float = power.DEFAULT_CARBON_G_PER_KWH) -> ManyPredictions:
    """predict() for every (batch, seq, context) in the broadcast of the three arrays; the other
    fields come from `job` (phase prefill or decode: the same `inference_cost` predict() calls,
    on arrays), energy and a power cap (`job.power_cap_w`) through the same simulator.core.power
    functions. Sizes outside the model's limits raise RoofplanError: filter them first
    (`check_sizes`); configurations a cap cannot hold get nan (see ManyPredictions.cap_floor_w)."""
    if job.phase not in ("prefill", "decode"):
        raise FieldError("phase", job.phase, "the vectorised path covers prefill and decode",
                         "call predict() per training configuration")
    B = np.asarray(batch, dtype=np.int64)
    S = np.asarray(seq if job.phase == "prefill" else 0, dtype=np.int64)
    C = np.asarray(context if job.phase == "decode" else 0, dtype=np.int64)
    if not np.all(check_sizes(model, job.phase, B, S, C)):
        raise RoofplanError(f"some batch/seq/context values are out of range for {model.name} "
                            f"(batch >= 1, seq >= 1 for prefill, total tokens <= {model.max_positions})")
    job = validate_job(replace(job, batch=int(B.flat[0]), seq=int(S.flat[0]), context=int(C.flat[0])), model)
    ex = executor or load_executor_profile("default")
    kp = kernels or load_kernel_profile(system.gpu.name)
    system = system_for_job(system, job)
    power.check_carbon(carbon_g_per_kwh)
    vjob = replace(job, batch=B, seq=S, context=C)
    if job.offload_weights == "cpu":
        _check_host_memory(model, system, job)
    cost, _ = inference_cost(model, system, vjob, ex, kp)
    shape = np.shape(cost.time_s)
    tokens = B * (1 if job.phase == "decode" else S) * job.dp
    peak = np.broadcast_to(cost.memory.total, shape)
    time_s = np.asarray(cost.time_s, float)
    energy, notes, floor = {}, (), None
    if job.power_cap_w is not None and system.gpu.tdp_w <= 0:
        power.GpuPower.of(system.gpu)       # refuses: a cap on a GPU with no TDP would be ignored
    if system.gpu.tdp_w > 0:
        # what predict() reads off its op table: one GPU's FLOPs and HBM bytes over the step's ops
        fwd = forward_ops(model, vjob, ex, layers=int(stage_layers(model, job.pp)))
        gpu_flops = np.broadcast_to(sum(o.flops * o.count for o in fwd), shape)
        gpu_bytes = np.broadcast_to(sum(o.bytes * o.count for o in fwd), shape)
        compute = np.broadcast_to(cost.time_by_resource.get("compute", 0.0), shape)
        act = power.Activity(time_s=time_s, compute_s=compute / job.pp, flops=gpu_flops, hbm_bytes=gpu_bytes)
        clock = (1.0, 1.0)
        if job.power_cap_w is not None:
            f0, f, floor = power.clocks_under_cap(act, power.GpuPower.of(system.gpu, job.dtype), job.power_cap_w)
            time_s = time_s + compute * (f0 / f - 1.0)      # predict()'s _capped: compute-bound time x f0 / f
            act = power.Activity(time_s=time_s, compute_s=compute * f0 / f / job.pp, flops=gpu_flops,
                                 hbm_bytes=gpu_bytes)
            clock = (f0, f)
        energy, notes = power.step_energy_arrays(act, system, job.dtype, job.n_gpus, tokens, cost.host_time_s, clock,
                                                 carbon_g_per_kwh, job.power_cap_w)
    return ManyPredictions(
        time_s=time_s, tokens_per_s=np.broadcast_to(tokens / time_s, shape), peak_memory_bytes=peak,
        fits=peak <= system.gpu.mem_bytes, bound=cost.bound, transfer_time_s=cost.transfer_time_s,
        memory={k: v for k, v in cost.memory.as_dict().items() if k in ("weights", "kv_cache", "activations", "workspace")},
        n_gpus=job.n_gpus, energy=energy, energy_notes=notes, cap_floor_w=floor)


__all__ = ["Prediction", "ManyPredictions", "predict", "predict_many", "check_sizes", "system_for_job",
           "raise_out_of_memory", "BOUNDS", "TRAIN_TERMS", "MEMORY_PARTS"]
