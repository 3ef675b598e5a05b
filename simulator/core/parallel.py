"""Multi-GPU training step: time and per-GPU memory of a (tp, pp, dp, cp, ep, sp, ZeRO, recompute,
micro-batch, schedule) plan, built on the core op lists and time model (so calibration carries).

Time per step (the busiest pipeline stage; Narayanan et al. 2021, "Efficient Large-Scale Language
Model Training on GPU Clusters Using Megatron-LM", sec. 2.2 and 3):
  t_mb      = forward + backward (+ recompute) of one micro-batch on one stage, from
              simulator.core.ops / simulator.core.roofline.time_ops (tensor-parallel shards, TP collectives
              from simulator.core.comm: 2 all-reduces forward + 2 backward per layer, or the same volume
              as all-gather + reduce-scatter with sequence parallelism)
  m         = global_batch / (dp x micro_batch)         micro-batches per step
  bubble    = (pp - 1) / v x t_mb                        1F1B; v virtual stages (interleaved)
  pp p2p    = 2 v m x t_send + 2 (pp - 1) t_send         activations forward, gradients backward,
              t_send = p2p of micro_batch x seq x hidden (/ tp: Megatron's scatter-gather)
  dp        = all-reduce (ZeRO 0) or reduce-scatter + all-gather (ZeRO 1/2) of this stage's
              gradients, exposed beyond the last micro-batch's backward when overlapped; ZeRO-3
              adds per-micro-batch parameter all-gathers (forward and backward), prefetched
  ep        = 4 all-to-alls per MoE layer per micro-batch (dispatch + combine, forward + backward)
  step      = m t_mb + bubble + pp p2p + dp (exposed) + ep + optimizer

Memory per GPU (first pipeline stage, the fullest):
  model states per parameter: 2 (bf16 weights) + 4 (fp32 gradient, Megatron main_grad)
  + 12 (fp32 master, Adam m, v) = 18 B; ZeRO (Rajbhandari et al. 2020) shards the 12 over dp at
  stage >= 1, the gradient at >= 2 and the weights at 3 (plus two gathered layers in flight).
  activations: GPT-style models (LayerNorm, biases, dropout: Korthikanti et al. 2022, "Reducing
  Activation Recomputation in Large Transformer Models", Table 2) per layer, in bytes
      no parallelism            s b h (34 + 5 a s / h)
      tensor parallel           s b h (10 + 24/t + 5 a s / (h t))
      + sequence parallel       s b h (34 + 5 a s / h) / t
      selective recompute       s b h (10 + 24/t)          (with SP: 34 s b h / t)
      full recompute            2 s b h                    (with SP: 2 s b h / t)
  (a heads, s sequence, b micro-batch, h hidden, t tp); other families use the core's per-tensor
  count (simulator.core.memory), divided by t for every tensor with SP. The first 1F1B stage holds
  min(pp, m) micro-batches of its layers, x (1 + (pp - 1)/(pp v)) interleaved (Korthikanti eq. 5).

FLOPs: model FLOPs = 3 x forward FLOPs of the whole batch with the full attention square
(Megatron's convention): for GPT 72 B s l h^2 (1 + s/6h + V/12lh); hardware FLOPs add the
recomputed forward: full recompute -> 96 B s l h^2 (1 + s/6h + V/16lh) (Narayanan et al. 2021,
eq. 3).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from simulator.core.comm import collective_time
from simulator.core.errors import RoofplanError
from simulator.core.memory import MemoryBreakdown, saved_activation_bytes_per_token_layer
from simulator.core.models import ModelConfig
from simulator.core.ops import backward_ops, forward_ops, layer_forward_ops, loss_ops, optimizer_ops
from simulator.core.profiles import ExecutorProfile, KernelProfile, load_executor_profile, load_kernel_profile
from simulator.core.roofline import time_ops
from simulator.core.specs import System
from simulator.core.units import DTYPE_BYTES
from simulator.core.workload import Job

RECOMPUTE = ("none", "selective", "full")
MASTER_ADAM_BYTES = 12.0     # fp32 master weights + Adam m + v per parameter
ATTENTION_OPS = ("attention", "attn_qk", "attn_scores", "attn_av")   # what selective recompute redoes
GRAD_BYTES = 4.0             # fp32 gradient (Megatron main_grad; the core's training memory too)


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
    overlap_grad_reduce: bool = True
    grad_reduce_bytes: float = 2.0   # bytes per gradient element on the wire (bf16/fp16)
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


@dataclass(frozen=True)
class TrainStep:
    """One training step of a plan (times in seconds, per GPU; FLOPs over all GPUs)."""
    plan: ParallelPlan
    seq: int
    time_s: float
    compute_s: float          # m x micro-batch forward + backward on the busiest stage (no comm)
    recompute_s: float        # the recomputed forward inside compute_s
    bubble_s: float
    tp_comm_s: float
    pp_comm_s: float
    dp_comm_s: float          # exposed
    ep_comm_s: float
    cp_comm_s: float
    optimizer_s: float
    memory: MemoryBreakdown
    model_flops: float
    hardware_flops: float
    peak_flops: float
    mem_capacity_bytes: float

    @property
    def n_gpus(self) -> int:
        return self.plan.n_gpus

    @property
    def peak_memory_bytes(self) -> float:
        return self.memory.total

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.mem_capacity_bytes

    @property
    def model_flops_per_gpu_s(self) -> float:
        return self.model_flops / self.n_gpus / self.time_s

    @property
    def hardware_flops_per_gpu_s(self) -> float:
        return self.hardware_flops / self.n_gpus / self.time_s

    @property
    def mfu(self) -> float:
        return self.model_flops_per_gpu_s / self.peak_flops

    @property
    def tokens_per_s(self) -> float:
        return self.plan.global_batch * self.seq / self.time_s

    def terms(self) -> dict[str, float]:
        return {"compute": self.compute_s - self.recompute_s, "recompute": self.recompute_s,
                "bubble": self.bubble_s, "tp_comm": self.tp_comm_s, "pp_comm": self.pp_comm_s,
                "dp_comm": self.dp_comm_s, "ep_comm": self.ep_comm_s, "cp_comm": self.cp_comm_s,
                "optimizer": self.optimizer_s}

    def as_dict(self) -> dict:
        p = self.plan
        return {"tp": p.tp, "pp": p.pp, "dp": p.dp, "cp": p.cp, "ep": p.ep, "vpp": p.vpp, "sp": p.sp,
                "zero": p.zero, "recompute": p.recompute, "micro_batch": p.micro_batch,
                "global_batch": p.global_batch, "n_micro": p.n_micro, "seq": self.seq,
                "time_s": self.time_s, "tokens_per_s": self.tokens_per_s,
                "peak_memory_bytes": self.peak_memory_bytes, "fits": self.fits,
                "model_flops_per_gpu_s": self.model_flops_per_gpu_s,
                "hardware_flops_per_gpu_s": self.hardware_flops_per_gpu_s, "mfu": self.mfu,
                "time_terms_s": self.terms(), "memory_bytes": self.memory.as_dict()}


# --------------------------------------------------------------------------------------------
# validation


def validate_plan(plan: ParallelPlan, model: ModelConfig, system: System, seq: int) -> None:
    """One-line errors for plans that cannot run."""
    for name in ("tp", "pp", "dp", "cp", "ep", "micro_batch", "global_batch", "vpp"):
        v = getattr(plan, name)
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise RoofplanError(f"--{name.replace('_', '-')} must be a positive integer (got {v})")
    if plan.recompute not in RECOMPUTE:
        raise RoofplanError(f"--recompute '{plan.recompute}' is unknown; use none, selective or full")
    if plan.zero not in (0, 1, 2, 3):
        raise RoofplanError(f"--zero {plan.zero} is unknown; use 0, 1, 2 or 3")
    if seq < 1:
        raise RoofplanError("--seq must be >= 1 for training")
    if plan.tp > system.gpu_count:
        raise RoofplanError(f"--tp {plan.tp} exceeds the {system.gpu_count} GPUs of a {system.name} node; "
                            f"keep tensor parallelism inside a node (tp <= {system.gpu_count})")
    if model.n_heads % plan.tp or (model.n_kv_heads % plan.tp and plan.tp % model.n_kv_heads):
        raise RoofplanError(f"--tp {plan.tp} does not divide {model.name}'s {model.n_heads} heads / "
                            f"{model.n_kv_heads} KV heads; use a divisor")
    if model.n_layers % (plan.pp * plan.vpp):
        raise RoofplanError(f"--pp {plan.pp} x virtual stages {plan.vpp} does not divide {model.name}'s "
                            f"{model.n_layers} layers; use a divisor")
    if plan.global_batch % (plan.dp * plan.micro_batch):
        raise RoofplanError(f"--global-batch {plan.global_batch} is not a multiple of dp x micro-batch = "
                            f"{plan.dp * plan.micro_batch}; change --global-batch or --micro-batch")
    if plan.vpp > 1 and (plan.pp == 1 or plan.n_micro % plan.pp):
        raise RoofplanError(f"the interleaved schedule needs pp > 1 and micro-batches ({plan.n_micro}) "
                            f"divisible by pp ({plan.pp}); use --vpp 1 or change the batch")
    if plan.ep > 1 and (not model.is_moe or model.n_experts % plan.ep or plan.dp % plan.ep):
        raise RoofplanError(f"--ep {plan.ep} needs an MoE model whose experts and --dp it divides "
                            f"({model.name}: {model.n_experts} experts, dp {plan.dp})")
    if seq % plan.cp:
        raise RoofplanError(f"--cp {plan.cp} does not divide --seq {seq}")
    if seq > model.max_positions:
        raise RoofplanError(f"--seq {seq} exceeds {model.name}'s limit of {model.max_positions}")


# --------------------------------------------------------------------------------------------
# per-layer times from the core


@dataclass(frozen=True)
class StageTimes:
    """Seconds for one micro-batch on one GPU (core time model), by layer kind and stage end."""
    layer_fwd: float          # dense layer, compute only
    layer_bwd: float
    layer_attn_fwd: float     # attention kernel(s) of the forward (selective recompute)
    layer_tp_comm: float      # forward + backward TP collectives of one layer
    moe_fwd: float
    moe_bwd: float
    moe_attn_fwd: float
    moe_tp_comm: float
    embed: float              # embedding forward + backward (first stage)
    head: float               # final norm + LM head + loss, forward + backward (last stage)


def _split(df):
    comm = df["cls"] == "communication"
    return float(df.loc[~comm, "time_s"].sum()), float(df.loc[comm, "time_s"].sum())


SEQUENCE_PARALLEL_OPS = ("attn_norm", "mlp_norm", "residual_add", "residual_add2")


def stage_times(model: ModelConfig, system: System, seq: int, tp: int, micro_batch: int, cp: int,
                ex: ExecutorProfile, kp: KernelProfile, dtype: str = "bf16", sp: bool = False) -> StageTimes:
    """Time one layer (dense and MoE) and the stage ends for a micro-batch through the core.
    With sequence parallelism the norms and residual adds (Megatron's sequence-parallel region,
    Korthikanti et al. 2022 sec. 4.2.2) run on seq / tp tokens per GPU."""
    s_local = seq // cp
    job = Job(phase="train", batch=micro_batch, seq=s_local, tp=tp, micro_batch=micro_batch, dtype=dtype)
    T = micro_batch * s_local
    out = {}
    for moe, key in ((False, "layer"), (True, "moe")):
        if (moe and not model.is_moe) or (not moe and model.n_moe_layers == model.n_layers):
            out.update({f"{key}_fwd": 0.0, f"{key}_bwd": 0.0, f"{key}_attn_fwd": 0.0, f"{key}_tp_comm": 0.0})
            continue
        fwd = layer_forward_ops(model, job, ex, moe, 1, tokens=T, batch=micro_batch, q_len=s_local,
                                kv_len=0, prefix="layer.")
        # context parallel: local queries attend to the keys of all cp chunks
        fwd = [replace(o, flops=o.flops * cp) if o.cls == "attention" else o for o in fwd]
        if sp and tp > 1:
            fwd = [replace(o, flops=o.flops / tp, bytes=o.bytes / tp) if o.name.endswith(SEQUENCE_PARALLEL_OPS) else o
                   for o in fwd]
        bwd = backward_ops(fwd, job, ex.backward_memory_ratio)
        df_f, df_b = time_ops(fwd, system, kp, ex, tp), time_ops(bwd, system, kp, ex, tp)
        (cf, mf), (cb, mb) = _split(df_f), _split(df_b)
        out[f"{key}_fwd"], out[f"{key}_bwd"], out[f"{key}_tp_comm"] = cf, cb, mf + mb
        attn = df_f["name"].str.endswith(ATTENTION_OPS)
        out[f"{key}_attn_fwd"] = float(df_f.loc[attn, "time_s"].sum())
    ends_f = forward_ops(model, job, ex, layers=0, batch=micro_batch, embed=True, head=True)
    emb = [o for o in ends_f if o.cls == "embedding"]
    head = [o for o in ends_f if o.cls != "embedding"]
    emb_ops = emb + backward_ops(emb, job, ex.backward_memory_ratio)
    head_ops = head + loss_ops(model, job, T) + backward_ops(head, job, ex.backward_memory_ratio)
    return StageTimes(**out, embed=float(time_ops(emb_ops, system, kp, ex, tp)["time_s"].sum()),
                      head=float(time_ops(head_ops, system, kp, ex, tp)["time_s"].sum()))


# --------------------------------------------------------------------------------------------
# parameters, FLOPs and memory


def _param_split(model: ModelConfig) -> tuple[float, float, float]:
    """(non-expert params per layer averaged over layers, expert params per layer averaged,
    embedding + head params)."""
    dense, moe = model.n_layers - model.n_moe_layers, model.n_moe_layers
    expert = sum(l.params for l in model.layer_linears(True) if l.moe) if model.is_moe else 0
    total_layers = dense * model.layer_params(False) + moe * model.layer_params(True)
    return (total_layers - moe * expert) / model.n_layers, moe * expert / model.n_layers, \
        float(model.embedding_params + model.head_params)


def stage_params(model: ModelConfig, tp, pp, ep):
    """Parameters on one GPU of the first pipeline stage (embedding there; with pp == 1 the head
    too). Vectorised over tp, pp, ep."""
    per_layer, expert_per_layer, ends = _param_split(model)
    pp = np.asarray(pp)
    layers = model.n_layers / pp
    ends_here = np.where(pp == 1, ends, max(model.embedding_params, model.head_params))
    return (layers * (per_layer + expert_per_layer / np.asarray(ep)) + ends_here) / np.asarray(tp)


def megatron_convention_forward_flops(model: ModelConfig, seq: int, sequences: int = 1) -> tuple[float, float, float]:
    """(forward FLOPs, forward FLOPs of the layers, of the attention kernels) for `sequences`
    sequences of the whole model, attention counted as the full square (Megatron convention:
    2x the core's causal count)."""
    job = Job(phase="train", batch=1, seq=seq, micro_batch=1)
    ex = load_executor_profile("default")
    ops = forward_ops(model, job, ex, batch=1)
    attn = sum(2 * o.flops * o.count for o in ops if o.cls == "attention")
    layers = sum(o.flops * o.count for o in ops if o.cls == "gemm" and o.name.startswith(("layer.", "moe_layer."))) + attn
    total = sum(o.flops * o.count for o in ops if o.cls == "gemm") + attn
    return total * sequences, layers * sequences, attn * sequences


def train_flops(model: ModelConfig, seq: int, global_batch: int, recompute: str) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one step: 3 x forward; + recomputed forward."""
    fwd, layers, attn = megatron_convention_forward_flops(model, seq, global_batch)
    extra = {"none": 0.0, "selective": attn, "full": layers}[recompute]
    return 3 * fwd, 3 * fwd + extra


def korthikanti_activation_bytes_per_layer(s, b, h, a, t=1, sp=False, recompute="none"):
    """Activation bytes one GPT layer keeps for backward (Korthikanti et al. 2022, Table 2; fp16
    activations, 1-byte dropout masks). Vectorised."""
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


def activation_bytes_per_layer(model: ModelConfig, seq_local, micro_batch, tp, sp, recompute, ex: ExecutorProfile):
    """Saved activations of one layer for one micro-batch on one GPU (vectorised over
    micro_batch, tp, sp; seq_local = seq / cp)."""
    if _is_gpt_style(model):
        return korthikanti_activation_bytes_per_layer(seq_local, micro_batch, model.hidden, model.n_heads,
                                                      tp, sp, recompute)
    tp, sp, mb = np.asarray(tp), np.asarray(sp, bool), np.asarray(micro_batch, float)
    tokens = mb * np.asarray(seq_local, float)
    if recompute == "full":
        return tokens * ex.train_residual_bytes * model.hidden / np.where(sp, tp, 1)
    moe_frac = model.n_moe_layers / model.n_layers
    out = np.zeros(np.broadcast(tp, sp).shape)
    for t in np.unique(tp):
        job = Job(phase="train", batch=1, seq=1, tp=int(t), recompute=recompute)
        job1 = replace(job, tp=1)
        def per_tok(j):
            return ((1 - moe_frac) * saved_activation_bytes_per_token_layer(model, j, ex, False)
                    + moe_frac * saved_activation_bytes_per_token_layer(model, j, ex, True))
        val = np.where(sp, per_tok(job1) / t, per_tok(job))
        out = np.where(tp == t, val, out)
    return tokens * out


def training_memory(model: ModelConfig, plan: ParallelPlan, seq: int, ex: ExecutorProfile) -> MemoryBreakdown:
    """Per-GPU memory of the plan's fullest stage (see module doc)."""
    d = memory_terms(model, seq, ex, plan.tp, plan.pp, plan.dp, plan.cp, plan.ep, plan.micro_batch,
                     plan.n_micro, plan.vpp, plan.sp, plan.zero, plan.recompute)
    return MemoryBreakdown(**{k: float(v) for k, v in d.items()})


def memory_terms(model, seq, ex, tp, pp, dp, cp, ep, micro_batch, n_micro, vpp, sp, zero, recompute):
    """Vectorised memory terms (dict of arrays) -> MemoryBreakdown fields."""
    tp, pp, dp, cp, ep, mb, m, v, zero = (np.asarray(x) for x in (tp, pp, dp, cp, ep, micro_batch, n_micro, vpp, zero))
    P = stage_params(model, tp, pp, ep)
    a = DTYPE_BYTES["bf16"]
    # ZeRO-3 gathers each layer's full (tp-sharded) weights just in time: the layer in use and the
    # prefetched next one are resident in bf16 besides the shard
    per_layer, expert_per_layer, _ = _param_split(model)
    gathered = 2 * (per_layer + expert_per_layer / ep) / tp * a
    weights = np.where(zero >= 3, P * a / dp + gathered, P * a)
    grads = P * GRAD_BYTES / np.where(zero >= 2, dp, 1)
    optimizer = P * MASTER_ADAM_BYTES / np.where(zero >= 1, dp, 1)
    s_local = seq // cp
    per_layer = activation_bytes_per_layer(model, s_local, mb, tp, sp, recompute, ex)
    layers_stage = model.n_layers / pp
    in_flight = np.minimum(pp, m) * np.where(v > 1, 1 + (pp - 1) / (pp * v), 1.0)
    acts = per_layer * layers_stage * in_flight
    if recompute == "full":   # the layer being recomputed holds its full activations once
        acts = acts + activation_bytes_per_layer(model, s_local, mb, tp, sp, "none", ex)
    # logits + fp32 log-probs + gradient at the loss of the last stage (with pp == 1, this GPU)
    loss = np.where(pp == 1, mb * s_local * model.vocab / tp * 10.0, 0.0)
    return {"weights": weights, "gradients": grads, "optimizer": optimizer, "activations": acts + loss,
            "kv_cache": np.zeros_like(weights), "workspace": np.full_like(weights, ex.workspace_bytes, dtype=float)}


# --------------------------------------------------------------------------------------------
# time


def step_time_terms(model: ModelConfig, system: System, seq: int, st: StageTimes, tp, pp, dp, cp, ep,
                    micro_batch, n_micro, vpp, zero, recompute: str, overlap_grad_reduce, grad_reduce_bytes,
                    optimizer_s_per_param):
    """Vectorised step-time terms (seconds) for plans that share `st` (same tp, micro-batch, cp)."""
    tp, pp, dp, cp, ep, mb, m, v, zero = (np.asarray(x) for x in (tp, pp, dp, cp, ep, micro_batch, n_micro, vpp, zero))
    a = DTYPE_BYTES["bf16"]
    L = model.n_layers
    moe_frac = model.n_moe_layers / L
    layers_stage = L / pp
    rec = {"none": 0.0, "selective": 1.0, "full": 1.0}[recompute]
    layer_rec = st.layer_fwd if recompute == "full" else st.layer_attn_fwd
    moe_rec = st.moe_fwd if recompute == "full" else st.moe_attn_fwd
    per_layer = (1 - moe_frac) * (st.layer_fwd + st.layer_bwd) + moe_frac * (st.moe_fwd + st.moe_bwd)
    per_layer_rec = rec * ((1 - moe_frac) * layer_rec + moe_frac * moe_rec)
    per_layer_tp = (1 - moe_frac) * st.layer_tp_comm + moe_frac * st.moe_tp_comm
    ends = np.where(pp == 1, st.embed + st.head, max(st.embed, st.head))
    t_mb_compute = layers_stage * (per_layer + per_layer_rec) + ends
    # forward has 2 of the layer's 4 TP collectives; full recompute repeats the forward's
    t_mb_tp = layers_stage * per_layer_tp * (1.5 if recompute == "full" else 1.0)
    # MoE expert parallelism: dispatch + combine all-to-all, forward and backward
    tokens = mb * seq / cp
    a2a_bytes = tokens * model.top_k * model.hidden * a / tp if model.is_moe else 0.0
    ep_rpn = np.minimum(ep, np.maximum(1, system.gpu_count // tp))
    t_a2a = collective_time("all_to_all", a2a_bytes, ep, system, ep_rpn) if model.is_moe else 0.0
    t_mb_ep = layers_stage * moe_frac * 4 * t_a2a
    # context parallel: K and V of the other chunks (ring), forward + backward, overlapped with attention
    kv_bytes = tokens * 2 * model.n_kv_heads * model.head_dim / tp * a
    cp_rpn = np.minimum(cp, np.maximum(1, system.gpu_count // tp))
    t_cp = collective_time("all_gather", kv_bytes * cp, cp, system, cp_rpn)
    attn_t = (1 - moe_frac) * st.layer_attn_fwd + moe_frac * st.moe_attn_fwd
    t_mb_cp = layers_stage * np.maximum(0.0, 3 * t_cp - 3.5 * attn_t)
    t_mb = t_mb_compute + t_mb_tp + t_mb_ep + t_mb_cp
    compute = m * t_mb_compute
    recompute_s = m * layers_stage * per_layer_rec
    bubble = (pp - 1) / v * t_mb
    # pipeline p2p: one micro-batch's boundary activation (scatter-gather: / tp)
    p2p_bytes = tokens * model.hidden * a / tp
    pp_inner = tp * dp * cp
    pp_rpn = np.where(pp_inner >= system.gpu_count, 1, 2)
    t_send = collective_time("p2p", p2p_bytes, np.where(pp > 1, 2, 1), system, pp_rpn)
    pp_comm = np.where(pp > 1, 2 * v * m * t_send + 2 * (pp - 1) * t_send, 0.0)
    # data parallel gradients of this stage (non-expert over dp, expert over dp / ep)
    P = stage_params(model, tp, pp, ep)
    P_expert = stage_params(model, tp, pp, ep) - stage_params(model, tp, pp, np.inf)  # experts on this GPU
    P_dense = P - P_expert
    dp_inner = tp * cp
    dp_rpn = np.minimum(dp, np.maximum(1, system.gpu_count // dp_inner))
    # expert weights are replicated over dp / ep ranks only (their ranks are tp x ep apart)
    edp = np.maximum(dp // ep, 1)
    edp_rpn = np.minimum(edp, np.maximum(1, system.gpu_count // (dp_inner * ep)))

    def reduce_time(kind, bytes_per_param):
        return (collective_time(kind, P_dense * bytes_per_param, dp, system, dp_rpn)
                + np.where(P_expert > 0, collective_time(kind, P_expert * bytes_per_param, edp, system, edp_rpn), 0.0))
    t_ar = reduce_time("all_reduce", grad_reduce_bytes)
    t_rs = reduce_time("reduce_scatter", grad_reduce_bytes)
    t_ag = reduce_time("all_gather", a)
    t_dp = np.where(zero == 0, t_ar, t_rs + t_ag)
    last_bwd = layers_stage * (1 - moe_frac) * st.layer_bwd + layers_stage * moe_frac * st.moe_bwd
    exposed = np.where(overlap_grad_reduce, np.maximum(0.0, t_dp - last_bwd), t_dp)
    # ZeRO-3: parameters gathered for forward and backward of every micro-batch, prefetched
    z3 = np.where(zero >= 3, m * np.maximum(0.0, 2 * t_ag + t_rs - t_mb_compute), 0.0)
    dp_comm = np.where(dp > 1, exposed + z3, 0.0)
    shard = np.where(zero >= 1, dp, 1)
    optimizer = optimizer_s_per_param * P / shard
    tp_comm = m * t_mb_tp
    ep_comm = m * t_mb_ep
    cp_comm = m * t_mb_cp
    total = compute + tp_comm + ep_comm + cp_comm + bubble + pp_comm + dp_comm + optimizer
    return {"time": total, "compute": compute, "recompute": recompute_s, "bubble": bubble, "tp_comm": tp_comm,
            "pp_comm": pp_comm, "dp_comm": dp_comm, "ep_comm": ep_comm, "cp_comm": cp_comm,
            "optimizer": optimizer}


def optimizer_seconds_per_param(model: ModelConfig, system: System, ex: ExecutorProfile, kp: KernelProfile) -> float:
    """AdamW + weight recast time per parameter (core optimizer ops, timed at 1e9 parameters: the
    step is bandwidth bound and linear in parameters at that size)."""
    job = Job(phase="train", batch=1, seq=1)
    n = 1e9
    return float(time_ops(optimizer_ops(model, job, n), system, kp, ex)["time_s"].sum()) / n


def train_step(model: ModelConfig, system: System, plan: ParallelPlan, seq: int,
               executor: ExecutorProfile | None = None, kernels: KernelProfile | None = None) -> TrainStep:
    """Time and memory of one training step of `plan` (see module doc)."""
    validate_plan(plan, model, system, seq)
    ex = executor or load_executor_profile("default")
    kp = kernels or load_kernel_profile(system.gpu.name)
    st = stage_times(model, system, seq, plan.tp, plan.micro_batch, plan.cp, ex, kp, plan.dtype, plan.sp)
    t = step_time_terms(model, system, seq, st, plan.tp, plan.pp, plan.dp, plan.cp, plan.ep, plan.micro_batch,
                        plan.n_micro, plan.vpp, plan.zero, plan.recompute, plan.overlap_grad_reduce,
                        plan.grad_reduce_bytes, optimizer_seconds_per_param(model, system, ex, kp))
    mf, hf = train_flops(model, seq, plan.global_batch, plan.recompute)
    f = {k: float(v) for k, v in t.items()}
    return TrainStep(plan=plan, seq=seq, time_s=f["time"], compute_s=f["compute"], recompute_s=f["recompute"],
                     bubble_s=f["bubble"], tp_comm_s=f["tp_comm"], pp_comm_s=f["pp_comm"],
                     dp_comm_s=f["dp_comm"], ep_comm_s=f["ep_comm"], cp_comm_s=f["cp_comm"],
                     optimizer_s=f["optimizer"], memory=training_memory(model, plan, seq, ex),
                     model_flops=mf, hardware_flops=hf, peak_flops=system.gpu.peak_flops(plan.dtype),
                     mem_capacity_bytes=system.gpu.mem_bytes)


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
