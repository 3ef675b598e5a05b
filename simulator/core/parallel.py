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

from simulator.core.memory import MemoryBreakdown
from simulator.core.memory import training_memory as core_training_memory
from simulator.core.models import ModelConfig
from simulator.core.profiles import ExecutorProfile, KernelProfile, load_executor_profile, load_kernel_profile
from simulator.core.predict import Prediction, predict
from simulator.core.specs import System
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
    overlap_grad_reduce: bool = True   # reduce gradients while the last backward runs
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
                   micro_batch=self.micro_batch, zero=self.zero, vpp=self.vpp, sp=self.sp,
                   overlap=self.overlap_grad_reduce)


@dataclass(frozen=True)
class TrainStep:
    """One training step of a plan: a view of `predict()`'s Prediction of the plan's Job with the
    names the planners and notebooks use (times in seconds, per GPU; FLOPs over all GPUs)."""
    plan: ParallelPlan
    seq: int
    prediction: Prediction

    def __getattr__(self, name):   # time_s, memory, peak_memory_bytes, fits, mfu, ... of the Prediction
        if name == "prediction":
            raise AttributeError(name)
        return getattr(self.prediction, name)

    def _term(self, name: str) -> float:
        return self.prediction.time_terms[name]

    @property
    def compute_s(self) -> float:
        """Forward + backward (+ recompute) of the busiest stage, no communication."""
        return self._term("compute") + self._term("recompute")

    recompute_s = property(lambda self: self._term("recompute"))
    bubble_s = property(lambda self: self._term("bubble"))
    tp_comm_s = property(lambda self: self._term("tp_comm"))
    pp_comm_s = property(lambda self: self._term("pp_comm"))
    dp_comm_s = property(lambda self: self._term("dp_comm"))    # exposed
    ep_comm_s = property(lambda self: self._term("ep_comm"))
    cp_comm_s = property(lambda self: self._term("cp_comm"))
    optimizer_s = property(lambda self: self._term("optimizer"))

    @property
    def tokens_per_s(self) -> float:
        return self.plan.global_batch * self.seq / self.prediction.time_s

    def terms(self) -> dict[str, float]:
        """The step's time terms (they add up to time_s): compute, recompute, bubble, tp_comm, ..."""
        return dict(self.prediction.time_terms)

    def as_dict(self) -> dict:
        return self.prediction.as_dict()


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
    """Time and memory of one training step of `plan`: `predict()` of the plan's Job (the one
    step assembler, simulator.core.step), named as the planners name it."""
    validate_plan(plan, model, system, seq)
    ex = executor or load_executor_profile("default")
    kp = kernels or load_kernel_profile(system.gpu.name)
    return TrainStep(plan, seq, predict(model, system, plan.job(seq), ex, kp, check_memory=False, with_ops=False))


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
