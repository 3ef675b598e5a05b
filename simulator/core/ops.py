"""Op lists: FLOPs and HBM bytes of every kernel a step runs, per GPU.

A decoder layer is the same op sequence for every family; the model's `Linear` shapes, the
attention kind (MHA/GQA/MLA) and the MoE routing change the numbers. Ops that repeat per layer
carry `count = layers on this GPU`. Conventions:
  * GEMM FLOPs = 2 M N K; bytes = inputs + weights + outputs, once each (weights re-read from
    HBM every step: they do not fit in L2).
  * Causal attention FLOPs = B h S^2 (d_qk + d_v)  (half of the full S x S square).
  * Backward = 2x the forward GEMM FLOPs (input and weight gradients); frozen weights (LoRA)
    skip the weight gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from simulator.core.models import Linear, ModelConfig
from simulator.core.profiles import ExecutorProfile
from simulator.core.units import DTYPE_BYTES
from simulator.core.workload import Job

OP_CLASSES = ("gemm", "attention", "norm", "elementwise", "embedding", "loss", "optimizer",
              "copy", "communication")


@dataclass(frozen=True)
class Op:
    name: str
    cls: str             # one of OP_CLASSES
    flops: float         # per instance
    bytes: float         # HBM bytes read + written per instance
    count: int = 1       # instances per step
    kernels: int = 1     # kernel launches per instance
    pass_: str = "fwd"   # fwd | bwd | opt
    kind: str = ""       # sub-kind the time model needs: attn_prefill | attn_decode | allreduce ...
    dtype: str = "bf16"
    seq: int = 0         # attention: query length (causal waste ~ diag/seq)
    group: int = 0       # communication: ranks in the collective (0 = the tensor-parallel group)


def experts_touched(n_experts: int, top_k: int, tokens: int) -> float:
    """Expected distinct experts hit by `tokens` tokens each routed to top_k of n (uniform routing)."""
    if n_experts == 0:
        return 0.0
    return n_experts * (1.0 - (1.0 - top_k / n_experts) ** tokens)


def _split_tp(lin: Linear, tp: int) -> tuple[int, int]:
    """Megatron split: column-parallel for up/qkv projections, row-parallel for o/down."""
    if tp == 1 or lin.name == "router":
        return lin.d_in, lin.d_out
    if lin.name in ("o", "down", "experts_down", "shared_down"):
        return lin.d_in // tp, lin.d_out
    return lin.d_in, lin.d_out // tp


def _linears(model: ModelConfig, moe: bool, ex: ExecutorProfile) -> list[Linear]:
    out = []
    for lin in model.layer_linears(moe):
        if lin.name == "qkv" and not ex.fused_qkv:
            hd = model.head_dim
            out += [Linear("q", lin.d_in, model.n_heads * hd, lin.bias),
                    Linear("k", lin.d_in, model.n_kv_heads * hd, lin.bias),
                    Linear("v", lin.d_in, model.n_kv_heads * hd, lin.bias)]
        elif lin.name == "gate_up" and not ex.fused_gate_up:
            f = lin.d_out // 2
            out += [Linear("gate", lin.d_in, f), Linear("up", lin.d_in, f)]
        else:
            out.append(lin)
    return out


def layer_forward_ops(model: ModelConfig, job: Job, ex: ExecutorProfile, moe: bool, count: int,
                      tokens: int, batch: int, q_len: int, kv_len: int, prefix: str) -> list[Op]:
    """Forward ops of one decoder layer on one GPU (tensor-parallel shard of `job.tp`)."""
    tp, d = job.tp, model.hidden
    a = DTYPE_BYTES[job.dtype]
    kvb = job.kv_bytes_per_elem
    w_bytes = DTYPE_BYTES[job.dtype]
    T = tokens
    ops: list[Op] = []
    heads = max(1, model.n_heads // tp)
    kv_heads = max(1, model.n_kv_heads // tp) if not model.is_mla else heads

    def norm(name):
        ops.append(Op(f"{prefix}{name}", "norm", 4.0 * T * d, ex.norm_bytes_per_elem * T * d * a / 2,
                      count, ex.norm_kernels if model.norm == "rms" else 1, dtype=job.dtype))

    ep = job.ep if moe else 1

    def gemm(lin: Linear):
        # expert parallelism: each of ep ranks holds count/ep whole experts, split tp/ep ways
        k_in, n_out = _split_tp(lin, tp // ep if lin.moe else tp)
        if lin.moe:
            routed = T * lin.active / ep          # token-expert pairs on this rank (balanced routing)
            touched = experts_touched(lin.count, lin.active, T) / ep
            flops = 2.0 * routed * k_in * n_out
            byts = touched * k_in * n_out * w_bytes + routed * (k_in + n_out) * a
        else:
            flops = 2.0 * T * k_in * n_out
            byts = k_in * n_out * w_bytes + T * (k_in + n_out) * a
        if job.lora_rank and not lin.moe and lin.name != "router":
            r = job.lora_rank
            flops += 2.0 * T * r * (k_in + n_out)
            byts += r * (k_in + n_out) * w_bytes + 2 * T * r * a
        ops.append(Op(f"{prefix}{lin.name}", "gemm", flops, byts, count, dtype=job.dtype))

    def elementwise(name, elems, bytes_per_elem, kernels=1, cls="elementwise"):
        ops.append(Op(f"{prefix}{name}", cls, elems, elems * bytes_per_elem, count, kernels, dtype=job.dtype))

    linears = _linears(model, moe, ex)
    attn_names = {"qkv", "q", "k", "v", "q_a", "q_b", "kv_a", "kv_b", "o"}
    # autocast training keeps the residual stream in fp32 (r bytes); every projection that reads
    # it first casts its input to the compute dtype (one cast kernel per linear call)
    r = ex.train_residual_bytes if job.phase == "train" else a
    autocast = r != a

    def casts(names):
        n = sum(1 for l in linears if l.name in names)
        if autocast and n:
            elementwise(f"autocast_cast_{'_'.join(sorted(names))[:12]}", n * T * d, r + a, n)

    norm("attn_norm")
    casts({"qkv", "q", "k", "v", "q_a", "kv_a"})
    for lin in linears:
        if lin.name == "o":
            break
        if lin.name in attn_names:
            gemm(lin)
    # rotary embedding on q and k (MLA: on the rope part only)
    # (models with learned absolute positions -- GPT-2/3, OPT -- have no rotary embedding)
    rope_dim = model.qk_rope_dim if model.is_mla else model.head_dim
    if not model.learned_positions:
        elementwise("rope", T * (heads + (1 if model.is_mla else kv_heads)) * rope_dim, ex.rope_bytes_per_elem,
                    ex.rope_kernels)
    # KV cache write (inference): the new tokens' K and V
    if job.phase != "train":
        kv_elems = model.kv_cache_elems_per_token_layer_per_gpu(tp)
        if ex.kv_cache_concat and job.phase == "decode":
            # torch.cat(cache, new): read the L cached tokens, write L + 1 (K and V)
            cat_bytes = batch * kv_elems * (2 * kv_len + 1) * kvb + T * kv_elems * a
            ops.append(Op(f"{prefix}kv_write", "elementwise", T * kv_elems, cat_bytes, count, 2, dtype=job.dtype))
        else:
            elementwise("kv_write", T * kv_elems, a + kvb, 2, "elementwise")
    # attention
    if model.is_mla and job.phase == "decode":
        d_qk, d_v = model.kv_lora_rank + model.qk_rope_dim, model.kv_lora_rank  # absorbed: attend over the latent
    elif model.is_mla:
        d_qk, d_v = model.qk_nope_dim + model.qk_rope_dim, model.v_head_dim
    else:
        d_qk = d_v = model.head_dim
    if job.phase == "decode":
        L = kv_len + 1
        cache = batch * L * model.kv_cache_elems_per_token_layer_per_gpu(tp) * kvb
        flops = 2.0 * batch * heads * L * (d_qk + d_v)
        ops.append(Op(f"{prefix}attention", "attention", flops, cache + 2 * T * heads * d_v * a, count,
                      kind="attn_decode", dtype=job.dtype))
    else:
        S = q_len
        flops = batch * heads * S * S * (d_qk + d_v) * 1.0   # causal
        byts = T * (heads * (d_qk + d_v) + 2 * kv_heads * d_qk) * a
        if ex.repeat_kv and kv_heads < heads:
            elementwise("repeat_kv", 2 * T * heads * d_qk, 2 * a, 2)
        if ex.attn_score_bytes_per_elem:
            # unfused attention (Megatron 2021): two batched GEMMs over the full S x S square, the
            # scores materialised in HBM for softmax and dropout (their traffic in attn_scores)
            ops.append(Op(f"{prefix}attn_qk", "gemm", 2.0 * batch * heads * S * S * d_qk,
                          T * (heads + kv_heads) * d_qk * a, count, dtype=job.dtype))
            elementwise("attn_scores", batch * heads * S * S, ex.attn_score_bytes_per_elem, 3)
            ops.append(Op(f"{prefix}attn_av", "gemm", 2.0 * batch * heads * S * S * d_v,
                          T * (heads + kv_heads) * d_v * a, count, dtype=job.dtype))
        else:
            ops.append(Op(f"{prefix}attention", "attention", flops, byts, count, kind="attn_prefill",
                          dtype=job.dtype, seq=S))
    for lin in linears:
        if lin.name == "o":
            gemm(lin)
    if tp > 1:
        ops.append(Op(f"{prefix}attn_allreduce", "communication", 0.0, T * d * a, count, kind="allreduce"))
    elementwise("residual_add", T * d, a + 2 * r)
    norm("mlp_norm")
    casts({"gate_up", "gate", "up"} if not moe else {"router"})
    mlp = [l for l in linears if l.name not in attn_names]
    if moe:
        elementwise("router_topk", T * model.n_experts, 4 * a, 4)
    for lin in mlp:
        if lin.name in ("down", "experts_down", "shared_down"):
            f = (lin.d_in // (tp // ep if lin.moe else tp)) * (T * model.top_k / ep if lin.moe else T)
            if model.gated_mlp:
                elementwise(f"act_{lin.name}", f, 5 * a, 2)   # silu(g) (r+w), * u (2r + w)
            else:
                elementwise(f"act_{lin.name}", f, 2 * a, 1)
        gemm(lin)
    if moe:
        elementwise("moe_combine", T * model.top_k * d, 2 * a, 3)
    if ep > 1:
        # dispatch each token's top-k copies to the experts' ranks and combine them back
        # (all-to-all of the (ep-1)/ep that leave this rank; bytes are this rank's send buffer)
        for name in ("moe_dispatch", "moe_combine_a2a"):
            ops.append(Op(f"{prefix}{name}", "communication", 0.0, T * model.top_k * d * a / ep, count,
                          kind="all_to_all", group=ep))
    if tp > 1 and not (ep > 1 and ep == tp):   # pure EP: the combine all-to-all already sums the experts
        ops.append(Op(f"{prefix}mlp_allreduce", "communication", 0.0, T * d * a, count, kind="allreduce"))
    elementwise("residual_add2", T * d, a + 2 * r)
    return ops


def forward_ops(model: ModelConfig, job: Job, ex: ExecutorProfile, layers: int | None = None,
                batch: int | None = None, embed: bool = True, head: bool = True) -> list[Op]:
    """Forward ops on one GPU: embedding, `layers` decoder layers, final norm and LM head."""
    B = job.batch if batch is None else batch
    q_len = 1 if job.phase == "decode" else job.seq
    T = B * q_len
    n_layers = model.n_layers if layers is None else layers
    a = DTYPE_BYTES[job.dtype]
    d = model.hidden
    ops: list[Op] = []
    if embed:
        ops.append(Op("embedding", "embedding", 0.0, T * d * 2 * a, 1, 1, dtype=job.dtype))
    n_moe = min(model.n_moe_layers, n_layers) if model.is_moe else 0
    n_dense = n_layers - n_moe
    kw = dict(tokens=T, batch=B, q_len=q_len, kv_len=job.context)
    if n_dense:
        ops += layer_forward_ops(model, job, ex, False, n_dense, prefix="layer.", **kw)
    if n_moe:
        ops += layer_forward_ops(model, job, ex, True, n_moe, prefix="moe_layer.", **kw)
    if head:
        # prefill/decode: logits of the last position only; training: every position
        t_head = T if job.phase == "train" else B
        ops.append(Op("final_norm", "norm", 4.0 * t_head * d, ex.norm_bytes_per_elem * t_head * d * a / 2, 1,
                      ex.norm_kernels if model.norm == "rms" else 1, dtype=job.dtype))
        v = model.vocab // job.tp
        ops.append(Op("lm_head", "gemm", 2.0 * t_head * d * v, (d * v + t_head * (d + v)) * a, 1,
                      dtype=job.dtype))
    return ops


def backward_ops(fwd: list[Op], job: Job, memory_ratio: float = 2.0) -> list[Op]:
    """Backward of a forward op list: GEMMs 2x (1x when weights are frozen), attention by the
    profile's ratio (applied in the time model via kind), memory-bound ops `memory_ratio` x
    their forward traffic (2 in theory: read the saved input and the incoming gradient, write
    one gradient; eager autograd with fp32 norms and gradient accumulation moves more -- the
    executor profile carries the fitted value)."""
    out = []
    for op in fwd:
        if op.cls == "gemm":
            frozen = job.lora_rank > 0
            mult = 1.0 if frozen else 2.0
            out.append(Op(op.name + ".bwd", "gemm", op.flops * mult, op.bytes * mult, op.count, 2 if not frozen else 1,
                          "bwd", dtype=op.dtype))
        elif op.cls == "attention":
            out.append(Op(op.name + ".bwd", "attention", op.flops * 2.5, op.bytes * 2, op.count, 1, "bwd",
                          "attn_prefill_bwd", op.dtype, op.seq))
        elif op.cls == "communication":
            out.append(Op(op.name + ".bwd", op.cls, 0.0, op.bytes, op.count, 1, "bwd", op.kind))
        elif op.cls == "embedding":
            out.append(Op(op.name + ".bwd", "embedding", 0.0, op.bytes * 2, op.count, 3, "bwd", dtype=op.dtype))
        else:
            out.append(Op(op.name + ".bwd", op.cls, op.flops * 2, op.bytes * memory_ratio, op.count,
                          max(1, round(op.kernels * memory_ratio / 2)), "bwd", op.kind, op.dtype))
    return out


def trainable_params(model: ModelConfig, job: Job) -> float:
    """Parameters the optimizer updates (per model replica, before TP/PP/ZeRO sharding)."""
    if not job.lora_rank:
        return float(model.params_total())
    r = job.lora_rank
    per_layer_dense = sum(r * (l.d_in + l.d_out) for l in model.layer_linears(False) if l.name != "router")
    per_layer_moe = sum(r * (l.d_in + l.d_out) * (l.count if l.moe else 1)
                        for l in model.layer_linears(True) if l.name != "router")
    return float((model.n_layers - model.n_moe_layers) * per_layer_dense + model.n_moe_layers * per_layer_moe)


def loss_ops(model: ModelConfig, job: Job, tokens: int) -> list[Op]:
    """Cross-entropy over the full vocabulary: fp32 upcast of the logits, log-softmax, NLL, and
    their backward (HF computes the loss in fp32)."""
    elems = tokens * (model.vocab // job.tp)
    return [
        Op("loss.upcast_softmax", "loss", 5.0 * elems, elems * (2 + 4 + 4), 1, 3),
        Op("loss.softmax_bwd", "loss", 3.0 * elems, elems * (4 + 4 + 4 + 2), 1, 3, "bwd"),
    ]


def optimizer_ops(model: ModelConfig, job: Job, params_on_gpu: float) -> list[Op]:
    """Fused AdamW over fp32 master weights: read p, g, m, v; write p, m, v (28 B/param), plus
    the bf16 working copy of the weights that mixed precision recasts each step (6 B/param)."""
    return [
        Op("optimizer.adamw", "optimizer", 12.0 * params_on_gpu, 28.0 * params_on_gpu, 1,
           max(1, math.ceil(params_on_gpu / 2e8)), "opt", dtype="fp32"),
        Op("optimizer.cast_weights", "elementwise", params_on_gpu, 6.0 * params_on_gpu, 1,
           max(1, math.ceil(params_on_gpu / 2e8)), "opt", dtype="fp32"),
    ]
