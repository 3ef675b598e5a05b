"""Does a real run fit this machine? The bytes the executor will allocate, from the model config
and the run, against the host RAM (and device memory) available: refused up front with one line
instead of being killed mid-run. No torch here: the CLI checks the host before importing it.

What the executor allocates (P its parameters, L of them in the decoder layers, T trainable,
b the bytes of the dtype):
  build      4 P     the Decoder is constructed in fp32, then cast tensor by tensor to the dtype
                     (run.build_step, plan_run.build_model)
  weights    b P     train: fp32, 4 P (the master weights; LoRA freezes them and adds 4 T)
  gradients  4 T     fp32; T = P, or with LoRA the adapters'
  adam       8 T     AdamW's exp_avg and exp_avg_sq, fp32
  kv         2 n_layers sequences kv_heads positions head_dim b: the static cache
`run` (build_step): on cpu everything is host memory; on cuda the model is built on the device;
with weights offloaded it is built and cast on the host, then each layer's weights are copied
into host buffers before the layers are dropped (b (P + L) at that moment) and the device holds
the embedding and head, two layer slots and the KV cache.
`run --plan` (PlanExecutor): built and cast on the host; the plan's cpu share of each layer is
copied into host buffers while the model is alive (b (P + c L)), the NVMe share goes to a file;
the device holds the ends, the gpu share, two slots for the streamed share and the KV cache (or,
with a host cache, a one-layer window of it).
Activations and workspaces are not counted: every need is a lower bound.

Host RAM available: MemAvailable in /proc/meminfo (free memory plus what the kernel can reclaim
without swapping), else free pages (os.sysconf SC_AVPHYS_PAGES x SC_PAGE_SIZE).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

from simulator.core.errors import FixError, RoofplanError
from simulator.core.models import ModelConfig
from simulator.core.ops import trainable_params
from simulator.core.profiles import load_executor_profile
from simulator.core.units import DTYPE_BYTES, fmt_bytes
from simulator.core.workload import ALL_LINEAR, Job

BUILD_BYTES = 4            # fp32: the Decoder's parameters as constructed, before the cast
FP32_BYTES = 4             # master weights and gradients of a train run, LoRA adapters
ADAM_BYTES = 8             # AdamW's two fp32 moments
LORA_RANK_HINT = 16        # the rank a fix suggests when full fine-tuning does not fit


@dataclass(frozen=True)
class RunMemory:
    """Peak bytes a run needs on the host and on the device (lower bounds), and what sets them."""
    host_bytes: float
    device_bytes: float
    what: str


def executor_params(model: ModelConfig) -> tuple[int, int]:
    """(all parameters, those in the decoder layers) of the executor's Decoder: the model's own,
    plus an LM head of its own where the model ties it to the embedding."""
    layers = model.n_layers * model.layer_params(False)
    tied_head = model.vocab * model.hidden if model.tie_embeddings else 0
    return model.params_total() + tied_head, layers


def lora_params(model: ModelConfig, rank: int, targets: str = ALL_LINEAR) -> int:
    """Adapter parameters, rank x (in + out) for each linear apply_lora wraps (those of qkv, o,
    gate_up, down that `targets` names): the cost model's count for the default executor, whose
    fused layout this decoder has."""
    job = Job("train", seq=1, lora_rank=rank, lora_targets=targets)
    return int(trainable_params(model, job, load_executor_profile("default")))


def kv_cache_bytes(model: ModelConfig, sequences: int, positions: int, dtype: str) -> float:
    """The executor's static cache: K and V for every position of every sequence and layer."""
    return (2                      # K and V
            * model.n_layers
            * sequences
            * model.n_kv_heads
            * positions
            * model.head_dim
            * DTYPE_BYTES[dtype])


def check_dense_decoder(model: ModelConfig) -> None:
    """The executor builds dense decoders only (executor/model.py Decoder)."""
    if model.is_moe or model.is_mla:
        raise RoofplanError(f"the executor builds dense decoders; {model.name} is {'MoE' if model.is_moe else 'MLA'} "
                            f"(use a dense model)")


def _count(n: float) -> str:
    return f"{n / 1e9:.3g} B" if n >= 1e9 else f"{n / 1e6:.3g} M"


def _what(P: int, dtype: str, kv: float) -> str:
    return f"{_count(P)} parameters built in fp32, then {dtype} weights" + (f", a {fmt_bytes(kv)} KV cache" if kv else "")


def run_memory(model: ModelConfig, job, device: str) -> RunMemory:
    """`roofplan run` (job: a Job or RunSpec, its phase, batch, seq, context, dtype, lora_rank and
    offload_weights), by the table in the module docstring."""
    P, L = executor_params(model)
    build = BUILD_BYTES * P
    if job.phase == "train":
        T = lora_params(model, job.lora_rank, job.lora_targets) if job.lora_rank else P
        adapters = FP32_BYTES * T if job.lora_rank else 0      # full fine-tuning: in the fp32 weights
        need = FP32_BYTES * P + adapters + FP32_BYTES * T + ADAM_BYTES * T
        what = f"{_count(P)} parameters, fp32 weights, gradients and AdamW states of {_count(T)}"
        return RunMemory(need, 0.0, what) if device == "cpu" else RunMemory(0.0, need, what)
    b = DTYPE_BYTES[job.dtype]
    positions = job.context + (1 if job.phase == "decode" else job.seq)
    kv = kv_cache_bytes(model, job.batch, positions, job.dtype) if job.phase == "decode" or job.context else 0.0
    what = _what(P, job.dtype, kv)
    if device == "cpu":
        return RunMemory(max(build, b * P + kv), 0.0, what)
    if job.offload_weights == "cpu":
        slot = L / model.n_layers
        return RunMemory(max(build, b * (P + L)), b * (P - L + 2 * slot) + kv, what)
    return RunMemory(0.0, max(build, b * P + kv), what)


def plan_memory(model: ModelConfig, plan, device: str) -> RunMemory:
    """`roofplan run --plan` (plan: a PlanSpec, its dtype, weights fractions, kv_tier, GPU batch
    and count, max_len), by the table in the module docstring."""
    P, L = executor_params(model)
    b = DTYPE_BYTES[plan.dtype]
    on_gpu, on_cpu = plan.weights.get("gpu", 0.0), plan.weights.get("cpu", 0.0)
    kv = kv_cache_bytes(model, plan.gpu_batch_size * plan.num_gpu_batches, plan.max_len, plan.dtype)
    host_tier = b * L * on_cpu
    built = max(BUILD_BYTES * P, b * P + host_tier)
    kept = b * (P - L + L * on_gpu)                 # ends and the gpu share, after the layers are dropped
    what = _what(P, plan.dtype, kv)
    if device == "cpu":                              # the "device" tensors are host tensors too
        return RunMemory(max(built, kept + host_tier + kv), 0.0, what)
    kv_host = kv if plan.kv_tier == "cpu" else 0.0
    window = kv / model.n_layers / plan.num_gpu_batches if plan.kv_tier == "cpu" else kv
    slots = 2 * b * L / model.n_layers * (1 - on_gpu)
    return RunMemory(max(built, host_tier + kv_host), kept + slots + window, what)


def available_host_bytes() -> float | None:
    """MemAvailable from /proc/meminfo, else free physical pages; None when neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024          # the file's "kB" are KiB
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _run_fixes(model: ModelConfig, job, device: str, fits) -> tuple[list[str], dict]:
    """The changes to the run that would make `fits(RunMemory)` true, as FixError fragments."""
    out, fields = [], {}
    if job.phase != "train" and job.dtype == "fp32" and fits(run_memory(model, replace(job, dtype="bf16"), device)):
        out.append("{dtype}")
        fields["dtype"] = ("dtype", "bf16")
    if job.phase == "train" and not job.lora_rank and fits(run_memory(model, replace(job, lora_rank=LORA_RANK_HINT), device)):
        out.append("{lora}")
        fields["lora"] = ("lora_rank", LORA_RANK_HINT)
    if job.phase != "train" and (job.batch > 1 or job.context) and fits(run_memory(model, replace(job, batch=1, context=0), device)):
        out.append("a smaller {batch} or {context}")
        fields.update(batch="batch", context="context")
    return out, fields


def _refuse(label: str, need: float, memory: str, what: str, have: str, fixes: list[str], fields: dict,
            last: str) -> None:
    label, what = (t.replace("{", "{{").replace("}", "}}") for t in (label, what))   # a FixError template
    raise FixError(f"{label} needs at least {fmt_bytes(need)} of {memory} ({what}), {have}; use "
                   + ", ".join(["a smaller model", *fixes]) + f" or {last}", **fields)


def check_host_memory(model: ModelConfig, job, device: str, available: float | None = None) -> RunMemory:
    """Raise a one-line FixError when `roofplan run` needs more host RAM than is available
    (`available`: bytes, default this machine's)."""
    need = run_memory(model, job, device)
    avail = available_host_bytes() if available is None else available
    if avail is not None and need.host_bytes > avail:
        fixes, fields = _run_fixes(model, job, device, lambda m: m.host_bytes <= avail)
        _refuse(f"{model.name} {job.phase} on {device}", need.host_bytes, "host RAM", need.what,
                f"{fmt_bytes(avail)} available", fixes, fields, "a machine with more RAM")
    return need


def check_device_memory(model: ModelConfig, job, device_name: str, free: float, total: float) -> RunMemory:
    """Raise a one-line FixError when `roofplan run` on cuda needs more than `free` device bytes."""
    need = run_memory(model, job, "cuda")
    if need.device_bytes > free:
        fixes, fields = _run_fixes(model, job, "cuda", lambda m: m.device_bytes <= free)
        if job.phase != "train" and job.offload_weights != "cpu" and \
                run_memory(model, replace(job, offload_weights="cpu"), "cuda").device_bytes <= free:
            fixes.append("{offload}")
            fields["offload"] = ("offload_weights", "cpu")
        _refuse(f"{model.name} {job.phase} on {device_name}", need.device_bytes, "device memory", need.what,
                f"{fmt_bytes(free)} free of {fmt_bytes(total)}", fixes, fields, "a larger device")
    return need


def check_plan_memory(model: ModelConfig, plan, device: str, available: float | None = None,
                      device_free: tuple[float, float, str] | None = None) -> RunMemory:
    """The same for `roofplan run --plan`: host RAM, and on cuda `device_free` = (free, total, name)."""
    need = plan_memory(model, plan, device)
    avail = available_host_bytes() if available is None else available
    label = f"{model.name} plan ({plan.phase}, {plan.gpu_batch_size} x {plan.num_gpu_batches} sequences) on {device}"
    if avail is not None and need.host_bytes > avail:
        _refuse(label, need.host_bytes, "host RAM", need.what, f"{fmt_bytes(avail)} available", [], {},
                "a machine with more RAM")
    if device_free is not None and need.device_bytes > device_free[0]:
        free, total, name = device_free
        _refuse(label.replace(f"on {device}", f"on {name}"), need.device_bytes, "device memory", need.what,
                f"{fmt_bytes(free)} free of {fmt_bytes(total)}", [], {}, "re-plan with a smaller gpu share or batch")
    return need
