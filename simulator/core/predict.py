"""predict(): one step of a job on a system -> time, memory, breakdown. The CLI, the planners
and the sweeps all call this (one source of truth)."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from simulator.core.errors import RoofplanError
from simulator.core.memory import MemoryBreakdown, inference_memory, training_memory, weight_params_per_gpu
from simulator.core.models import ModelConfig
from simulator.core.ops import Op, backward_ops, forward_ops, loss_ops, optimizer_ops, trainable_params
from simulator.core.profiles import ExecutorProfile, KernelProfile, load_executor_profile, load_kernel_profile
from simulator.core.comm import collective_time
from simulator.core.roofline import allreduce_time, time_ops
from simulator.core.specs import System
from simulator.core.units import DTYPE_BYTES, fmt_bytes
from simulator.core.workload import Job, validate_job


@dataclass(frozen=True)
class Prediction:
    model: str
    hardware: str
    job: Job
    time_s: float                    # one step, wall clock
    peak_memory_bytes: float         # per GPU
    memory: MemoryBreakdown
    ops: pd.DataFrame                # per-op breakdown (this GPU, whole step)
    bound: str                       # compute | memory | transfer | host | communication
    tokens_per_s: float
    transfer_time_s: float = 0.0     # host->GPU weight streaming (offload)
    notes: tuple[str, ...] = field(default_factory=tuple)
    model_flops: float = 0.0         # useful FLOPs of the step (all GPUs), no recompute
    hardware_flops: float = 0.0      # executed FLOPs (all GPUs), recompute included
    n_gpus: int = 1
    fits: bool = True

    def by_class(self) -> pd.DataFrame:
        g = self.ops.groupby("cls")[["flops", "bytes", "time_s"]].sum()
        g["share"] = g["time_s"] / max(g["time_s"].sum(), 1e-30)
        return g.sort_values("time_s", ascending=False)

    @property
    def mfu(self) -> float:
        peak = self._peak
        return self.model_flops / (self.time_s * peak * self.n_gpus) if peak else 0.0

    def as_dict(self) -> dict:
        by = self.by_class()
        return {
            "model": self.model, "hardware": self.hardware, "phase": self.job.phase,
            "batch": self.job.batch, "seq": self.job.seq, "context": self.job.context,
            "dtype": self.job.dtype, "tp": self.job.tp, "pp": self.job.pp, "dp": self.job.dp,
            "time_s": self.time_s, "peak_memory_bytes": self.peak_memory_bytes,
            "tokens_per_s": self.tokens_per_s, "bound": self.bound, "fits": self.fits,
            "transfer_time_s": self.transfer_time_s,
            "model_flops": self.model_flops, "hardware_flops": self.hardware_flops,
            "model_flops_per_gpu_s": self.model_flops / self.n_gpus / self.time_s,
            "hardware_flops_per_gpu_s": self.hardware_flops / self.n_gpus / self.time_s,
            "memory_bytes": self.memory.as_dict(),
            "time_by_class_s": {k: float(v) for k, v in by["time_s"].items()},
            "notes": list(self.notes),
        }

    _peak: float = 0.0


def _stream_schedule(layer_compute: float, layer_transfer: float, n_layers: int, overlap: bool) -> float:
    """Layer-streamed weights with double buffering: the copy of layer i+1 overlaps the compute
    of layer i, so the step costs one fill plus n x max(compute, transfer); without overlap the
    two add up."""
    if not overlap:
        return n_layers * (layer_compute + layer_transfer)
    return layer_transfer + (n_layers - 1) * max(layer_compute, layer_transfer) + layer_compute


def predict(model: ModelConfig, system: System, job: Job, executor: ExecutorProfile | None = None,
            kernels: KernelProfile | None = None, check_memory: bool = True) -> Prediction:
    job = validate_job(job, model)
    ex = executor or load_executor_profile("default")
    kp = kernels or load_kernel_profile(system.gpu.name)
    system = system_for_job(system, job)
    gpu = system.gpu
    n_gpus = job.n_gpus
    layers_per_stage = -(-model.n_layers // job.pp)
    notes: list[str] = []
    a = DTYPE_BYTES[job.dtype]

    if job.phase == "train":
        ops, df, step_time = _train(model, system, job, ex, kp, layers_per_stage)
        transfer = 0.0
        mem = training_memory(model, job, ex)
        tokens = job.batch * job.seq * job.dp
        attn_fwd = sum(o.flops * o.count for o in ops if o.cls == "attention" and o.pass_ == "fwd")
        lin_fwd = sum(o.flops * o.count for o in ops if o.cls == "gemm" and o.pass_ == "fwd")
        n_mb = job.batch // job.micro_batch
        # ops are per micro-batch on one stage; scale to the whole model replica and step
        per_rep = (lin_fwd + attn_fwd) * n_mb * job.pp * job.tp / max(1, _stage_layers_ratio(model, job))
        bwd_mult = 2.0 if not job.lora_rank else 1.0
        model_flops = per_rep * (1 + bwd_mult) * job.dp
        recompute_extra = per_rep * job.dp if job.recompute == "full" else (
            attn_fwd * n_mb * job.pp * job.tp * job.dp if job.recompute == "selective" else 0.0)
        hardware_flops = model_flops + recompute_extra
    else:
        fwd = forward_ops(model, job, ex, layers=layers_per_stage)
        df = time_ops(fwd, system, kp, ex, job.tp)
        compute = float(df["time_s"].sum())
        transfer = 0.0
        if job.offload_weights == "cpu":
            layer_rows = df["name"].str.startswith(("layer.", "moe_layer."))
            layer_compute = float(df.loc[layer_rows, "time_s"].sum()) / layers_per_stage
            other = compute - layer_compute * layers_per_stage
            layer_bytes = (weight_params_per_gpu(model, job) - (model.embedding_params + model.head_params) / job.tp) \
                / layers_per_stage * a
            bw = _h2d_Bps(system, kp, job.host_memory)
            layer_transfer = layer_bytes / bw + kp.copy_latency_s
            transfer = layer_transfer * layers_per_stage
            step_time = other + _stream_schedule(layer_compute, layer_transfer, layers_per_stage, job.overlap)
            buffers = 2 * layer_bytes + (model.embedding_params + model.head_params) / job.tp * a
            mem = inference_memory(model, job, ex, weights_on_gpu=False, offload_buffers=buffers)
            if system.host_mem_bytes is not None and layer_bytes * layers_per_stage > system.host_mem_bytes:
                raise RoofplanError(
                    f"offloaded weights need {fmt_bytes(layer_bytes * layers_per_stage)} of host memory but "
                    f"{system.name} has {fmt_bytes(system.host_mem_bytes)}; use a system with more host memory or more GPUs")
        else:
            step_time = compute
            mem = inference_memory(model, job, ex)
        if job.pp > 1:
            # one request traverses all stages in turn; activations hop between GPUs
            hop = job.batch * (1 if job.phase == "decode" else job.seq) * model.hidden * a
            step_time = step_time * job.pp + (job.pp - 1) * collective_time("p2p", hop, 2, system, 2)
            notes.append(f"pipeline of {job.pp} stages: latency is the sum of the stages")
        step_time += ex.host_overhead_per_step_s
        tokens = job.batch * (1 if job.phase == "decode" else job.seq) * job.dp
        model_flops = hardware_flops = sum(o.flops * o.count for o in fwd if o.cls in ("gemm", "attention")) \
            * job.pp * job.tp * job.dp
    peak = mem.total
    fits = peak <= gpu.mem_bytes
    if check_memory and not fits:
        parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in mem.as_dict().items() if v)
        raise RoofplanError(
            f"{model.name} {job.phase} does not fit: needs {fmt_bytes(peak)} per GPU but {gpu.name} has "
            f"{fmt_bytes(gpu.mem_bytes)} (over by {fmt_bytes(peak - gpu.mem_bytes)}; {parts}); "
            + ("use more GPUs (--tp/--pp), a smaller --batch or --micro-batch, --recompute full or --lora-rank"
               if job.phase == "train" else
               "use more GPUs (--tp/--pp), a smaller --batch or --context, or --offload weights=cpu")
        )
    totals = df.groupby("bound")["time_s"].sum()
    bound = "transfer" if transfer and transfer >= step_time * 0.5 else str(totals.idxmax()) if len(totals) else "compute"
    pred = Prediction(
        model=model.name, hardware=system.name, job=job, time_s=step_time, peak_memory_bytes=peak,
        memory=mem, ops=df, bound=bound, tokens_per_s=tokens / step_time, transfer_time_s=transfer,
        notes=tuple(notes), model_flops=model_flops, hardware_flops=hardware_flops, n_gpus=n_gpus, fits=fits,
    )
    object.__setattr__(pred, "_peak", gpu.peak_flops(job.dtype))
    return pred


def _stage_layers_ratio(model: ModelConfig, job: Job) -> float:
    """Layers on the busiest stage x pp / total layers (>= 1 when layers do not split evenly)."""
    return (-(-model.n_layers // job.pp)) * job.pp / model.n_layers


def _h2d_Bps(system: System, kp: KernelProfile, host_memory: str) -> float:
    if host_memory == "pageable":
        return min(kp.h2d_pageable_Bps, system.host_link.bw_Bps)
    return system.host_link.bw_Bps * kp.h2d_pinned_eff


def system_for_job(system: System, job: Job) -> System:
    """The system a job runs on: a bare GPU name grows to as many GPUs as tp x pp x dp asks;
    a named system must have them. Also checks that the GPU has the job's dtype."""
    from simulator.core.specs import system_from_gpu
    system.gpu.peak_flops(job.dtype)  # clear error if the GPU lacks the dtype
    n = job.n_gpus
    if n > system.gpu_count and system.name == system.gpu.name:
        return system_from_gpu(system.gpu, n)
    if n > system.gpu_count:
        raise RoofplanError(f"the plan needs {n} GPUs (tp x pp x dp) but {system.name} has {system.gpu_count}; "
                            "use a larger system or smaller degrees")
    return system


def _train(model, system, job, ex, kp, layers_per_stage):
    """Training step: micro-batches of forward + backward (+ recompute), optimizer, DP gradient
    all-reduce, pipeline bubble (1F1B: (pp - 1) extra micro-batch slots)."""
    mb = job.micro_batch
    n_mb = job.batch // mb
    fwd = forward_ops(model, job, ex, layers=layers_per_stage, batch=mb)
    bwd = backward_ops(fwd, job, ex.backward_memory_ratio)
    ops: list[Op] = fwd + loss_ops(model, job, mb * job.seq) + bwd
    if job.recompute == "full":
        ops += [Op(o.name + ".recompute", o.cls, o.flops, o.bytes, o.count, o.kernels, "bwd", o.kind, o.dtype, o.seq)
                for o in fwd if o.name.startswith(("layer.", "moe_layer."))]
    elif job.recompute == "selective":
        ops += [Op(o.name + ".recompute", o.cls, o.flops, o.bytes, o.count, o.kernels, "bwd", o.kind, o.dtype, o.seq)
                for o in fwd if o.cls == "attention"]
    df = time_ops(ops, system, kp, ex, job.tp)
    per_mb = float(df["time_s"].sum())
    # the per-op table reports the whole step: every micro-batch (and bubble slot) of this stage
    slots = n_mb + job.pp - 1
    df[["flops", "bytes", "kernels", "gpu_time_s", "host_time_s", "time_s"]] *= slots
    params_gpu = trainable_params(model, job) * weight_params_per_gpu(model, job) / model.params_total()
    shard = job.dp if job.zero >= 1 else 1
    opt = optimizer_ops(model, job, params_gpu / shard)
    opt_df = time_ops(opt, system, kp, ex, job.tp)
    step = per_mb * slots + float(opt_df["time_s"].sum())
    if job.dp > 1:
        grad_bytes = params_gpu * DTYPE_BYTES[job.dtype]
        # Megatron rank order (tp fastest, then dp): a DP group's ranks are tp apart
        dp_time = allreduce_time(grad_bytes, job.dp, system, max(1, min(job.dp, system.gpu_count // job.tp)))
        step += dp_time
        opt_df = pd.concat([opt_df, pd.DataFrame([{"name": "dp_grad_allreduce", "cls": "communication", "pass": "opt",
                                                   "count": 1, "flops": 0.0, "bytes": grad_bytes, "kernels": 1,
                                                   "gpu_time_s": dp_time, "host_time_s": 0.0, "time_s": dp_time,
                                                   "bound": "communication"}])], ignore_index=True)
    return ops + opt, pd.concat([df, opt_df], ignore_index=True), step
