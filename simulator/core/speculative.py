"""Speculative decoding and prefix caching on top of one decode or prefill step (predict()).

Speculative decoding (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
Decoding", ICML; Chen et al. 2023): a cheap proposer drafts K tokens per sequence, one target
forward verifies them all. With per-token acceptance A (i.i.d., their alpha) a step yields

    E = 1 + A + ... + A^K = (1 - A^(K+1)) / (1 - A)        (K + 1 at A = 1)

tokens per sequence (the accepted prefix plus the target's own token; Leviathan eq. 1). The step:

    t_step = K x t_draft + t_verify
    t_draft   the proposer's decode step: a draft model's own predict() decode at the same batch and
              context, or (no draft model: EAGLE-style heads, Li et al. 2024) the target's embedding,
              ONE decoder layer of the target's shape and its LM head -- EAGLE-1's head is one
              LLaMA decoder layer (plus a 2d -> d fc, 1/6 of a layer's weights, left out) reading the
              target's features, and it shares the target's embedding and LM head
    t_verify  the target's decode step with 1 + K query tokens per sequence (Job.spec_tokens = K):
              the same op list and roofline as a decode step; attention reads the cache once for all
              K + 1 queries, the LM head scores every one of them

    tokens_per_s = batch x dp x E / t_step

At batch 1 a decode step is bound by reading the weights, so verifying K + 1 tokens costs about
one step and speculation pays ~E / (1 + K t_draft / t_verify). At a large batch the target is
compute-bound: the verification's FLOPs grow K + 1-fold while only E of those tokens are kept, so
it loses (`crossover_batch`). Not modelled: tree drafts (EAGLE/Medusa verify a tree; a chain of
depth K is the lower bound), rejection-sampling and bookkeeping host cost, the draft's prefill.

Prefix caching (vLLM automatic prefix caching, SGLang RadixAttention, Zheng et al. 2024): the
first P = floor(R x seq) prompt tokens of every sequence are already cached (Job.prefix_hit = R),
so the prefill runs the forward over seq - P tokens only, while attention still reads the P cached
K, V (ops.flash_attention_ops). KV memory: a prefix shared by every sequence of the batch is
stored once (`shared_prefix_kv_bytes`): B (seq - P) + P tokens instead of B seq.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from simulator.core import power
from simulator.core.errors import FieldError
from simulator.core.memory import kv_cache_bytes
from simulator.core.models import ModelConfig
from simulator.core.predict import Prediction, predict, raise_out_of_memory
from simulator.core.profiles import ExecutorProfile, KernelProfile
from simulator.core.specs import System
from simulator.core.workload import Job


def expected_tokens_per_step(acceptance, k):
    """E = (1 - A^(K+1)) / (1 - A): tokens a sequence gains per speculative step with per-token
    acceptance A and K drafted tokens (Leviathan et al. 2023, eq. 1); K + 1 at A = 1."""
    a = np.asarray(acceptance, float)
    k = np.asarray(k, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.where(a < 1.0, (1.0 - a ** (k + 1.0)) / (1.0 - np.where(a < 1.0, a, 0.0)), k + 1.0)
    return float(e) if e.ndim == 0 else e


def acceptance_for_tokens(tokens_per_step: float, k: int) -> float:
    """The per-token acceptance A whose E(A, K) is `tokens_per_step` (an engine's reported mean
    acceptance length, bonus token included), by bisection on the increasing E."""
    if not 1.0 <= tokens_per_step <= k + 1:
        raise FieldError("spec_acceptance", tokens_per_step, f"an acceptance length must lie in [1, K + 1 = {k + 1}]")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens_per_step(mid, k) < tokens_per_step else (lo, mid)
    return (lo + hi) / 2


def eagle_head(model: ModelConfig) -> ModelConfig:
    """The EAGLE-style draft head of `model`: its embedding, one decoder layer of its shape and its
    LM head (Li et al. 2024, sec. 4: one transformer decoder layer; the embedding and LM head are
    the target's own)."""
    return replace(model, name=f"{model.name} 1-layer draft head", n_layers=1,
                   n_dense_layers=min(model.n_dense_layers, 1))


def check_draft(draft: ModelConfig, target: ModelConfig) -> None:
    """A draft model must be smaller than the target and share its vocabulary (the verification
    compares token ids)."""
    if draft.vocab != target.vocab:
        raise FieldError("draft_model", draft.name, f"has a vocabulary of {draft.vocab:,} tokens but {target.name} "
                         f"has {target.vocab:,}; a draft must share the target's tokenizer",
                         "use a model of the same family")
    if draft.params_total() >= target.params_total():
        raise FieldError("draft_model", draft.name, f"has {draft.params_total() / 1e9:.3g}B parameters, not fewer "
                         f"than {target.name}'s {target.params_total() / 1e9:.3g}B", "use a smaller draft model")


def check_acceptance(acceptance) -> float:
    if not (isinstance(acceptance, (int, float)) and np.isfinite(acceptance) and 0.0 < acceptance <= 1.0):
        raise FieldError("spec_acceptance", acceptance, "must be a per-token acceptance rate in (0, 1]")
    return float(acceptance)


@dataclass(frozen=True)
class SpeculativePrediction:
    """One speculative decode step: K draft steps, then the target's verification of K + 1 tokens."""
    verify: Prediction            # the target's step over 1 + K query tokens per sequence
    draft: Prediction             # one proposer decode step
    draft_name: str
    spec_tokens: int              # K
    acceptance: float             # A
    tokens_per_step: float        # E per sequence
    time_s: float                 # K t_draft + t_verify
    tokens_per_s: float           # all sequences, all replicas
    plain_tokens_per_s: float     # the same decode without speculation
    peak_memory_bytes: float      # target + draft on one GPU
    energy: dict | None = None    # the whole step's energy fields (`speculative_energy`); None: no TDP

    @property
    def speedup(self) -> float:
        return self.tokens_per_s / self.plain_tokens_per_s

    def as_dict(self) -> dict:
        d = self.verify.as_dict()
        d.update({
            "time_s": self.time_s, "tokens_per_s": self.tokens_per_s, "peak_memory_bytes": self.peak_memory_bytes,
            "spec_tokens": self.spec_tokens, "spec_acceptance": self.acceptance,
            "spec_tokens_per_step": self.tokens_per_step, "spec_draft": self.draft_name,
            "spec_draft_step_s": self.draft.time_s, "spec_verify_step_s": self.verify.time_s,
            "spec_plain_tokens_per_s": self.plain_tokens_per_s, "spec_speedup": self.speedup,
        })
        if self.energy is not None:
            d.update({k: float(v) for k, v in self.energy.items()})
        return d


def draft_plan(job: Job, draft: ModelConfig | None) -> Job:
    """The proposer's decode job beside the target's `job`: a draft model at the target's tp when
    tp divides its heads, else unsharded, and one pipeline stage; an EAGLE-style head (None) at the
    target's plan. The job is plain decode (no speculative tokens)."""
    plain = replace(job, spec_tokens=0)
    if draft is None:
        return plain
    shards = draft.n_heads % job.tp == 0 and (draft.n_kv_heads % job.tp == 0 or job.tp % draft.n_kv_heads == 0)
    return replace(plain, tp=job.tp if shards else 1, pp=1)


def speculative_energy(verify: dict, draft: dict, system: System, job: Job, draft_job: Job, t_verify, t_draft,
                       tokens, carbon_g_per_kwh: float) -> dict:
    """Energy of one speculative step of `job` (K = job.spec_tokens) on `system` from predict()'s
    energy fields of the verification and of one draft step at `draft_job` (floats or arrays):

        E_gpu  = E_gpu,verify + K (E_gpu,draft + (n_target - n_draft) P_idle t_draft)
        E      = E_gpu + E_host,verify + K E_host,draft

    the target's GPUs a draft on fewer GPUs leaves idle draw their idle power meanwhile. Per GPU
    power over the step t = K t_draft + t_verify; per token over the tokens it gives (batch x dp x E
    per sequence); per node over the job's nodes (as power.step_energy_arrays counts them)."""
    k, n_target, n_draft = job.spec_tokens, job.n_gpus, draft_job.n_gpus
    idle_w = power.GpuPower.of(system.gpu, job.dtype).idle_w
    nodes = n_target / min(n_target, system.gpu_count)
    t = k * np.asarray(t_draft, float) + np.asarray(t_verify, float)
    gpu_j = verify["gpu_energy_j"] + k * (draft["gpu_energy_j"] + (n_target - n_draft) * idle_w * t_draft)
    host_j = verify["host_energy_j"] + k * draft["host_energy_j"]
    energy = gpu_j + host_j
    per_token = energy / tokens
    return {"power_w": gpu_j / (t * n_target), "node_power_w": energy / (t * nodes), "energy_j": energy,
            "energy_j_per_token": per_token, "co2_g_per_1m_tokens": power.co2_g(per_token * 1e6, carbon_g_per_kwh),
            "gpu_energy_j": gpu_j, "host_energy_j": host_j}


def predict_speculative(model: ModelConfig, system: System, job: Job, acceptance: float,
                        draft: ModelConfig | None = None, executor: ExecutorProfile | None = None,
                        kernels: KernelProfile | None = None, check_memory: bool = True,
                        carbon_g_per_kwh: float = power.DEFAULT_CARBON_G_PER_KWH) -> SpeculativePrediction:
    """A speculative decode step of `job` (phase decode, job.spec_tokens = K >= 1) with per-token
    acceptance `acceptance` and proposer `draft` (None: an EAGLE-style head, `eagle_head`). Every
    step goes through predict(): the verification is the target's decode with K + 1 query tokens,
    the draft step the proposer's plain decode at the same batch, context and plan."""
    a = check_acceptance(acceptance)
    if job.phase != "decode" or not job.spec_tokens:
        raise FieldError("spec_tokens", job.spec_tokens, "speculative decoding needs phase decode and spec_tokens >= 1")
    if draft is not None:
        check_draft(draft, model)
    proposer = draft if draft is not None else eagle_head(model)
    plain_job = replace(job, spec_tokens=0)
    verify = predict(model, system, job, executor, kernels, check_memory=False, carbon_g_per_kwh=carbon_g_per_kwh)
    plain = predict(model, system, plain_job, executor, kernels, check_memory=False, with_ops=False)
    # the proposer runs beside the target on the same GPUs (`draft_plan`)
    draft_step = predict(proposer, system, draft_plan(job, draft), executor, kernels, check_memory=False,
                         with_ops=False)
    k = job.spec_tokens
    e = expected_tokens_per_step(a, k)
    t = k * draft_step.time_s + verify.time_s
    energy = None
    if verify.energy is not None and draft_step.energy is not None:
        energy = speculative_energy(verify.energy.as_dict(), draft_step.energy.as_dict(), system, job,
                                    draft_step.job, verify.time_s, draft_step.time_s, job.batch * job.dp * e,
                                    carbon_g_per_kwh)
    # the draft's weights and cache sit beside the target's; a head shares the target's embedding
    # and LM head, so it adds one layer's weights (the target's weights / layers, ends included)
    own_weights = draft_step.memory.weights if draft is not None else verify.memory.weights / model.n_layers
    mem = replace(verify.memory, weights=float(verify.memory.weights) + float(own_weights),
                  kv_cache=float(verify.memory.kv_cache) + float(draft_step.memory.kv_cache))
    peak = float(mem.total)
    if check_memory and peak > system.gpu.mem_bytes:
        raise_out_of_memory(model, system, job, mem)
    return SpeculativePrediction(
        verify=verify, draft=draft_step, draft_name=proposer.name, spec_tokens=k, acceptance=a, tokens_per_step=e,
        time_s=t, tokens_per_s=job.batch * job.dp * e / t, plain_tokens_per_s=plain.tokens_per_s,
        peak_memory_bytes=peak, energy=energy)


def crossover_batch(model: ModelConfig, system: System, job: Job, acceptance: float,
                    draft: ModelConfig | None = None, executor: ExecutorProfile | None = None,
                    kernels: KernelProfile | None = None, max_batch: int = 4096) -> int | None:
    """The smallest batch (powers of two up to `max_batch`, then bisected) at which speculation no
    longer pays (speedup <= 1); None if it pays at every batch tried."""
    def pays(b: int) -> bool:
        return predict_speculative(model, system, replace(job, batch=b), acceptance, draft, executor, kernels,
                                   check_memory=False).speedup > 1.0
    if not pays(1):
        return 1
    lo, hi = 1, 2
    while pays(hi):
        if hi >= max_batch:
            return None
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if pays(mid) else (lo, mid)
    return hi


def shared_prefix_kv_bytes(model: ModelConfig, job: Job) -> float:
    """KV bytes on one GPU of a prefill batch whose sequences share one cached prefix of
    P = floor(prefix_hit x seq) tokens (a system prompt, a few-shot header): the prefix once plus
    each sequence's own seq - P tokens, B (seq - P) + P tokens (kv_cache_bytes counts B seq)."""
    P = int(job.cached_tokens)
    per_token = kv_cache_bytes(model, replace(job, batch=1, seq=1, prefix_hit=0.0))
    return per_token * (job.batch * (job.seq - P) + P)
