"""What to simulate: a `Job` (phase, sizes, precision, parallelism, offload) validated at the edge."""
from __future__ import annotations

from dataclasses import dataclass, replace

from simulator.core.errors import RoofplanError
from simulator.core.models import ModelConfig
from simulator.core.units import DTYPE_BYTES

PHASES = ("prefill", "decode", "train")


@dataclass(frozen=True)
class Job:
    """One step of a workload.

    prefill: one forward over batch x seq tokens, logits for the last position only.
    decode:  one step, one new token per sequence, `context` tokens already cached.
    train:   forward + backward + optimizer step over batch x seq tokens (bf16 mixed precision:
             fp32 master weights and Adam states, bf16 compute); `lora_rank` > 0 freezes the base
             and trains adapters on every linear layer.
    """
    phase: str
    batch: int = 1
    seq: int = 0              # prompt / training sequence length
    context: int = 0          # decode: tokens already in the KV cache
    dtype: str = "bf16"       # compute and weight dtype
    kv_dtype: str = ""        # KV cache dtype ("" = dtype)
    recompute: str = "none"   # none | selective | full
    lora_rank: int = 0
    tp: int = 1
    pp: int = 1
    dp: int = 1
    micro_batch: int = 0      # train: sequences per micro-batch (0 = batch)
    ep: int = 1               # inference: expert parallelism inside the tensor-parallel group
                              # (each of ep ranks holds n_experts/ep whole experts, tp/ep-way split)
    zero: int = 0             # ZeRO stage 0-3 (train)
    offload_weights: str = "gpu"   # gpu | cpu  (weights streamed per layer over the host link)
    host_memory: str = "pinned"    # pinned | pageable
    overlap: bool = True

    @property
    def tokens(self) -> int:
        """Tokens processed by one step (all sequences)."""
        return self.batch * (1 if self.phase == "decode" else self.seq)

    @property
    def n_gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def kv_bytes_per_elem(self) -> float:
        return DTYPE_BYTES[self.kv_dtype or self.dtype]


def validate_job(job: Job, model: ModelConfig) -> Job:
    """Check a job against the model; return it with defaults filled. Errors are one line."""
    if job.phase not in PHASES:
        raise RoofplanError(f"--phase '{job.phase}' is unknown; use one of {', '.join(PHASES)}")
    for name in ("batch", "tp", "pp", "dp"):
        v = getattr(job, name)
        if not isinstance(v, int) or v < 1:
            raise RoofplanError(f"--{name.replace('_', '-')} must be a positive integer (got {v})")
    for name in ("seq", "context", "lora_rank", "micro_batch"):
        if getattr(job, name) < 0:
            raise RoofplanError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(job, name)})")
    if job.dtype not in DTYPE_BYTES or job.dtype in ("int4",):
        raise RoofplanError(f"--dtype '{job.dtype}' is not supported; use bf16, fp16, fp8 or fp32")
    if job.kv_dtype and job.kv_dtype not in DTYPE_BYTES:
        raise RoofplanError(f"--kv-dtype '{job.kv_dtype}' is unknown; use one of {', '.join(DTYPE_BYTES)}")
    if job.phase in ("prefill", "train") and job.seq < 1:
        raise RoofplanError(f"--phase {job.phase} needs --seq N (tokens per sequence), N >= 1")
    if job.phase == "decode" and job.context < 0:
        raise RoofplanError("--context must be >= 0")
    total = job.seq + (job.context if job.phase == "decode" else 0) + (1 if job.phase == "decode" else 0)
    if total > model.max_positions:
        raise RoofplanError(
            f"sequence of {total} tokens exceeds {model.name}'s limit of {model.max_positions} "
            f"(max_position_embeddings); use a shorter --seq/--context"
        )
    if job.recompute not in ("none", "selective", "full"):
        raise RoofplanError(f"--recompute '{job.recompute}' is unknown; use none, selective or full")
    if job.offload_weights not in ("gpu", "cpu"):
        raise RoofplanError(f"--offload weights={job.offload_weights} is unknown; use weights=cpu")
    if job.host_memory not in ("pinned", "pageable"):
        raise RoofplanError(f"--host-memory '{job.host_memory}' is unknown; use pinned or pageable")
    if job.zero not in (0, 1, 2, 3):
        raise RoofplanError(f"--zero {job.zero} is unknown; use 0, 1, 2 or 3")
    heads = model.n_heads
    if heads % job.tp or (not model.is_mla and model.n_kv_heads % job.tp and job.tp % model.n_kv_heads):
        raise RoofplanError(f"--tp {job.tp} does not divide {model.name}'s {heads} attention heads / {model.n_kv_heads} KV heads; use a divisor")
    if job.pp > model.n_layers:
        raise RoofplanError(f"--pp {job.pp} exceeds {model.name}'s {model.n_layers} layers")
    if job.ep != 1:
        if not isinstance(job.ep, int) or job.ep < 1:
            raise RoofplanError(f"--ep must be a positive integer (got {job.ep})")
        if not model.is_moe:
            raise RoofplanError(f"--ep {job.ep} needs a mixture-of-experts model; {model.name} is dense")
        if job.phase == "train":
            raise RoofplanError("--ep with --phase train is the parallelism model's (it splits --dp); "
                                "for training pass --ep together with --dp")
        if job.tp % job.ep or model.n_experts % job.ep:
            raise RoofplanError(f"--ep {job.ep} must divide --tp {job.tp} and {model.name}'s {model.n_experts} experts")
    if job.phase != "train" and (job.lora_rank or job.zero):
        raise RoofplanError("--lora-rank and --zero apply to --phase train only")
    mb = job.micro_batch or job.batch
    if job.phase == "train" and job.batch % mb:
        raise RoofplanError(f"--micro-batch {mb} does not divide --batch {job.batch}")
    return replace(job, micro_batch=mb)
