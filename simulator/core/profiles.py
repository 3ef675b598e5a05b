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

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np

from simulator.core.errors import RoofplanError, did_you_mean
from simulator.core.specs import read_yaml, specs_root
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
    def from_yaml(d: Mapping, where: str) -> "Curve":
        try:
            knots = [float(k) for k in d["knots_s"]]
            eff = [float(e) for e in d["efficiency"]]
        except (KeyError, TypeError, ValueError):
            raise RoofplanError(f"{where}: a curve needs 'knots_s' and 'efficiency' lists of numbers") from None
        if len(knots) != len(eff) or not knots or any(not 0 < e <= 1 for e in eff):
            raise RoofplanError(f"{where}: 'knots_s' and 'efficiency' must have equal length and efficiencies in (0, 1]")
        return Curve(tuple(np.log10(knots)), tuple(eff))

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
    kernel_overhead_s: float | None = None    # GPU time per small kernel inside this executor's
                                              # stream (graph replay packs kernels tighter than an
                                              # isolated launch); None = the kernel profile's
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
    host_optimizer_s: float = 0.0             # optimizer.step() + zero_grad() on the host
    fused_qkv: bool = True
    fused_gate_up: bool = True
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
    attn_score_bytes_per_elem: float = 0.0  # unfused attention: HBM bytes per score element (0 = flash)
    attn_decode_efficiency_scale: float = 1.0  # this stack's decode attention (e.g. paged) vs the
                                               # microbenchmarked kernel, on HBM bandwidth
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
    source: str = ""


def _profiles_dir(sub: str) -> Path:
    return specs_root() / "profiles" / sub


def list_profiles(sub: str) -> list[str]:
    d = _profiles_dir(sub)
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _req(d: Mapping, key: str, where: str):
    if key not in d:
        raise RoofplanError(f"{where}: field '{key}' is missing; re-run `roofplan calibrate` or copy it from hardware_specs/profiles/kernels/{REFERENCE_GPU}.yaml")
    return d[key]


def parse_kernel_profile(d, path: Path) -> KernelProfile:
    where = str(path)
    if not isinstance(d, dict):
        raise RoofplanError(f"{where}: expected a YAML mapping")
    gemm = {}
    for dt, g in _req(d, "gemm", where).items():
        w = f"{where} gemm.{dt}"
        gemm[str(dt)] = GemmModel(
            compute=Curve.from_yaml(_req(g, "compute", w), w + ".compute"),
            memory=Curve.from_yaml(_req(g, "memory", w), w + ".memory"),
            overhead_s=float(_req(g, "overhead_us", w)) * US,
            smoothness=float(_req(g, "smoothness", w)),
        )
    if "bf16" not in gemm:
        raise RoofplanError(f"{where}: gemm.bf16 is missing; every kernel profile needs a bf16 GEMM curve")
    ap, ad, ew, cp = (_req(d, k, where) for k in ("attention_prefill", "attention_decode", "elementwise", "copy"))
    return KernelProfile(
        name=path.stem, hardware=str(_req(d, "hardware", where)), gemm=MappingProxyType(gemm),
        attn_prefill=Curve.from_yaml(ap, where + " attention_prefill"),
        attn_prefill_diag_tokens=float(_req(ap, "diag_tokens", where)),
        attn_prefill_overhead_s=float(_req(ap, "overhead_us", where)) * US,
        attn_bwd_ratio=float(_req(ap, "backward_ratio", where)),
        attn_decode=Curve.from_yaml(ad, where + " attention_decode"),
        attn_decode_overhead_s=float(_req(ad, "overhead_us", where)) * US,
        memory=Curve.from_yaml(ew, where + " elementwise"),
        kernel_overhead_s=float(_req(ew, "kernel_overhead_us", where)) * US,
        norm_slowdown=float(ew.get("norm_slowdown", 1.0)),
        eager_slowdown=float(ew.get("eager_slowdown", 1.0)),
        h2d_pinned_eff=float(_req(cp, "h2d_pinned_efficiency", where)),
        d2h_pinned_eff=float(_req(cp, "d2h_pinned_efficiency", where)),
        h2d_pageable_Bps=float(_req(cp, "h2d_pageable_GBps", where)) * 1e9,
        d2h_pageable_Bps=float(_req(cp, "d2h_pageable_GBps", where)) * 1e9,
        copy_latency_s=float(_req(cp, "latency_us", where)) * US,
        cpu_adam_params_per_s=float(d.get("cpu", {}).get("adam_params_per_s", 1e9)),
        source=str(_req(d, "source", where)), fitted_on=str(d["hardware"]),
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
        if not p.is_file():
            raise RoofplanError(f"kernel profile {p} not found")
        return parse_kernel_profile(read_yaml(p), p)
    d = _profiles_dir("kernels")
    p = d / f"{gpu_name}.yaml"
    if not p.is_file():
        p = d / f"{REFERENCE_GPU}.yaml"
    if not p.is_file():
        raise RoofplanError(f"no kernel profile in {d}; run `roofplan calibrate` to create {REFERENCE_GPU}.yaml")
    return parse_kernel_profile(read_yaml(p), p)


_EXEC_FIELDS = {
    "host_overhead_per_kernel_us": ("host_overhead_per_kernel_s", US),
    "host_overhead_per_step_us": ("host_overhead_per_step_s", US),
    "kernel_overhead_us": ("kernel_overhead_s", US),
    "fused_qkv": ("fused_qkv", None), "fused_gate_up": ("fused_gate_up", None),
    "norm_kernels": ("norm_kernels", None), "norm_bytes_per_elem": ("norm_bytes_per_elem", None),
    "rope_kernels": ("rope_kernels", None), "rope_bytes_per_elem": ("rope_bytes_per_elem", None),
    "repeat_kv": ("repeat_kv", None), "kv_cache_concat": ("kv_cache_concat", None),
    "train_residual_bytes": ("train_residual_bytes", None),
    "workspace_MiB": ("workspace_bytes", 2**20),
    "backward_memory_ratio": ("backward_memory_ratio", None),
    "gemm_efficiency_scale": ("gemm_efficiency_scale", None),
    "attn_score_bytes_per_elem": ("attn_score_bytes_per_elem", None),
    "attn_decode_efficiency_scale": ("attn_decode_efficiency_scale", None),
    "persistent_grad_buffer": ("persistent_grad_buffer", None),
    "fitted_on": ("fitted_on", None),
    "autocast_weight_casts": ("autocast_weight_casts", None),
    "offload_embeddings": ("offload_embeddings", None),
    "lora_adapter_dtype": ("lora_adapter_dtype", None),
    "host_per_op_us": ("host_per_op_s", "per-class-us"),
    "host_per_layer_us": ("host_per_layer_s", US),
    "host_new_shape_us": ("host_new_shape_s", US),
    "host_autograd_scale": ("host_autograd_scale", None),
    "host_backward_per_kernel_us": ("host_backward_per_kernel_s", "per-class-us"),
    "host_backward_per_layer_us": ("host_backward_per_layer_s", US),
    "host_optimizer_us": ("host_optimizer_s", US),
}


def executor_fields(d: Mapping, where: str) -> dict:
    """YAML fields of an executor profile (unit-suffixed names) -> ExecutorProfile attributes (SI)."""
    kw = {}
    for key, val in d.items():
        if key not in _EXEC_FIELDS:
            raise RoofplanError(f"{where}: unknown field '{key}'{did_you_mean(key, _EXEC_FIELDS)}")
        attr, scale = _EXEC_FIELDS[key]
        if scale == "per-class-us":
            from simulator.core.ops import OP_CLASSES
            if not isinstance(val, Mapping) or any(k not in OP_CLASSES for k in val):
                raise RoofplanError(f"{where}: '{key}' must map op classes ({', '.join(OP_CLASSES)}) to microseconds")
            kw[attr] = MappingProxyType({str(k): _exec_number(v, f"{key}.{k}", where) * US for k, v in val.items()})
        elif scale:
            kw[attr] = _exec_number(val, key, where) * scale
        else:
            default = getattr(ExecutorProfile("x", "x"), attr)
            if isinstance(default, bool) or isinstance(default, str):
                if not isinstance(val, type(default)):
                    raise RoofplanError(f"{where}: field '{key}' is {val!r}; it must be "
                                        + ("true or false" if isinstance(default, bool) else "a string"))
            else:
                _exec_number(val, key, where)
            kw[attr] = val
    return kw


def _exec_number(v, key: str, where: str) -> float:
    """A finite number >= 0 from an executor profile field (one line naming it otherwise)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise RoofplanError(f"{where}: field '{key}' is {v!r}; it must be a finite number >= 0")
    return float(v)


def parse_executor_profile(d, path: Path) -> ExecutorProfile:
    where = str(path)
    if not isinstance(d, dict):
        raise RoofplanError(f"{where}: expected a YAML mapping")
    kw = {"name": path.stem, "description": str(_req(d, "description", where)),
          "source": str(_req(d, "source", where))}
    kw.update(executor_fields({k: v for k, v in d.items() if k not in ("name", "description", "source", "kind")}, where))
    return ExecutorProfile(**kw)


def load_executor_profile(name_or_path: str = "default") -> ExecutorProfile:
    p = Path(name_or_path)
    if not (p.suffix in (".yaml", ".yml") and p.is_file()):
        p = _profiles_dir("executors") / f"{name_or_path}.yaml"
    if not p.is_file():
        raise RoofplanError(
            f"unknown executor profile '{name_or_path}'{did_you_mean(name_or_path, list_profiles('executors'))}; "
            f"available: {', '.join(list_profiles('executors'))} (or a path to a profile .yaml)"
        )
    return parse_executor_profile(read_yaml(p), p)
