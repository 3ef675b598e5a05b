"""Calibrated profiles: how fast kernels really run (per GPU) and how an executor issues them.

* `KernelProfile` (hardware_specs/profiles/kernels/<gpu>.yaml): achieved-efficiency curves fitted
  to measurements. Each curve gives the fraction of datasheet peak reached as a function of the
  op's *ideal* time (work / peak): small ops cannot fill the machine (Little's law: a fixed
  latency must be covered by bytes or FLOPs in flight), large ones plateau (and on H100 the
  clock drops under sustained tensor-core load). Because the curves are in units of ideal time,
  they carry to GPUs that have no measurements of their own: such a GPU uses the reference
  profile's curves against its own peaks (`load_kernel_profile` says which was used).
* `ExecutorProfile` (hardware_specs/profiles/executors/<name>.yaml): how a software stack turns
  a layer into kernels (fused QKV or not, eager fp32 RMSNorm, ...) and what host overhead it adds
  per kernel (0 for CUDA graphs: `default`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Literal, Mapping

import numpy as np
from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator, model_validator

from simulator.core.errors import RoofplanError, clip, did_you_mean
from simulator.core.schema import (Finite, Fraction, Name, NonNegative, NonNegInt, PosInt, Positive, Strict, Text, check,
                                   is_file, read_yaml, to_si)
from simulator.core.specs import specs_root
from simulator.core.units import US

REFERENCE_GPU = "h100-sxm"


@dataclass(frozen=True)
class Curve:
    """Efficiency (0..1] piecewise-linear in log10(ideal time), clamped at both ends."""
    log_t: tuple[float, ...]
    eff: tuple[float, ...]

    def __call__(self, t_ideal):
        # np.interp clamps beyond the knots, so log10(0) = -inf is safe: silence its warning
        with np.errstate(divide="ignore"):
            x = np.log10(t_ideal)
        return np.interp(x, self.log_t, self.eff)

    @staticmethod
    def flat(eff: float) -> "Curve":
        """The same efficiency at every ideal time."""
        return Curve((0.0,), (eff,))

    @staticmethod
    def of(f: "CurveFile") -> "Curve":
        return Curve(tuple(np.log10(f.knots_s)), tuple(f.efficiency))

    def to_yaml(self) -> dict:
        return {"knots_s": [float(f"{10 ** x:.3g}") for x in self.log_t],
                "efficiency": [round(float(e), 4) for e in self.eff]}


@dataclass(frozen=True)
class GemmModel:
    """t = overhead + (t_c^p + t_m^p)^(1/p), t_c = F / (peak * eff_c), t_m = B / (bw * eff_m)."""
    compute: Curve
    memory: Curve
    overhead_s: float
    smoothness: float


@dataclass(frozen=True)
class KernelProfile:
    name: str
    hardware: str
    gemm: Mapping[str, GemmModel]          # by dtype
    attn_prefill: Curve                    # fraction of bf16 peak vs ideal time
    attn_prefill_diag_tokens: float        # causal masking waste: flops x (1 + diag/S)
    attn_prefill_overhead_s: float
    attn_bwd_ratio: float                  # flash backward time / forward time
    attn_decode: Curve                     # fraction of HBM bandwidth vs ideal time
    attn_decode_overhead_s: float
    memory: Curve                          # elementwise / norm / copy kernels: fraction of HBM bw
    kernel_overhead_s: float               # per small kernel, GPU side (launch latency, tail)
    norm_slowdown: float                   # eager RMSNorm (reductions, fp32) vs a plain streaming kernel
    eager_slowdown: float                  # memory-bound kernels inside a real model (broadcasts, strides,
                                           # mixed dtypes) vs the contiguous microbenchmarks; from a trace
    h2d_pinned_eff: float                  # fraction of host link bandwidth
    d2h_pinned_eff: float
    h2d_pageable_Bps: float                # pageable copies are bound by the host's staging copy
    d2h_pageable_Bps: float
    copy_latency_s: float
    cpu_adam_params_per_s: float = 1e9
    source: str = ""
    fitted_on: str = ""                    # the GPU whose measurements produced the curves

    def gemm_for(self, dtype: str) -> GemmModel:
        if dtype in self.gemm:
            return self.gemm[dtype]
        return self.gemm["bf16"]


@dataclass(frozen=True)
class ExecutorProfile:
    """How a software stack issues a transformer layer, and its host cost per kernel."""
    name: str
    description: str
    host_overhead_per_kernel_s: float = 0.0   # CPU time to issue one kernel (0: CUDA graph)
    stream_gap_s: float = 0.0                 # GPU-side time between back-to-back kernels of this
                                              # executor's stream (not in a kernel's traced duration)
    kernel_overhead_s: float | Mapping[str, float] | None = None
                                              # GPU time per small kernel inside this executor's
                                              # stream (graph replay packs kernels tighter than an
                                              # isolated launch), one value or by op class; None (or
                                              # a class not named) = the kernel profile's
    host_overhead_per_step_s: float = 0.0     # fixed per step (sampling, cache bookkeeping)
    host_per_op_s: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # CPU time to dispatch one op, by op
                                              # class (framework work around the call: argument
                                              # checks, autocast, module hooks), besides per kernel
    host_per_layer_s: float = 0.0             # Python per decoder layer (module calls, cache update)
    host_new_shape_s: float = 0.0             # per decode step: the attention backend builds a plan
                                              # for a KV length it has not seen (cuDNN SDPA)
    host_autograd_scale: float = 1.0          # training forward: dispatch under autograd recording and
                                              # autocast vs the same op in inference
    host_backward_per_kernel_s: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
                                              # one autograd node per forward kernel, by op class
    host_backward_per_layer_s: float = 0.0    # autograd engine work per decoder layer
    host_recompute_scale: float = 1.0         # full recompute: host time of a checkpointed layer (its
                                              # forward, recomputed forward and backward) / the same
                                              # ops' host time unwrapped (torch.utils.checkpoint's
                                              # RNG state, detach and nested backward)
    host_optimizer_s: float = 0.0             # optimizer.step() + zero_grad() on the host
    fused_qkv: bool = True
    fused_gate_up: bool = True
    fused_families: tuple[str, ...] = ()   # "family.qkv" / "family.gate_up": projections this stack's
                                           # code for that model family fuses whatever fused_qkv /
                                           # fused_gate_up say (HF transformers: Phi-3, GPT-2)
    norm_kernels: int = 8            # eager fp32 RMSNorm: cast, pow, mean, add, rsqrt, mul, cast, mul
    norm_bytes_per_elem: float = 36  # HBM traffic of those kernels per element (bf16 in/out)
    rope_kernels: int = 10           # q and k: 2 x (mul, neg, cat, mul, add)
    rope_bytes_per_elem: float = 20  # x*cos 4, neg (half) 2, cat 4, *sin 4, add 6
    repeat_kv: bool = False          # materialise K/V per query head before attention (HF eager)
    kv_cache_concat: bool = False    # decode appends by torch.cat: the whole cache is copied every
                                     # step (HF DynamicCache), not written in place
    train_residual_bytes: float = 4  # autocast with fp32 master weights keeps the residual in fp32
    workspace_bytes: float = 0.0     # allocator / cuBLAS workspace beyond tensors
    backward_memory_ratio: float = 2.0   # backward traffic of memory-bound ops / forward traffic
    gemm_efficiency_scale: float = 1.0   # this stack's GEMMs vs the microbenchmarked ones (layout, library)
    gemm_bandwidth_scale: float = 1.0    # this stack's memory-bound (small-batch) GEMMs vs the microbenchmarked
                                         # ones, on HBM bandwidth (a serving engine's weight-streaming kernels)
    gemm_overhead_s: float | None = None       # this stack's GEMM kernels in its stream: time beyond the
    gemm_memory_efficiency: float | None = None  # work, and the flat share of HBM bandwidth its memory-bound
                                               # (small-batch) GEMMs reach; None = the kernel profile's
                                               # (microbenchmarked, isolated: overhead and a curve)
    memory_efficiency_scale: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
                                               # this stack's memory-bound kernels vs the kernel profile,
                                               # by op class, on HBM bandwidth (absent: 1)
    attn_score_bytes_per_elem: float = 0.0  # unfused attention: HBM bytes per score element (0 = flash)
    attn_decode_efficiency_scale: float = 1.0  # this stack's decode attention (e.g. paged) vs the
                                               # microbenchmarked kernel, on HBM bandwidth
    attn_decode_overhead_s: float | None = None  # its decode attention kernel's time beyond the work
                                                 # (None: the kernel profile's)
    attn_decode_traffic_scale: float = 1.0     # HBM bytes this stack's decode attention moves per byte
                                               # of KV cache read once (paged blocks, KV re-read per query
                                               # head group): more traffic, not a slower rate -- the
                                               # power model sees it (simulator.core.power)
    moe_permute_kernels: int = 0              # an eager stack's token permutation around routed experts
                                              # (sort, gathers, histogram, offsets, weighting, inverse
                                              # gather): kernels beyond a fused engine's combine (0: fused)
    copy_efficiency_scale: float = 1.0        # this stack's host -> GPU weight copies vs the kernel
                                              # profile's microbenchmarked rate (one large copy of one
                                              # buffer); fitted on its end-to-end cases (calibrate)
    lora_adapter_dtype: str = "fp32"          # PEFT keeps LoRA adapters in fp32 beside a bf16/fp16 base
                                              # (LoraConfig/get_peft_model autocast_adapter_dtype=True)
    offload_embeddings: bool = False          # weight offload moves the embedding and LM head too
                                              # (accelerate.cpu_offload hooks every module)
    autocast_weight_casts: bool = False       # training under autocast with fp32 parameters: each
                                              # forward casts every weight to the compute dtype (no
                                              # bf16 working copy recast by the optimizer)
    fitted_on: str = ""                       # the hardware whose measurements fitted it ("" = from
                                              # the framework's code and published numbers only)
    persistent_grad_buffer: bool = False  # gradients live in buffers allocated for the whole run
                                          # (Megatron main_grad, DDP buckets); False: PyTorch's
                                          # default, .grad set to None between steps, so the first
                                          # micro-batch's loss backward (the peak) has no gradients
    # serving engine behaviour (read by simulator.serving.simulate, not by predict()):
    cuda_graph_batch_sizes: tuple[int, ...] = ()   # captured decode batch sizes: a decode batch is padded
                                                   # up to the next one (beyond the largest: no graph, no padding)
    max_num_batched_tokens: int = 0      # token budget per step (decode tokens + prompt chunks in one
                                         # forward: chunked prefill); 0: not a chunked-prefill engine
    mixed_prefill: bool | None = None    # prompt chunks ride in the decode batch's forward (vLLM V1,
                                         # Sarathi-Serve) or prompts run first in steps of their own
                                         # (False: vLLM V0, SGLang without --enable-mixed-chunk);
                                         # None: not said, mixed (simulator.serving.simulate.scheduling)
    scheduler_step_s: float = 0.0        # engine host work per step (scheduler, input preparation, output
    scheduler_per_seq_s: float = 0.0     # processing): fixed + per running sequence
    async_scheduling: bool = False       # that host work overlaps the GPU's previous step (vLLM V1 async
                                         # scheduling, SGLang's overlap scheduler): a step takes max(GPU, host)
    kv_block_tokens: int = 1             # KV-cache block (page) size: a request holds whole blocks
    gpu_memory_utilization: float | None = None   # share of device memory the engine manages (weights + KV);
                                                  # None: simulator.serving's default (vLLM's 0.9)
    source: str = ""

    @property
    def eager_modules(self) -> bool:
        """The stack runs each module's torch ops one kernel at a time (its RMSNorm is several
        kernels): a LayerNorm is torch's one fused layer_norm kernel, an activation the op
        sequence of its Hugging Face module (models.HF_ACTIVATIONS)."""
        return self.norm_kernels > 1

    def kernel_overhead(self, cls: str, default: float) -> float:
        """GPU time per small kernel of op class `cls` in this stack's stream (`default`: the
        kernel profile's, for an executor that does not say)."""
        k = self.kernel_overhead_s
        if isinstance(k, Mapping):
            return k.get(cls, default)
        return default if k is None else k

    def gemm_model(self, base: GemmModel) -> GemmModel:
        """The kernel profile's GEMM model with this stack's in-stream overhead and flat memory
        efficiency where they were fitted to its trace."""
        if self.gemm_overhead_s is None and self.gemm_memory_efficiency is None:
            return base
        e = self.gemm_memory_efficiency
        return replace(base, overhead_s=base.overhead_s if self.gemm_overhead_s is None else self.gemm_overhead_s,
                       memory=base.memory if e is None else Curve.flat(e))


def _profiles_dir(sub: str) -> Path:
    return specs_root() / "profiles" / sub


def list_profiles(sub: str) -> list[str]:
    d = _profiles_dir(sub)
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


# --------------------------------------------------------------------------------------------
# file schemas (simulator/core/schema.py says how they are checked)


class CurveFile(Strict):
    knots_s: list[Positive] = Field(min_length=1)       # ideal time of the op, increasing
    efficiency: list[Fraction]                         # fraction of peak reached at each knot

    @model_validator(mode="after")
    def _knots(self):
        if len(self.knots_s) != len(self.efficiency):
            raise ValueError(f"'knots_s' has {len(self.knots_s)} values and 'efficiency' {len(self.efficiency)}; "
                             f"give one efficiency per knot")
        if any(b <= a for a, b in zip(self.knots_s, self.knots_s[1:])):
            raise ValueError(f"'knots_s' must increase ({self.knots_s}); sort the knots with their efficiencies")
        return self


class GemmFile(Strict):
    overhead_us: NonNegative
    smoothness: Positive
    compute: CurveFile
    memory: CurveFile


class AttentionPrefillFile(CurveFile):
    overhead_us: NonNegative
    diag_tokens: NonNegative
    backward_ratio: Positive


class AttentionDecodeFile(CurveFile):
    overhead_us: NonNegative


class ElementwiseFile(CurveFile):
    kernel_overhead_us: NonNegative
    norm_slowdown: Positive = 1.0
    eager_slowdown: Positive = 1.0


class CopyFile(Strict):
    h2d_pinned_efficiency: Fraction
    d2h_pinned_efficiency: Fraction
    h2d_pageable_GBps: Positive
    d2h_pageable_GBps: Positive
    latency_us: NonNegative


class HostCPUFile(Strict):
    copy_GBps: Positive | None = None                  # measured, documents the CPU; not read
    sgemm_TFLOPS: Positive | None = None
    adam_params_per_s: Positive = 1e9


class KernelProfileFile(Strict):
    name: Name | None = None
    kind: Literal["kernel-profile"] | None = None
    hardware: Name
    source: Text
    gemm: dict[Name, GemmFile]
    attention_prefill: AttentionPrefillFile
    attention_decode: AttentionDecodeFile
    elementwise: ElementwiseFile
    copy_: CopyFile = Field(alias="copy")      # `copy` would shadow BaseModel.copy
    cpu: HostCPUFile = HostCPUFile()

    @field_validator("gemm")
    @classmethod
    def _bf16(cls, gemm):
        if "bf16" not in gemm:
            raise ValueError(f"has {', '.join(gemm) or 'no'} curves but needs bf16: every kernel profile carries a bf16 GEMM curve")
        return gemm


def parse_kernel_profile(d, path: Path) -> KernelProfile:
    f = check(KernelProfileFile, d, path, fix=f"re-run `roofplan calibrate` or compare with "
                                              f"hardware_specs/profiles/kernels/{REFERENCE_GPU}.yaml")
    gemm = {dt: GemmModel(compute=Curve.of(g.compute), memory=Curve.of(g.memory), overhead_s=g.overhead_us * US,
                          smoothness=g.smoothness) for dt, g in f.gemm.items()}
    ap, ad, ew, cp = f.attention_prefill, f.attention_decode, f.elementwise, f.copy_
    return KernelProfile(
        name=path.stem, hardware=f.hardware, gemm=MappingProxyType(gemm),
        attn_prefill=Curve.of(ap), attn_prefill_diag_tokens=ap.diag_tokens, attn_prefill_overhead_s=ap.overhead_us * US,
        attn_bwd_ratio=ap.backward_ratio,
        attn_decode=Curve.of(ad), attn_decode_overhead_s=ad.overhead_us * US,
        memory=Curve.of(ew), kernel_overhead_s=ew.kernel_overhead_us * US,
        norm_slowdown=ew.norm_slowdown, eager_slowdown=ew.eager_slowdown,
        h2d_pinned_eff=cp.h2d_pinned_efficiency, d2h_pinned_eff=cp.d2h_pinned_efficiency,
        h2d_pageable_Bps=to_si(cp.h2d_pageable_GBps, 1e9, path, "copy.h2d_pageable_GBps"),
        d2h_pageable_Bps=to_si(cp.d2h_pageable_GBps, 1e9, path, "copy.d2h_pageable_GBps"),
        copy_latency_s=cp.latency_us * US, cpu_adam_params_per_s=f.cpu.adam_params_per_s,
        source=f.source, fitted_on=f.hardware,
    )


DATASHEET = "datasheet"


def datasheet_kernel_profile(gpu_name: str) -> KernelProfile:
    """No calibration at all: every kernel at the datasheet peak FLOP/s and bandwidth, no
    overheads (the plain roofline most spreadsheets use). `--kernel-profile datasheet`."""
    flat = Curve((0.0,), (1.0,))
    g = GemmModel(compute=flat, memory=flat, overhead_s=0.0, smoothness=50.0)
    return KernelProfile(name=DATASHEET, hardware=gpu_name, gemm=MappingProxyType({"bf16": g}), attn_prefill=flat,
                         attn_prefill_diag_tokens=0.0, attn_prefill_overhead_s=0.0, attn_bwd_ratio=2.5,
                         attn_decode=flat, attn_decode_overhead_s=0.0, memory=flat, kernel_overhead_s=0.0,
                         norm_slowdown=1.0, eager_slowdown=1.0, h2d_pinned_eff=1.0, d2h_pinned_eff=1.0,
                         h2d_pageable_Bps=1e30, d2h_pageable_Bps=1e30, copy_latency_s=0.0,
                         source="datasheet peaks only (no calibration)", fitted_on=DATASHEET)


def load_kernel_profile(gpu_name: str, path: str | None = None) -> KernelProfile:
    """The GPU's own fitted profile, else the reference GPU's curves (carried by ideal time);
    path "datasheet" is the uncalibrated roofline."""
    if path == DATASHEET:
        return datasheet_kernel_profile(gpu_name)
    if path:
        p = Path(path)
        if not is_file(p):
            raise RoofplanError(f"kernel profile {clip(p)} not found; give a profile .yaml, or 'datasheet' for the "
                                f"uncalibrated roofline")
        return parse_kernel_profile(read_yaml(p), p)
    d = _profiles_dir("kernels")
    p = d / f"{gpu_name}.yaml"
    if not p.is_file():
        p = d / f"{REFERENCE_GPU}.yaml"
    if not p.is_file():
        raise RoofplanError(f"no kernel profile in {d}; run `roofplan calibrate` to create {REFERENCE_GPU}.yaml")
    return parse_kernel_profile(read_yaml(p), p)


def _op_classes(v: dict) -> dict:
    from simulator.core.ops import OP_CLASSES
    for k in v:
        if k not in OP_CLASSES:
            raise ValueError(f"names op class '{k}'{did_you_mean(k, OP_CLASSES)}; the op classes are "
                             f"{', '.join(OP_CLASSES)}")
    return v


PerClassUs = Annotated[dict[str, NonNegative], AfterValidator(_op_classes)]
# one number for every class, or a mapping by op class (the error then names the class)
NumberOrPerClassUs = Annotated[Annotated[NonNegative, Tag("<number>")] | Annotated[PerClassUs, Tag("<by class>")],
                               Discriminator(lambda v: "<by class>" if isinstance(v, dict) else "<number>")]


def _increasing(v: list) -> list:
    if any(b <= a for a, b in zip(v, v[1:])):
        raise ValueError(f"must increase ({clip(str(v))}); list each captured batch size once, in order")
    return v


class ExecutorFields(Strict):
    """The fields of an executor profile that describe the stack (all optional: default.yaml's
    values otherwise). Unit-suffixed YAML names; `_EXEC_UNITS` maps them to ExecutorProfile's."""
    host_overhead_per_kernel_us: NonNegative = 0.0
    host_overhead_per_step_us: NonNegative = 0.0
    kernel_overhead_us: NumberOrPerClassUs | None = None
    stream_gap_us: NonNegative = 0.0
    host_per_op_us: PerClassUs = {}
    host_per_layer_us: NonNegative = 0.0
    host_new_shape_us: NonNegative = 0.0
    host_autograd_scale: Positive = 1.0
    host_backward_per_kernel_us: PerClassUs = {}
    host_backward_per_layer_us: NonNegative = 0.0
    host_recompute_scale: Positive = 1.0
    host_optimizer_us: NonNegative = 0.0
    fused_qkv: bool = True
    fused_gate_up: bool = True
    fused_families: list[Annotated[str, Field(pattern=r"^[a-z0-9_]+\.(qkv|gate_up)$")]] = []
    norm_kernels: NonNegInt = 8
    norm_bytes_per_elem: NonNegative = 36
    rope_kernels: NonNegInt = 10
    rope_bytes_per_elem: NonNegative = 20
    repeat_kv: bool = False
    kv_cache_concat: bool = False
    train_residual_bytes: Positive = 4
    workspace_MiB: NonNegative = 0.0
    backward_memory_ratio: Positive = 2.0
    gemm_efficiency_scale: Positive = 1.0
    gemm_bandwidth_scale: Positive = 1.0
    gemm_overhead_us: NonNegative | None = None
    gemm_memory_efficiency: Fraction | None = None
    memory_efficiency_scale: Annotated[dict[str, Positive], AfterValidator(_op_classes)] = {}
    attn_score_bytes_per_elem: NonNegative = 0.0
    attn_decode_efficiency_scale: Positive = 1.0
    attn_decode_overhead_us: NonNegative | None = None
    attn_decode_traffic_scale: Annotated[Finite, Field(ge=1.0)] = 1.0
    moe_permute_kernels: NonNegInt = 0
    copy_efficiency_scale: Positive = 1.0
    lora_adapter_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    offload_embeddings: bool = False
    autocast_weight_casts: bool = False
    persistent_grad_buffer: bool = False
    fitted_on: str = ""
    cuda_graph_batch_sizes: Annotated[list[PosInt], AfterValidator(_increasing)] = []
    max_num_batched_tokens: NonNegInt = 0
    mixed_prefill: bool | None = None
    scheduler_step_us: NonNegative = 0.0
    scheduler_per_seq_us: NonNegative = 0.0
    async_scheduling: bool = False
    kv_block_tokens: PosInt = 1
    gpu_memory_utilization: Fraction | None = None


class ExecutorProfileFile(ExecutorFields):
    base: Name | None = None      # merged away by _merged_with_base before this check
    name: Name | None = None
    kind: Literal["executor-profile"] | None = None
    description: Text
    source: Text


# YAML name -> (ExecutorProfile attribute, scale to SI); fields absent here keep their name and value
_EXEC_UNITS = {
    "host_overhead_per_kernel_us": ("host_overhead_per_kernel_s", US),
    "host_overhead_per_step_us": ("host_overhead_per_step_s", US),
    "kernel_overhead_us": ("kernel_overhead_s", US),
    "stream_gap_us": ("stream_gap_s", US),
    "gemm_overhead_us": ("gemm_overhead_s", US),
    "attn_decode_overhead_us": ("attn_decode_overhead_s", US),
    "host_per_op_us": ("host_per_op_s", US),
    "host_per_layer_us": ("host_per_layer_s", US),
    "host_new_shape_us": ("host_new_shape_s", US),
    "host_backward_per_kernel_us": ("host_backward_per_kernel_s", US),
    "host_backward_per_layer_us": ("host_backward_per_layer_s", US),
    "host_optimizer_us": ("host_optimizer_s", US),
    "workspace_MiB": ("workspace_bytes", 2**20),
    "scheduler_step_us": ("scheduler_step_s", US),
    "scheduler_per_seq_us": ("scheduler_per_seq_s", US),
}


def _si_fields(f: ExecutorFields, keys, where) -> dict:
    kw = {}
    for key in keys:
        val = getattr(f, key)
        attr, scale = _EXEC_UNITS.get(key, (key, None))
        if isinstance(val, dict):
            val = MappingProxyType({k: v if scale is None else to_si(v, scale, where, f"{key}.{k}") for k, v in val.items()})
        elif isinstance(val, list):
            val = tuple(val)
        elif scale is not None and val is not None:
            val = to_si(val, scale, where, key)
        kw[attr] = val
    return kw


def executor_fields(d: Mapping, where: str) -> dict:
    """The executor fields given in `d` (unit-suffixed YAML names), checked -> ExecutorProfile attributes (SI)."""
    f = check(ExecutorFields, dict(d), where)
    return _si_fields(f, f.model_fields_set, where)


_BASE_OWN = ("name", "kind", "description", "source")   # fields a profile never takes from its base


def _merged_with_base(d, path: Path, chain: tuple[Path, ...] = ()):
    """`d` over the profile its `base` field names (fields of `d` win; description and source
    are its own), so a stack built on another (accelerate on HF eager) carries every field a
    refit of that one changes; None or no base: `d` as it is. `chain`: the files merged so far."""
    if not isinstance(d, dict) or d.get("base") is None:
        return d
    chain = chain + (Path(path).resolve(),)
    name = d["base"]
    p = _profiles_dir("executors") / f"{name}.yaml"
    if not isinstance(name, str) or not is_file(p):
        raise RoofplanError(f"{path}: field 'base' is {clip(repr(name))}, not an executor profile"
                            f"{did_you_mean(str(name), list_profiles('executors'))}; name one of "
                            f"{', '.join(list_profiles('executors'))}")
    if p.resolve() in chain:
        raise RoofplanError(f"{path}: field 'base' makes a cycle ({' -> '.join(c.stem for c in chain + (p,))}); "
                            f"a profile cannot build on itself")
    parent = _merged_with_base(read_yaml(p), p, chain)
    if not isinstance(parent, dict):
        raise RoofplanError(f"{p}: not an executor profile (a YAML mapping); fix it or name another base in {path}")
    return {**{k: v for k, v in parent.items() if k not in _BASE_OWN}, **{k: v for k, v in d.items() if k != "base"}}


def parse_executor_profile(d, path: Path) -> ExecutorProfile:
    d = _merged_with_base(d, path)
    f = check(ExecutorProfileFile, d, path, fix="see hardware_specs/profiles/executors/default.yaml")
    keys = f.model_fields_set - {"name", "kind", "description", "source", "base"}
    return ExecutorProfile(name=path.stem, description=f.description, source=f.source, **_si_fields(f, keys, path))


def load_executor_profile(name_or_path: str = "default") -> ExecutorProfile:
    p = Path(name_or_path)
    if not (p.suffix in (".yaml", ".yml") and is_file(p)):
        p = _profiles_dir("executors") / f"{name_or_path}.yaml"
    if not is_file(p):
        raise RoofplanError(
            f"unknown executor profile '{clip(name_or_path)}'{did_you_mean(name_or_path, list_profiles('executors'))}; "
            f"available: {', '.join(list_profiles('executors'))} (or a path to a profile .yaml)"
        )
    return parse_executor_profile(read_yaml(p), p)
