"""A multi-GPU training plan (tp, pp, dp, cp, ep, sp, ZeRO, recompute, micro-batch, schedule) as
the planners and notebooks describe it, its validation, and `train_step`: the plan's Job through
the one step assembler (simulator.core.step: time terms on a two-stream timeline) and the one
memory model (simulator.core.memory: model states, Korthikanti et al. 2022 activations, 1F1B
in-flight micro-batches). `predict` on the same Job gives the same numbers.

Also here: DeepSpeed's ZeRO memory estimators, kept to check the memory model against them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.core.errors import RoofplanError
from simulator.core.memory import MemoryBreakdown
from simulator.core.memory import training_memory as core_training_memory
from simulator.core.models import ModelConfig
from simulator.core.profiles import ExecutorProfile, KernelProfile, load_executor_profile, load_kernel_profile
from simulator.core.specs import System
from simulator.core.step import train_cost, train_flops
from simulator.core.workload import Job, validate_job

RECOMPUTE = ("none", "selective", "full")


@dataclass(frozen=True)
class ParallelPlan:
    """How one training step is split over GPUs. `global_batch` is sequences per step over all
    data-parallel replicas; `vpp` > 1 is the interleaved 1F1B schedule with vpp model chunks per
    GPU; `ep` splits each MoE layer's experts over ep ranks of the data-parallel group."""
    tp: int = 1
    pp: int = 1
    dp: int = 1
    cp: int = 1
    ep: int = 1
    micro_batch: int = 1
    global_batch: int = 1
    vpp: int = 1
    sp: bool = False
    zero: int = 0
    recompute: str = "none"
    overlap_grad_reduce: bool = True
    grad_reduce_bytes: float = 2.0   # bytes per gradient element on the wire (bf16/fp16)
    dtype: str = "bf16"

    @property
    def n_gpus(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    @property
    def n_micro(self) -> int:
        return self.global_batch // (self.dp * self.micro_batch)

    @property
    def schedule(self) -> str:
        return "interleaved" if self.vpp > 1 else "1f1b"

    def job(self, seq: int) -> Job:
        """The training Job of this plan (batch = sequences per data-parallel replica)."""
        return Job(phase="train", batch=self.global_batch // self.dp, seq=seq, dtype=self.dtype,
                   recompute=self.recompute, tp=self.tp, pp=self.pp, dp=self.dp, cp=self.cp, ep=self.ep,
                   micro_batch=self.micro_batch, zero=self.zero, vpp=self.vpp, sp=self.sp)


@dataclass(frozen=True)
class TrainStep:
    """One training step of a plan (times in seconds, per GPU; FLOPs over all GPUs)."""
    plan: ParallelPlan
    seq: int
    time_s: float
    compute_s: float          # m x micro-batch forward + backward on the busiest stage (no comm)
    recompute_s: float        # the recomputed forward inside compute_s
    bubble_s: float
    tp_comm_s: float
    pp_comm_s: float
    dp_comm_s: float          # exposed
    ep_comm_s: float
    cp_comm_s: float
    optimizer_s: float
    memory: MemoryBreakdown
    model_flops: float
    hardware_flops: float
    peak_flops: float
    mem_capacity_bytes: float

    @property
    def n_gpus(self) -> int:
        return self.plan.n_gpus

    @property
    def peak_memory_bytes(self) -> float:
        return self.memory.total

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.mem_capacity_bytes

    @property
    def model_flops_per_gpu_s(self) -> float:
        return self.model_flops / self.n_gpus / self.time_s

    @property
    def hardware_flops_per_gpu_s(self) -> float:
        return self.hardware_flops / self.n_gpus / self.time_s

    @property
    def mfu(self) -> float:
        return self.model_flops_per_gpu_s / self.peak_flops

    @property
    def tokens_per_s(self) -> float:
        return self.plan.global_batch * self.seq / self.time_s

    def terms(self) -> dict[str, float]:
        return {"compute": self.compute_s - self.recompute_s, "recompute": self.recompute_s,
                "bubble": self.bubble_s, "tp_comm": self.tp_comm_s, "pp_comm": self.pp_comm_s,
                "dp_comm": self.dp_comm_s, "ep_comm": self.ep_comm_s, "cp_comm": self.cp_comm_s,
                "optimizer": self.optimizer_s}

    def as_dict(self) -> dict:
        p = self.plan
        return {"tp": p.tp, "pp": p.pp, "dp": p.dp, "cp": p.cp, "ep": p.ep, "vpp": p.vpp, "sp": p.sp,
                "zero": p.zero, "recompute": p.recompute, "micro_batch": p.micro_batch,
                "global_batch": p.global_batch, "n_micro": p.n_micro, "seq": self.seq,
                "time_s": self.time_s, "tokens_per_s": self.tokens_per_s,
                "peak_memory_bytes": self.peak_memory_bytes, "fits": self.fits,
                "model_flops_per_gpu_s": self.model_flops_per_gpu_s,
                "hardware_flops_per_gpu_s": self.hardware_flops_per_gpu_s, "mfu": self.mfu,
                "time_terms_s": self.terms(), "memory_bytes": self.memory.as_dict()}


# --------------------------------------------------------------------------------------------
# validation


def validate_plan(plan: ParallelPlan, model: ModelConfig, system: System, seq: int) -> None:
    """One-line FieldErrors for plans that cannot run: the plan's Job through validate_job (the
    same checks `predict` makes), plus what a plan adds: an even layer split over pp x vpp
    (Megatron's requirement) and a global batch that dp x micro-batch divides."""
    from simulator.core.errors import FieldError
    from simulator.core.predict import system_for_job
    for name in ("tp", "pp", "dp", "cp", "ep", "micro_batch", "global_batch", "vpp"):
        v = getattr(plan, name)
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise FieldError(name, v, "must be a positive integer")
    if plan.global_batch % (plan.dp * plan.micro_batch):
        raise FieldError("global_batch", plan.global_batch,
                         f"is not a multiple of dp x micro_batch = {plan.dp * plan.micro_batch}",
                         "change global_batch or micro_batch")
    if model.n_layers % (plan.pp * plan.vpp):
        raise FieldError("pp", plan.pp, f"x virtual stages {plan.vpp} does not divide {model.name}'s "
                         f"{model.n_layers} layers", "use a divisor")
    system_for_job(system, validate_job(plan.job(seq), model))


# --------------------------------------------------------------------------------------------
# one plan through the step assembler


def train_step(model: ModelConfig, system: System, plan: ParallelPlan, seq: int,
               executor: ExecutorProfile | None = None, kernels: KernelProfile | None = None) -> TrainStep:
    """Time and memory of one training step of `plan`: the step assembler's `train_cost` of the
    plan's Job, the same numbers `predict` and the planners give (see simulator.core.step)."""
    validate_plan(plan, model, system, seq)
    ex = executor or load_executor_profile("default")
    kp = kernels or load_kernel_profile(system.gpu.name)
    job = plan.job(seq)
    cost = train_cost(model, system, job, ex, kp, overlap_grad_reduce=plan.overlap_grad_reduce)
    mf, hf = train_flops(model, seq, plan.global_batch, plan.recompute)
    f = {k: float(v) for k, v in cost.time_by_term.items()}
    return TrainStep(plan=plan, seq=seq, time_s=float(cost.time_s), compute_s=f["compute"] + f["recompute"],
                     recompute_s=f["recompute"], bubble_s=f["bubble"], tp_comm_s=f["tp_comm"], pp_comm_s=f["pp_comm"],
                     dp_comm_s=f["dp_comm"], ep_comm_s=f["ep_comm"], cp_comm_s=f["cp_comm"],
                     optimizer_s=f["optimizer"], memory=cost.memory.scalar(),
                     model_flops=mf, hardware_flops=hf, peak_flops=system.gpu.peak_flops(plan.dtype),
                     mem_capacity_bytes=system.gpu.mem_bytes)


def training_memory(model: ModelConfig, plan: ParallelPlan, seq: int, ex: ExecutorProfile) -> MemoryBreakdown:
    """Per-GPU memory of the plan's fullest stage (simulator.core.memory.training_memory)."""
    return core_training_memory(model, plan.job(seq), ex).scalar()


# --------------------------------------------------------------------------------------------
# DeepSpeed's ZeRO memory estimators (deepspeed.runtime.zero.stage_1_and_2 / stage3), for checks


def zero2_model_states_mem_needs(total_params: float, num_gpus_per_node: int = 1, num_nodes: int = 1,
                                 cpu_offload: bool = True, additional_buffer_factor: float = 1.5) -> tuple[int, int]:
    """(cpu bytes, gpu bytes) as DeepSpeed's `estimate_zero2_model_states_mem_needs`:
    offload: gpu 2 P, cpu P max(4 G, 16) x buffer; else gpu 4 P + 16 P / G, cpu 4 P gpus_per_node x buffer."""
    total_gpus = num_nodes * num_gpus_per_node
    if cpu_offload:
        gpu = 2 * total_params
        cpu = total_params * max(4 * total_gpus, 16) * additional_buffer_factor
    else:
        gpu = 4 * total_params + int(16 * total_params / total_gpus)
        cpu = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu), int(gpu)


def zero3_model_states_mem_needs(total_params: float, largest_layer_params: float, num_gpus_per_node: int = 1,
                                 num_nodes: int = 1, cpu_offload: bool = True, cpu_offload_params: bool = True,
                                 zero_init: bool = True, additional_buffer_factor: float = 1.5) -> tuple[int, int, int]:
    """(cpu bytes, gpu bytes, largest layer bytes) as DeepSpeed's `estimate_zero3_model_states_mem_needs`."""
    total_gpus = num_nodes * num_gpus_per_node
    gpus_factor = 1 / num_nodes
    largest = 4 * largest_layer_params
    if cpu_offload:
        if cpu_offload_params:
            gpu = largest
            cpu = total_params * (18 * gpus_factor if zero_init else max(4 * num_gpus_per_node, 18 * gpus_factor)) \
                * additional_buffer_factor
        else:
            gpu = largest + int(2 * total_params / total_gpus)
            cpu = total_params * (16 * gpus_factor if zero_init else max(4 * num_gpus_per_node, 16 * gpus_factor)) \
                * additional_buffer_factor
    else:
        gpu = largest + int(18 * total_params / total_gpus)
        cpu = (largest_layer_params if zero_init else total_params) * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu), int(gpu), int(largest)
