"""What to simulate: a `Job` (phase, sizes, precision, parallelism, offload) validated at the edge."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from simulator.core.errors import FieldError, FixError
from simulator.core.models import ModelConfig
from simulator.core.units import DTYPE_BYTES

PHASES = ("prefill", "decode", "train")

# LoRA target modules (PEFT's target_modules): "all-linear", or linears by roofplan's names or by
# the module names of Hugging Face's modeling code (Llama, Qwen, Mistral, Phi-3, DeepSeek, OPT, GPT-2)
ALL_LINEAR = "all-linear"
LORA_TARGETS = ("q", "k", "v", "qkv", "q_a", "q_b", "kv_a", "kv_b", "o", "gate", "up", "gate_up", "down")
LORA_TARGET_ALIASES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "qkv_proj": "qkv", "c_attn": "qkv",
                       "q_a_proj": "q_a", "q_b_proj": "q_b", "kv_a_proj_with_mqa": "kv_a", "kv_b_proj": "kv_b",
                       "o_proj": "o", "out_proj": "o", "gate_proj": "gate", "up_proj": "up", "fc1": "up", "c_fc": "up",
                       "gate_up_proj": "gate_up", "down_proj": "down", "fc2": "down"}
FUSED_PARTS = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}


def linear_parts(name: str) -> tuple[str, ...]:
    """The target names one linear answers to: a fused one its parts (qkv: q, k, v), a shared
    expert's (DeepSeek shared_gate_up) those of the dense MLP's, as HF names its modules."""
    name = name.removeprefix("shared_")
    return FUSED_PARTS.get(name, (name,))


def lora_target_names(text: str) -> frozenset[str]:
    """The canonical linear names a comma list of `lora_targets` names (fused ones as their parts:
    qkv -> q, k, v). A name roofplan does not know is a FieldError."""
    names = set()
    for raw in (t.strip() for t in text.split(",")):
        name = LORA_TARGET_ALIASES.get(raw, raw)
        if name not in LORA_TARGETS:
            raise FieldError("lora_targets", text, f"'{raw}' is not a linear roofplan knows",
                             f"use {ALL_LINEAR} or a comma list of {', '.join(LORA_TARGETS)} or their HF module "
                             f"names (q_proj, v_proj, ...)")
        names.update(linear_parts(name))
    return frozenset(names)


@dataclass(frozen=True)
class Job:
    """One step of a workload.

    prefill: one forward over batch x seq tokens, logits for the last position only.
    decode:  one step, one new token per sequence, `context` tokens already cached; with
             `chunk_tokens` N > 0 a prefill chunk of one more request rides in the same forward
             (chunked prefill, vLLM V1 / SGLang): N prompt tokens after its `chunk_context` M.
    train:   forward + backward + optimizer step over batch x seq tokens (bf16 mixed precision:
             fp32 master weights and Adam states, bf16 compute); `lora_rank` > 0 freezes the base
             and trains adapters on the linears `lora_targets` names (PEFT's target_modules: every
             linear of the decoder layers by default).
    """
    phase: str
    batch: int = 1
    seq: int = 0              # prompt / training sequence length
    context: int = 0          # decode: tokens already in the KV cache
    dtype: str = "bf16"       # compute and weight dtype
    kv_dtype: str = ""        # KV cache dtype ("" = dtype)
    weight_dtype: str = ""    # layer weights: bf16 | fp16 | fp8 (W8A8) | int8 | int4 (weight-only); "" = dtype
    recompute: str = "none"   # none | selective | full
    lora_rank: int = 0
    lora_targets: str = ALL_LINEAR   # the linears LoRA adapts: all-linear, or a comma list (lora_target_names)
    tp: int = 1
    pp: int = 1
    dp: int = 1
    micro_batch: int = 0      # train: sequences per micro-batch (0 = batch)
    ep: int = 1               # inference: expert parallelism inside the tensor-parallel group
                              # (each of ep ranks holds n_experts/ep whole experts, tp/ep-way split)
    zero: int = 0             # ZeRO stage 0-3 (train)
    cp: int = 1               # train: context parallelism (splits seq over cp GPUs)
    vpp: int = 1              # train: virtual pipeline stages per GPU (interleaved 1F1B)
    sp: bool = False          # train: Megatron sequence parallelism inside the tensor-parallel group
    offload_weights: str = "gpu"   # gpu | cpu  (weights streamed per layer over the host link)
    host_memory: str = "pinned"    # pinned | pageable
    overlap: bool = True      # overlap transfers with compute: offload copies (inference), the
                              # data-parallel gradient reduction with the last backward (train)
    power_cap_w: float | None = None   # board power limit per GPU (W); None: the GPU's default (its TDP)
    spec_tokens: int = 0      # decode: speculative tokens verified per sequence (the step is the target's
                              # verification of 1 + spec_tokens query tokens; simulator.core.speculative)
    prefix_hit: float = 0.0   # prefill: share of each prompt already in the KV cache (prefix caching)
    chunk_tokens: int = 0     # decode: prompt tokens of one more request prefilled in the same step (chunked
                              # prefill: one forward over batch + chunk_tokens tokens; ops.chunk_attention_ops)
    chunk_context: int = 0    # decode: that request's tokens already prefilled by earlier chunks

    @property
    def tokens(self) -> int:
        """Tokens processed by one step (all sequences)."""
        return self.batch * (1 if self.phase == "decode" else self.seq)

    @property
    def n_gpus(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    @property
    def n_micro(self) -> int:
        """Micro-batches per step on each data-parallel replica (train)."""
        return self.batch // (self.micro_batch or self.batch)

    @property
    def kv_bytes_per_elem(self) -> float:
        return DTYPE_BYTES[self.kv_dtype or self.dtype]

    @property
    def cached_tokens(self):
        """Prefill: prompt tokens per sequence already in the KV cache, floor(prefix_hit x seq)
        (prefix caching: they skip the forward, attention still reads their K and V)."""
        return np.floor(self.prefix_hit * np.asarray(self.seq)).astype(np.int64) if self.prefix_hit else 0

    @property
    def query_tokens(self):
        """Query tokens per sequence through the step: decode 1 (+ the speculative tokens it
        verifies), prefill the prompt less its cached prefix, train the sequence."""
        if self.phase == "decode":
            return 1 + self.spec_tokens
        return self.seq - self.cached_tokens if self.prefix_hit else self.seq


MAX_SPEC_TOKENS = 64   # more speculative tokens than any engine proposes (vLLM, SGLang, EAGLE use <= 16)


def _check_spec_and_prefix(job: Job) -> None:
    """spec_tokens (decode) and prefix_hit (prefill): in range, and only where they apply."""
    if job.spec_tokens:
        if not isinstance(job.spec_tokens, (int, np.integer)) or not 1 <= job.spec_tokens <= MAX_SPEC_TOKENS:
            raise FieldError("spec_tokens", job.spec_tokens, f"must be an integer from 1 to {MAX_SPEC_TOKENS}")
        if job.phase != "decode":
            raise FieldError("spec_tokens", job.spec_tokens, f"applies to phase decode only (phase is {job.phase})",
                             "drop it, or use phase decode")
    if job.prefix_hit:
        if not (isinstance(job.prefix_hit, (int, float)) and 0.0 <= job.prefix_hit < 1.0):
            raise FieldError("prefix_hit", job.prefix_hit, "must be a share in [0, 1) (the last prompt token "
                             "is always computed)")
        if job.phase != "prefill":
            raise FieldError("prefix_hit", job.prefix_hit, f"applies to phase prefill only (phase is {job.phase})",
                             "drop it, or use phase prefill")


def _check_chunk(job: Job, model: ModelConfig) -> None:
    """chunk_tokens / chunk_context (chunked prefill): non-negative integers, in a decode step
    without speculative tokens, the chunk's request (M + N tokens) within the position limit."""
    for name in ("chunk_tokens", "chunk_context"):
        v = getattr(job, name)
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise FieldError(name, v, "must be an integer >= 0")
    if not (job.chunk_tokens or job.chunk_context):
        return
    if job.phase != "decode":
        name = "chunk_tokens" if job.chunk_tokens else "chunk_context"
        raise FieldError(name, getattr(job, name), f"applies to phase decode only (a prefill chunk rides in a decode "
                         f"step; phase is {job.phase})", "drop it, or use phase decode")
    if not job.chunk_tokens:
        raise FieldError("chunk_context", job.chunk_context, "is the context of a prefill chunk, and the step has none",
                         "add the chunk's tokens, or drop it")
    if job.spec_tokens:
        raise FieldError("chunk_tokens", job.chunk_tokens, "a speculative step with a prefill chunk is not modelled",
                         "drop the chunk or the speculative tokens")
    total = job.chunk_context + job.chunk_tokens
    if total > model.max_positions:
        raise FieldError("chunk_tokens", job.chunk_tokens,
                         f"the chunk's request of {total} tokens ({job.chunk_context} prefilled before + "
                         f"{job.chunk_tokens} in the chunk) exceeds {model.name}'s limit of {model.max_positions} "
                         f"(max_position_embeddings)", "use a smaller chunk or chunk context")


def _check_lora_targets(job: Job, model: ModelConfig) -> None:
    """lora_targets names linears the model has, and only with a LoRA rank."""
    if job.lora_targets == ALL_LINEAR:
        return
    if not isinstance(job.lora_targets, str):
        raise FieldError("lora_targets", job.lora_targets, f"must be {ALL_LINEAR} or a comma list of linear names")
    names = lora_target_names(job.lora_targets)
    if not job.lora_rank:
        raise FieldError("lora_targets", job.lora_targets, "applies to LoRA only", "add a LoRA rank or drop it")
    dense = model.layer_linears(False) if model.n_moe_layers < model.n_layers else []
    has = {part for lin in dense + (model.layer_linears(True) if model.is_moe else []) if lin.adaptable
           for part in linear_parts(lin.name)}
    missing = sorted(names - has)
    if missing:
        raise FieldError("lora_targets", job.lora_targets, f"{model.name} has no {', '.join(missing)} projection",
                         f"its linears are {', '.join(n for n in LORA_TARGETS if n in has)}")


def validate_job(job: Job, model: ModelConfig) -> Job:
    """Check a job against the model; return it with defaults filled. Errors are one-line
    FieldErrors that name the Job field (the CLI spells it as the flag)."""
    if job.phase not in PHASES:
        raise FieldError("phase", job.phase, "unknown", f"use one of {', '.join(PHASES)}")
    for name in ("batch", "tp", "pp", "dp"):
        v = getattr(job, name)
        if not isinstance(v, int) or v < 1:
            raise FieldError(name, v, "must be a positive integer")
    for name in ("seq", "context", "lora_rank", "micro_batch"):
        if getattr(job, name) < 0:
            raise FieldError(name, getattr(job, name), "must be >= 0")
    if job.dtype not in DTYPE_BYTES or job.dtype in ("int4",):
        raise FieldError("dtype", job.dtype, "not supported", "use bf16, fp16, fp8 or fp32")
    if job.kv_dtype and job.kv_dtype not in DTYPE_BYTES:
        raise FieldError("kv_dtype", job.kv_dtype, "unknown", f"use one of {', '.join(DTYPE_BYTES)}")
    if job.weight_dtype:   # weight_dtype: quantized layer weights (simulator.core.quant)
        _check_weight_dtype(job)
    if job.phase in ("prefill", "train") and job.seq < 1:
        raise FieldError("seq", job.seq, f"phase {job.phase} needs tokens per sequence >= 1")
    if job.phase == "decode" and job.seq:
        raise FieldError("seq", job.seq, "a decode step has no prompt (its cached tokens are the context)",
                         "drop seq, or give the cached tokens as context")
    if job.phase != "decode" and job.context:
        raise FieldError("context", job.context, f"applies to decode (a {job.phase} step starts with an empty cache)",
                         "drop context, or use phase decode")
    if job.phase == "train" and job.offload_weights != "gpu":
        raise FieldError("offload_weights", job.offload_weights, "weight streaming is modelled for prefill and decode",
                         "plan offloaded training with `roofplan plan offload --phase train`")
    if job.phase == "decode" and job.context < 0:
        raise FieldError("context", job.context, "must be >= 0")
    total = job.seq + (job.context if job.phase == "decode" else 0) + (1 if job.phase == "decode" else 0)
    total += job.spec_tokens if job.phase == "decode" else 0   # the speculative tokens verified beside the new one
    if total > model.max_positions:
        name = "context" if job.phase == "decode" else "seq"
        raise FieldError(name, getattr(job, name),
                         f"a sequence of {total} tokens exceeds {model.name}'s limit of {model.max_positions} "
                         f"(max_position_embeddings)", "use a shorter seq or context" if job.phase == "decode"
                         else "use a shorter seq")
    if job.recompute not in ("none", "selective", "full"):
        raise FieldError("recompute", job.recompute, "unknown", "use none, selective or full")
    if job.offload_weights not in ("gpu", "cpu"):
        raise FieldError("offload_weights", job.offload_weights, "unknown", "use gpu or cpu")
    if job.host_memory not in ("pinned", "pageable"):
        raise FieldError("host_memory", job.host_memory, "unknown", "use pinned or pageable")
    if job.power_cap_w is not None and not (isinstance(job.power_cap_w, (int, float)) and math.isfinite(job.power_cap_w)
                                            and job.power_cap_w > 0):
        raise FieldError("power_cap_w", job.power_cap_w, "must be a positive number of watts per GPU")
    if job.zero not in (0, 1, 2, 3):
        raise FieldError("zero", job.zero, "unknown ZeRO stage", "use 0, 1, 2 or 3")
    heads = model.n_heads
    if heads % job.tp or (not model.is_mla and model.n_kv_heads % job.tp and job.tp % model.n_kv_heads):
        raise FieldError("tp", job.tp, f"does not divide {model.name}'s {heads} attention heads / {model.n_kv_heads} KV heads",
                         "use a divisor")
    if job.pp > model.n_layers:
        raise FieldError("pp", job.pp, f"exceeds {model.name}'s {model.n_layers} layers")
    if job.ep != 1:
        if not isinstance(job.ep, int) or job.ep < 1:
            raise FieldError("ep", job.ep, "must be a positive integer")
        if not model.is_moe:
            raise FieldError("ep", job.ep, f"needs a mixture-of-experts model; {model.name} is dense")
        if job.phase == "train" and (job.dp % job.ep or model.n_experts % job.ep):
            # training: each expert's replicas are spread over ep ranks of the data-parallel group
            raise FieldError("ep", job.ep, f"must divide dp {job.dp} and {model.name}'s {model.n_experts} experts")
        if job.phase != "train" and (job.tp % job.ep or model.n_experts % job.ep):
            # inference: whole experts per rank inside the tensor-parallel group
            raise FieldError("ep", job.ep, f"must divide tp {job.tp} and {model.name}'s {model.n_experts} experts")
    _check_lora_targets(job, model)
    if job.phase != "train":
        # training-only fields a prefill or decode would silently ignore
        for name, unset in (("lora_rank", 0), ("zero", 0), ("recompute", "none"), ("micro_batch", 0)):
            if getattr(job, name) != unset:
                raise FieldError(name, getattr(job, name), f"applies to phase train only (phase is {job.phase})")
        # transfer settings that only an inference offload has
        if job.offload_weights != "cpu":
            if job.host_memory != "pinned":
                raise FixError("{flag}: applies to weights streamed from host memory only; add {offload} or drop it",
                               flag=("host_memory", job.host_memory), offload=("offload_weights", "cpu"))
            if not job.overlap:
                raise FixError("{flag}: applies to weights streamed from host memory only; add {offload} or drop it",
                               flag="no_overlap", offload=("offload_weights", "cpu"))
    _check_spec_and_prefix(job)   # speculative decoding and prefix caching
    _check_chunk(job, model)      # chunked prefill
    mb = job.micro_batch or job.batch
    if job.phase == "train" and job.batch % mb:
        raise FieldError("micro_batch", mb, f"does not divide batch {job.batch}", "use a divisor of batch")
    for name in ("cp", "vpp"):
        v = getattr(job, name)
        if not isinstance(v, int) or v < 1:
            raise FieldError(name, v, "must be a positive integer")
        if v > 1 and job.phase != "train":
            raise FieldError(name, v, f"applies to phase train only (phase is {job.phase})")
    if job.sp and job.phase != "train":
        raise FieldError("sp", job.sp, f"applies to phase train only (phase is {job.phase})")
    if job.seq % job.cp:
        raise FieldError("cp", job.cp, f"does not divide seq {job.seq}", "use a divisor of seq")
    if job.vpp > 1 and (job.pp == 1 or model.n_layers % (job.pp * job.vpp) or (job.batch // mb) % job.pp):
        raise FieldError("vpp", job.vpp, f"the interleaved schedule needs pp > 1 dividing {model.name}'s "
                         f"{model.n_layers} layers into pp x vpp chunks, and micro-batches ({job.batch // mb}) "
                         f"divisible by pp ({job.pp})", "use vpp 1 or change pp or the batch")
    return replace(job, micro_batch=mb)


def _check_weight_dtype(job: Job) -> None:
    """weight_dtype: a known format, for inference with weights on the GPU (simulator.core.quant)."""
    from simulator.core.quant import WEIGHT_DTYPES, is_quantized
    if job.weight_dtype not in WEIGHT_DTYPES:
        raise FieldError("weight_dtype", job.weight_dtype, "unknown", f"use one of {', '.join(WEIGHT_DTYPES)}")
    if is_quantized(job) and job.phase == "train":
        raise FieldError("weight_dtype", job.weight_dtype, "quantized weights are modelled for prefill and decode",
                         "drop it, or use phase prefill or decode")
    if is_quantized(job) and job.offload_weights != "gpu":
        raise FieldError("weight_dtype", job.weight_dtype, "streaming quantized weights from host memory is not "
                         "modelled", "drop it, or keep the weights on the GPU")
