"""Peak device memory per GPU (bytes): weights, KV cache, activations, gradients, optimizer states.

Training, bf16 mixed precision (Micikevicius et al. 2018; ZeRO paper, Rajbhandari et al. 2020,
section 3.1): per parameter 4 B fp32 master + 2 B bf16 working copy + 4 B fp32 gradient + 8 B
Adam (m, v) = 18 B. The peak comes at the loss backward, before any gradient exists (gradients
are set to None between steps): master + working copy + Adam + all saved activations + the
loss temporaries. ZeRO stage s shards optimizer states (s>=1), gradients (s>=2) and the master
weights (s=3) over the data-parallel group.

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

from dataclasses import dataclass

from simulator.core.models import ModelConfig
from simulator.core.ops import trainable_params
from simulator.core.profiles import ExecutorProfile
from simulator.core.units import DTYPE_BYTES
from simulator.core.workload import Job

LOSS_BYTES_PER_LOGIT = 10.0   # bf16 logits kept + fp32 log-probs + fp32 gradient at the loss backward
INFER_FP32_TEMPS = 2          # eager fp32 RMSNorm temporaries alive at once during inference


@dataclass(frozen=True)
class MemoryBreakdown:
    weights: float = 0.0
    kv_cache: float = 0.0
    activations: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    workspace: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations + self.gradients + self.optimizer + self.workspace

    def as_dict(self) -> dict[str, float]:
        return {"weights": self.weights, "kv_cache": self.kv_cache, "activations": self.activations,
                "gradients": self.gradients, "optimizer": self.optimizer, "workspace": self.workspace}


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


def kv_cache_bytes(model: ModelConfig, job: Job) -> float:
    """K and V (or MLA latent) for every cached token of every sequence, this GPU's share."""
    tokens = job.context + 1 if job.phase == "decode" else job.seq
    layers = -(-model.n_layers // job.pp)
    per_tok_layer = model.kv_cache_elems_per_token_layer_per_gpu(job.tp)
    return job.batch * tokens * layers * per_tok_layer * job.kv_bytes_per_elem


def inference_activation_bytes(model: ModelConfig, job: Job) -> float:
    """Largest set of transient tensors alive during one forward (one layer at a time)."""
    a = DTYPE_BYTES[job.dtype]
    T = job.batch * (1 if job.phase == "decode" else job.seq)
    f = (model.top_k * model.expert_ffn_dim + model.n_shared_experts * model.shared_ffn_dim) if model.is_moe else model.ffn_dim
    mlp = (4 if model.gated_mlp else 2) * f / job.tp
    per_token = a * (2 * model.hidden + mlp) + INFER_FP32_TEMPS * 4 * model.hidden
    logits = job.batch * model.vocab / job.tp * 4
    return T * per_token + logits


def saved_activation_bytes_per_token_layer(model: ModelConfig, job: Job, ex: ExecutorProfile, moe: bool) -> float:
    a = DTYPE_BYTES[job.dtype]
    r = ex.train_residual_bytes
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
        mlp += a * job.lora_rank * 7     # the rank-r intermediates of the seven adapted linears
    total = norms + casts + rope + attn + o_in + mlp
    if job.recompute == "selective":     # recompute rope and attention internals, keep the rest
        total -= rope + attn - a * (dq + 2 * dkv)
    return total


def training_memory(model: ModelConfig, job: Job, ex: ExecutorProfile) -> MemoryBreakdown:
    mb = job.micro_batch or job.batch
    T = mb * job.seq
    P = weight_params_per_gpu(model, job)
    trainable = trainable_params(model, job) * P / model.params_total()
    zero_dp = job.dp if job.zero else 1
    if job.lora_rank:
        # frozen base in bf16; adapters in fp32 with full mixed-precision state
        weights = P * DTYPE_BYTES[job.dtype] + trainable * 4
    else:
        weights = P * 2 + P * 4 / (job.dp if job.zero >= 3 else 1)
    optimizer = trainable * 8 / (zero_dp if job.zero >= 1 else 1)
    layers = -(-model.n_layers // job.pp)
    moe_frac = model.n_moe_layers / model.n_layers
    per_tok = ((1 - moe_frac) * saved_activation_bytes_per_token_layer(model, job, ex, False)
               + moe_frac * saved_activation_bytes_per_token_layer(model, job, ex, True))
    if job.recompute == "full":
        acts = T * (layers * ex.train_residual_bytes * model.hidden + per_tok)
    else:
        # 1F1B keeps up to pp micro-batches in flight on the first stage
        in_flight = min(job.pp, job.batch // mb) if job.pp > 1 else 1
        acts = T * layers * per_tok * in_flight
    loss = T * model.vocab / job.tp * LOSS_BYTES_PER_LOGIT
    # gradients of the earlier micro-batches (accumulation) are live at the last loss backward
    grads = trainable * 4 / (zero_dp if job.zero >= 2 else 1) if job.batch > mb else 0.0
    return MemoryBreakdown(weights=weights, activations=acts + loss, gradients=grads,
                           optimizer=optimizer, workspace=ex.workspace_bytes)


def inference_memory(model: ModelConfig, job: Job, ex: ExecutorProfile, weights_on_gpu: bool = True,
                     offload_buffers: float = 0.0) -> MemoryBreakdown:
    P = weight_params_per_gpu(model, job)
    w = P * DTYPE_BYTES[job.dtype] if weights_on_gpu else offload_buffers
    return MemoryBreakdown(weights=w, kv_cache=kv_cache_bytes(model, job),
                           activations=inference_activation_bytes(model, job), workspace=ex.workspace_bytes)
