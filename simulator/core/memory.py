"""Peak device memory per GPU (bytes): weights, KV cache, activations, gradients, optimizer states.
The one memory model: `predict`, the sweeps, the planners and the serving simulator all call it.

Training, bf16 mixed precision (Micikevicius et al. 2018; ZeRO paper, Rajbhandari et al. 2020,
section 3.1), per parameter (constants in simulator.core.constants):
  weights    2 B bf16 working copy       (ZeRO-3: / dp, plus two gathered layers in flight)
  optimizer  12 B fp32 master + Adam m, v (ZeRO >= 1: / dp)
  gradients  4 B fp32                    (ZeRO >= 2: / dp)
LoRA freezes the base (bf16 weights, no state) and trains fp32 adapters: 4 B weight (it is its own
master) + 8 B Adam + 4 B gradient per adapter parameter.
When gradients are live at the peak depends on the executor: PyTorch sets .grad to None between
steps, so with one micro-batch the peak (the loss backward) comes before any gradient exists;
with gradient accumulation (several micro-batches) or a persistent buffer (Megatron's main_grad,
`persistent_grad_buffer` in the executor profile) they are live. The end of the last backward,
every gradient written and the activations freed, is the other candidate peak; the larger wins.
The peak GPU is the fuller of the first pipeline stage (embedding, min(pp, m) micro-batches of
activations in flight under 1F1B) and the last (LM head, one micro-batch, the loss temporaries).

Saved activations per token per layer (what autograd keeps for backward), for a Llama-style
layer with residual stream in r bytes and compute in a bytes (Korthikanti et al. 2022 count the
same tensors for GPT, sbh(34 + 5as/h) with dropout and without flash attention):
  norms        2 x (input + normalised output) r d
  casts        a d per projection input when r != a (autocast keeps a bf16 copy per call)
  rope         q, k and their rotate_half: 2 a (d_q + d_kv)
  attention    q, k, v, output (flash attention: no s^2 term): a (2 d_q + 2 d_kv)
  o input      a d_q
  mlp          gate, up, silu(gate), product: 4 a f   (plain MLP: 2 a f)
Full recompute keeps only each layer's input (r d) plus one layer's activations.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from simulator.core.constants import (ADAM_STATE_BYTES, GRAD_BYTES, LOSS_BYTES_PER_LOGIT, MASTER_ADAM_BYTES,
                                      MASTER_WEIGHT_BYTES, WORKING_WEIGHT_BYTES)
from simulator.core.models import ModelConfig
from simulator.core.ops import adapted_linears, lora_math_dtype, residual_bytes, split_tp, trainable_params
from simulator.core.profiles import ExecutorProfile
from simulator.core.quant import is_quantized, weight_bytes_per_param
from simulator.core.units import DTYPE_BYTES
from simulator.core.workload import ALL_LINEAR, Job

INFER_FP32_TEMPS = 2          # eager fp32 RMSNorm temporaries alive at once during inference


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU by component; each field a float or a numpy array (one per configuration)."""
    weights: float = 0.0
    kv_cache: float = 0.0
    activations: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    workspace: float = 0.0

    @property
    def total(self):
        return self.weights + self.kv_cache + self.activations + self.gradients + self.optimizer + self.workspace

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def scalar(self) -> "MemoryBreakdown":
        """The same breakdown with plain floats (one configuration)."""
        return MemoryBreakdown(**{k: float(v) for k, v in self.as_dict().items()})


def weight_params_per_gpu(model: ModelConfig, job: Job) -> float:
    """Parameters resident on one GPU: layers split over pipeline stages, linears over TP ranks
    (norms and the router replicated); embedding on the first stage, LM head on the last (the
    busiest stage is counted: layers/pp + embedding + head when pp == 1)."""
    dense = model.n_layers - model.n_moe_layers
    layers = dense * model.layer_params(False) + model.n_moe_layers * model.layer_params(True)
    per_layer_avg = layers / model.n_layers
    stage_layers = -(-model.n_layers // job.pp)
    ends = model.embedding_params + model.head_params if job.pp == 1 else max(model.embedding_params, model.head_params)
    return (stage_layers * per_layer_avg + ends) / job.tp


def quantized_weight_bytes_per_gpu(model: ModelConfig, job: Job) -> float:
    """Weights on one GPU with quantized layers (simulator.core.quant): the layer weights at
    weight_bytes_per_param (int8/int4 with their group scales), the embedding and LM head (and
    the norms, a rounding error) in the compute dtype, as AWQ, GPTQ and vLLM's fp8 keep them."""
    P = weight_params_per_gpu(model, job)
    ends = model.embedding_params + model.head_params if job.pp == 1 else max(model.embedding_params,
                                                                               model.head_params)
    ends = ends / job.tp
    return (
        (P - ends) * weight_bytes_per_param(job)  # layer weights on this GPU
        + ends * DTYPE_BYTES[job.dtype]  # embedding and head in the compute dtype
    )


def kv_cache_bytes(model: ModelConfig, job: Job) -> float:
    """K and V (or MLA latent) for every cached token of every sequence, this GPU's share; a
    decode step's prefill chunk adds its request's chunk_context + chunk_tokens tokens."""
    tokens = job.context + 1 if job.phase == "decode" else job.seq
    layers = -(-model.n_layers // job.pp)
    per_tok_layer = model.kv_cache_elems_per_token_layer_per_gpu(job.tp)
    cached = job.batch * tokens + job.chunk_context + job.chunk_tokens   # every sequence's tokens, the chunk's request
    return cached * layers * per_tok_layer * job.kv_bytes_per_elem


def inference_activation_bytes(model: ModelConfig, job: Job, fused_gate_up: bool = True) -> float:
    """Largest set of transient tensors alive during one forward (one layer at a time). The gated
    MLP's peak: a fused gate-up output (2f) beside silu(gate) and the product (4f in all); with
    separate gate and up projections the gate output is freed once activated (silu(gate), up and
    their product: 3f, as HF's LlamaMLP runs it)."""
    a = DTYPE_BYTES[job.dtype]
    T = job.batch * (1 if job.phase == "decode" else job.seq) + job.chunk_tokens   # a prefill chunk's tokens too
    f = (model.top_k * model.expert_ffn_dim + model.n_shared_experts * model.shared_ffn_dim) if model.is_moe else model.ffn_dim
    mlp = ((4 if fused_gate_up else 3) if model.gated_mlp else 2) * f / job.tp
    per_token = a * (2 * model.hidden + mlp) + INFER_FP32_TEMPS * 4 * model.hidden
    logits = (job.batch + (1 if job.chunk_tokens else 0)) * model.vocab / job.tp * 4   # a chunk: its last token
    return T * per_token + logits


def saved_activation_bytes_per_token_layer(model: ModelConfig, job: Job, ex: ExecutorProfile, moe: bool) -> float:
    a = DTYPE_BYTES[job.dtype]
    r = residual_bytes(ex, job)
    d, tp = model.hidden, job.tp
    dq = model.n_heads * (model.qk_nope_dim + model.qk_rope_dim if model.is_mla else model.head_dim) / tp
    dkv = (model.n_kv_heads * model.head_dim / tp) if not model.is_mla else dq
    if moe:
        f = (model.top_k * model.expert_ffn_dim + model.n_shared_experts * model.shared_ffn_dim) / tp
    else:
        f = model.ffn_dim / tp
    cast = 0.0 if r == a else a * d
    n_attn_in = 1 if ex.fused_qkv or model.is_mla else 3
    n_mlp_in = 1 if ex.fused_gate_up else 2
    norms = 2 * 2 * r * d
    casts = cast * (n_attn_in + n_mlp_in)
    rope = 2 * a * (dq + dkv)
    attn = a * (2 * dq + 2 * dkv)
    o_in = a * dq
    mlp = (4 if model.gated_mlp else 2) * a * f
    if moe:
        mlp += a * model.n_experts * 2   # router logits and probabilities
    if job.lora_rank:
        # PEFT saves, per adapted linear, lora_A's input -- the layer's input cast to the adapter
        # dtype (fp32 adapters: 4 B per input feature), or under autocast that copy cast back down
        # (a B): a tensor of its own either way unless the adapters share the compute dtype -- and
        # lora_B's rank-r input, in the adapter math dtype
        ad, g = DTYPE_BYTES[ex.lora_adapter_dtype], DTYPE_BYTES[lora_math_dtype(ex, job)]
        for lin in adapted_linears(model, moe, ex, job.lora_targets):
            k_in, _ = split_tp(lin, tp)
            mlp += (k_in * g if ad != a else 0.0) + job.lora_rank * g
    total = norms + casts + rope + attn + o_in + mlp
    if job.recompute == "selective":     # recompute rope and attention internals, keep the rest
        total -= rope + attn - a * (dq + 2 * dkv)
    return total


def inference_memory(model: ModelConfig, job: Job, ex: ExecutorProfile, weights_on_gpu: bool = True,
                     offload_buffers: float = 0.0) -> MemoryBreakdown:
    P = weight_params_per_gpu(model, job)
    w = P * DTYPE_BYTES[job.dtype] if weights_on_gpu else offload_buffers
    if weights_on_gpu and is_quantized(job):
        w = quantized_weight_bytes_per_gpu(model, job)
    return MemoryBreakdown(weights=w, kv_cache=kv_cache_bytes(model, job),
                           activations=inference_activation_bytes(model, job, ex.fused_gate_up),
                           workspace=ex.workspace_bytes)


# ---------------------------------------------------------------------------------------------
# training: activations per layer, parameters per stage, the vectorised model-state terms


def korthikanti_activation_bytes_per_layer(s, b, h, a, t=1, sp=False, recompute="none"):
    """Activation bytes one GPT layer keeps for backward (Korthikanti et al. 2022, "Reducing
    Activation Recomputation in Large Transformer Models", Table 2; fp16 activations, 1-byte
    dropout masks), in bytes:
        no parallelism            s b h (34 + 5 a s / h)
        tensor parallel           s b h (10 + 24/t + 5 a s / (h t))
        + sequence parallel       s b h (34 + 5 a s / h) / t
        selective recompute       s b h (10 + 24/t)          (with SP: 34 s b h / t)
        full recompute            2 s b h                    (with SP: 2 s b h / t)
    Vectorised."""
    s, b, h, a, t = (np.asarray(x, float) for x in (s, b, h, a, t))
    sp = np.asarray(sp, bool)
    sbh = s * b * h
    if recompute == "full":
        out = 2 * sbh / np.where(sp, t, 1)
    else:
        attn_scores = 5 * a * s / h if recompute == "none" else 0.0
        out = np.where(sp, sbh * (34 + attn_scores) / t, sbh * (10 + 24 / t + attn_scores / t))
    return float(out) if np.ndim(out) == 0 else out


def _is_gpt_style(model: ModelConfig) -> bool:
    return model.norm == "layer" and model.linear_bias and not model.gated_mlp and not model.is_moe


def activation_bytes_per_layer(model: ModelConfig, seq_local, micro_batch, tp, sp, recompute, ex: ExecutorProfile,
                               lora_rank: int = 0, lora_targets: str = ALL_LINEAR):
    """Saved activations of one layer for one micro-batch on one GPU (vectorised over
    micro_batch, tp, sp; seq_local = seq / cp). GPT-style models use Korthikanti's Table 2; other
    families the per-tensor count of `saved_activation_bytes_per_token_layer`, divided by tp for
    every tensor with sequence parallelism."""
    if _is_gpt_style(model) and not lora_rank:
        return korthikanti_activation_bytes_per_layer(seq_local, micro_batch, model.hidden, model.n_heads,
                                                      tp, sp, recompute)
    tp, sp, mb = np.asarray(tp), np.asarray(sp, bool), np.asarray(micro_batch, float)
    tokens = mb * np.asarray(seq_local, float)
    if recompute == "full":
        r = residual_bytes(ex, Job(phase="train", lora_rank=lora_rank))
        return tokens * r * model.hidden / np.where(sp, tp, 1)
    moe_frac = model.n_moe_layers / model.n_layers
    out = np.zeros(np.broadcast(tp, sp).shape)
    for t in np.unique(tp):
        job = Job(phase="train", batch=1, seq=1, tp=int(t), recompute=recompute, lora_rank=lora_rank,
                  lora_targets=lora_targets)

        def per_tok(j):
            return ((1 - moe_frac) * saved_activation_bytes_per_token_layer(model, j, ex, False)
                    + moe_frac * saved_activation_bytes_per_token_layer(model, j, ex, True))
        val = np.where(sp, per_tok(replace(job, tp=1)) / t, per_tok(job))
        out = np.where(tp == t, val, out)
    return tokens * out


def param_split(model: ModelConfig) -> tuple[float, float, float]:
    """(non-expert params per layer averaged over layers, expert params per layer averaged,
    embedding + head params)."""
    dense, moe = model.n_layers - model.n_moe_layers, model.n_moe_layers
    expert = sum(lin.params for lin in model.layer_linears(True) if lin.moe) if model.is_moe else 0
    total_layers = dense * model.layer_params(False) + moe * model.layer_params(True)
    return (total_layers - moe * expert) / model.n_layers, moe * expert / model.n_layers, \
        float(model.embedding_params + model.head_params)


def stage_layers(model: ModelConfig, pp):
    """Layers on the busiest pipeline stage: ceil(L / pp). Vectorised."""
    return -(-model.n_layers // np.asarray(pp))


def stage_params(model: ModelConfig, tp, pp, ep):
    """Parameters on one GPU of the busiest pipeline stage: ceil(L/pp) layers (experts split over
    ep ranks), the embedding and, with pp == 1, the head (with pp > 1 the larger of the two ends).
    Vectorised over tp, pp, ep."""
    per_layer, expert_per_layer, ends = param_split(model)
    pp = np.asarray(pp)
    ends_here = np.where(pp == 1, ends, max(model.embedding_params, model.head_params))
    return (stage_layers(model, pp) * (per_layer + expert_per_layer / np.asarray(ep)) + ends_here) / np.asarray(tp)


def trainable_fraction(model: ModelConfig, lora_rank: int, ex: ExecutorProfile, lora_targets: str = ALL_LINEAR) -> float:
    """Trainable / all parameters (1 for full training; LoRA adapters / base otherwise)."""
    job = Job("train", seq=1, lora_rank=lora_rank, lora_targets=lora_targets)
    return trainable_params(model, job, ex) / model.params_total()


def memory_terms(model: ModelConfig, seq, ex: ExecutorProfile, tp, pp, dp, cp, ep, micro_batch, n_micro, vpp,
                 sp, zero, recompute: str, lora_rank: int = 0, dtype: str = "bf16",
                 lora_targets: str = ALL_LINEAR) -> dict:
    """Per-GPU training memory of the fullest pipeline stage (see module doc), vectorised over
    every argument but `recompute`, `lora_rank` and `lora_targets`: dict of MemoryBreakdown field -> array."""
    tp, pp, dp, cp, ep, mb, m, v, zero = (np.asarray(x) for x in (tp, pp, dp, cp, ep, micro_batch, n_micro, vpp,
                                                                    zero))
    P = stage_params(model, tp, pp, ep)
    a = DTYPE_BYTES[dtype]
    trainable = P * trainable_fraction(model, lora_rank, ex, lora_targets)
    per_layer, expert_per_layer, _ = param_split(model)
    if lora_rank:
        # frozen base in the compute dtype; adapters in fp32 are their own master weights
        weights = P * a + trainable * MASTER_WEIGHT_BYTES
        optimizer = trainable * ADAM_STATE_BYTES / np.where(zero >= 1, dp, 1)
    else:
        # ZeRO-3 gathers each layer's full (tp-sharded) weights just in time: the layer in use and
        # the prefetched next one are resident besides the shard
        gathered = 2 * (per_layer + expert_per_layer / ep) / tp * WORKING_WEIGHT_BYTES
        weights = np.where(zero >= 3, P * WORKING_WEIGHT_BYTES / dp + gathered, P * WORKING_WEIGHT_BYTES)
        optimizer = trainable * MASTER_ADAM_BYTES / np.where(zero >= 1, dp, 1)
    grads_live = ex.persistent_grad_buffer | (m > 1)
    gradients = np.where(grads_live, trainable * GRAD_BYTES / np.where(zero >= 2, dp, 1), 0.0)
    s_local = np.asarray(seq) // cp
    layer = activation_bytes_per_layer(model, s_local, mb, tp, sp, recompute, ex, lora_rank, lora_targets)
    layers = stage_layers(model, pp)
    if recompute == "full":   # the layer being recomputed holds its full activations once
        once = activation_bytes_per_layer(model, s_local, mb, tp, sp, "none", ex, lora_rank, lora_targets)
    else:
        once = 0.0
    # 1F1B: the first stage holds min(pp, m) micro-batches (x (1 + (pp-1)/(pp v)) interleaved,
    # Korthikanti eq. 5); the last holds one, plus the logits, fp32 log-probs and their gradient
    in_flight = np.minimum(pp, m) * np.where(v > 1, 1 + (pp - 1) / (pp * v), 1.0)
    loss = mb * s_local * model.vocab / tp * LOSS_BYTES_PER_LOGIT
    first = layer * layers * in_flight + once
    last = layer * layers + once + loss
    activations = np.where(pp == 1, first + loss, np.maximum(first, last))
    # the other candidate peak: the end of the last backward, every gradient written and the
    # activations freed; it binds when gradients outweigh a micro-batch's activations
    all_grads = trainable * GRAD_BYTES / np.where(zero >= 2, dp, 1)
    at_end = all_grads > activations + gradients
    return {"weights": weights, "kv_cache": np.zeros_like(weights),
            "activations": np.where(at_end, 0.0, activations), "gradients": np.where(at_end, all_grads, gradients),
            "optimizer": optimizer, "workspace": np.full_like(weights, ex.workspace_bytes, dtype=float)}


def training_memory(model: ModelConfig, job: Job, ex: ExecutorProfile) -> MemoryBreakdown:
    """Per-GPU memory of one training Job (its tp, pp, dp, cp, ep, sp, vpp, ZeRO, recompute, LoRA)."""
    mb = job.micro_batch or job.batch
    d = memory_terms(model, job.seq, ex, job.tp, job.pp, job.dp, job.cp, job.ep, mb, job.batch // mb, job.vpp,
                     job.sp, job.zero, job.recompute, job.lora_rank, job.dtype, job.lora_targets)
    return MemoryBreakdown(**d)
