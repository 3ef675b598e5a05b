"""The step assembler: op times -> one step's time, its bound and its breakdown. Every front end
(`predict`, `predict_many` and the sweeps, `whatif`, the serving simulator, the parallelism and
fleet planners) calls these functions, so one configuration gets one number whichever way it is
asked for. Everything here is vectorised: numbers may be numpy arrays of configurations.

Two lanes (`lanes`): the host issues the ops in order, spending its dispatch cost on each (per op
class, per kernel launch, per decoder layer, per step; `op_host_s`, the executor profile), and the
device runs each kernel once it is issued and the previous kernel is done. A CUDA graph has no
host cost: the step is the sum of kernel times. An eager framework at small sizes is host-bound.

Inference (prefill, decode), per GPU (`inference_cost`):
  compute   = the later lane end: kernels from the roofline (simulator.core.roofline), host from
              the executor; decode also pays the attention plan the backend builds per new KV length
  offload   layer-streamed weights: `stream_schedule` (double buffering: one fill + n x max(compute,
            copy) when overlapped, n x (compute + copy) when not)
  pipeline  one request crosses all pp stages in turn: pp x stage + (pp - 1) activation hops
  step      + the executor's fixed host time per step

Training (`train_terms`, any tp, pp, dp, cp, ep, sp, vpp, ZeRO, recompute, LoRA; one GPU is the
plan tp = pp = dp = 1). Per micro-batch on the busiest stage (Narayanan et al. 2021, sec. 2.2, 3):
  c         layers x (forward + backward + recompute) + stage ends (embedding, head, loss); with
            an eager executor the two lanes of those runs (forward ops under autograd, one
            backward node per forward kernel)
  s         c + the serial collectives: TP (2 + 2 per layer, Shoeybi et al. 2019; with SP the same
            volume as all-gather + reduce-scatter), EP all-to-alls, CP K/V exchange
  z         ZeRO-3 parameter traffic on the communication stream: all-gather for the forward and
            the backward, reduce-scatter of the gradients (prefetched: it overlaps s)
  t_mb      max(s, z)
Two streams, placed once each (a timeline, so faster hardware can never make a step slower):
  compute stream  m micro-batches of t_mb
  comm stream     m x z, then the data-parallel gradient reduction t_dp, which may start when the
                  last micro-batch's backward starts (overlap_grad_reduce) or after it
  sync      = max(m t_mb, (m - 1) t_mb + (s - last backward) + t_dp, m z + t_dp)
  step      = sync + bubble (pp - 1)/v x t_mb + pipeline p2p + optimizer
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from simulator.core.comm import collective_time
from simulator.core.constants import GRAD_REDUCE_BYTES, RECAST_TRAFFIC_BYTES
from simulator.core.memory import (MemoryBreakdown, inference_memory, param_split, stage_layers, stage_params,
                                   trainable_fraction, training_memory, weight_params_per_gpu)
from simulator.core.models import ModelConfig
from simulator.core.ops import Op, backward_ops, forward_ops, layer_forward_ops, loss_ops, optimizer_ops
from simulator.core.profiles import ExecutorProfile, KernelProfile
from simulator.core.roofline import op_gpu_time_array, op_host_s
from simulator.core.specs import System
from simulator.core.units import DTYPE_BYTES
from simulator.core.workload import Job

# the order ties between bounds resolve in (first wins)
BOUNDS = ("communication", "compute", "host", "memory")
TRAIN_TERMS = ("compute", "recompute", "bubble", "tp_comm", "pp_comm", "dp_comm", "ep_comm", "cp_comm", "optimizer")


@dataclass(frozen=True)
class StepCost:
    """One step of one or many configurations (arrays broadcast to one shape; SI units).

    `time_by_resource` splits the step's wall time by what it waits on (compute, memory, host,
    communication, transfer, bubble); `time_by_term` names the training terms. Costs add: the
    sum of two StepCosts is the cost of running one step after the other (peak memory: the
    larger)."""
    time_s: np.ndarray
    bound: np.ndarray                              # labels from BOUNDS or "transfer"
    memory: MemoryBreakdown
    time_by_resource: dict = field(default_factory=dict)
    time_by_term: dict = field(default_factory=dict)
    transfer_time_s: np.ndarray | float = 0.0
    host_time_s: np.ndarray | float = 0.0          # the host lane: CPU time to issue the step
    device_busy_s: np.ndarray | float = 0.0        # the device lanes: kernel and collective time
    critical_path: tuple = ()                      # per op segment: which lane set the pace (one config)

    @property
    def peak_memory_bytes(self):
        return self.memory.total

    def __add__(self, other: "StepCost") -> "StepCost":
        def add(a: dict, b: dict) -> dict:
            return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in dict.fromkeys([*a, *b])}
        mem = self.memory if np.all(self.memory.total >= other.memory.total) else other.memory
        res = add(self.time_by_resource, other.time_by_resource)
        return StepCost(time_s=self.time_s + other.time_s, bound=_bound_of(res, self.time_s + other.time_s),
                        memory=mem, time_by_resource=res, time_by_term=add(self.time_by_term, other.time_by_term),
                        transfer_time_s=self.transfer_time_s + other.transfer_time_s)


def _bound_of(by_resource: dict, time_s):
    keys = [k for k in BOUNDS if k in by_resource]
    if not keys:
        return np.asarray("compute", dtype=object)
    stacked = np.stack(np.broadcast_arrays(*[np.asarray(by_resource[k], float) for k in keys]))
    return np.asarray(keys, dtype=object)[np.argmax(stacked, axis=0)]


# ---------------------------------------------------------------------------------------------
# op timing


def stream_schedule(layer_compute, layer_transfer, n_layers, overlap: bool):
    """Layer-streamed weights with double buffering: the copy of layer i+1 overlaps the compute
    of layer i, so the step costs one fill + (n - 1) x max(compute, copy) + the last compute;
    without overlap the two add up. Vectorised."""
    if not overlap:
        return n_layers * (layer_compute + layer_transfer)
    return layer_transfer + (n_layers - 1) * np.maximum(layer_compute, layer_transfer) + layer_compute


def h2d_Bps(system: System, kp: KernelProfile, ex: ExecutorProfile, host_memory: str) -> float:
    """Host -> GPU copy bandwidth: pinned copies run at the link's achieved efficiency, pageable
    ones are bound by the host's staging copy; both as the kernel profile microbenchmarked them,
    times the executor's copy_efficiency_scale (how its own copies compare)."""
    if host_memory == "pageable":
        return min(kp.h2d_pageable_Bps, system.host_link.bw_Bps) * ex.copy_efficiency_scale
    return system.host_link.bw_Bps * kp.h2d_pinned_eff * ex.copy_efficiency_scale


# ---------------------------------------------------------------------------------------------
# inference


@dataclass(frozen=True)
class OpRow:
    """One op's per-step totals (arrays when the job is)."""
    name: str
    cls: str
    pass_: str
    count: int
    flops: object
    bytes: object
    kernels: object
    gpu_time_s: object
    host_time_s: object
    time_s: object
    bound: object


@dataclass(frozen=True)
class Lane:
    """A run of ops on the two lanes, reduced to what repeating or chaining it needs (see
    `lanes`): device seconds D, host seconds H, and A = max_j (h_1 + .. + h_j + d_j + .. + d_n),
    the latest the run's last kernel can end after its first op starts being issued. The d_j
    may be numpy arrays (one per configuration)."""
    D: object = 0.0
    H: float = 0.0
    A: object = 0.0

    @staticmethod
    def of(hs, ds) -> "Lane":
        D, H = sum(ds, 0.0), float(sum(hs))
        A, Hj, suffix = D, 0.0, D        # A >= D: the chain through every kernel
        for h, d in zip(hs, ds):
            Hj += h
            A = np.maximum(A, Hj + suffix)
            suffix = suffix - d
        return Lane(D, H, A)

    def then(self, other: "Lane") -> "Lane":
        """This run followed by `other`."""
        return Lane(self.D + other.D, self.H + other.H, np.maximum(self.A + other.D, self.H + other.A))


def repeat(end, issue, count, lane: Lane):
    """(device end, host issue clock) after `count` repeats of `lane` (vectorised over count):
    the maximum over repeats of a linear function of the repeat index sits at an end, so
    device end = max(end + count D, issue + A + (count - 1) max(H, D)), issue += count H."""
    count = np.asarray(count, float)
    grown = np.maximum(end + count * lane.D, issue + lane.A + (count - 1) * np.maximum(lane.H, lane.D))
    return np.where(count > 0, grown, end), issue + count * lane.H


def lanes(segments, host_start=0.0, trail: list | None = None):
    """Host and device lanes of a sequence of op segments (Lamport-style max-plus timeline).

    The host issues the ops in order, spending h_j on op j; the device runs each kernel when it
    has been issued and the previous kernel has finished: end_j = max(end_{j-1}, issue_j) + d_j.
    A segment is (count, [h_j], [d_j]): its ops repeated `count` times (the decoder layers),
    reduced to a `Lane` and repeated in closed form (`repeat`). With no host cost (a CUDA graph)
    the device end is the sum of the kernel times. Vectorised over the d_j arrays. Returns
    (device end, host end); `trail` collects, per segment, (device seconds, host seconds, device
    seconds spent waiting for the host) for the critical path."""
    end, issue = 0.0, host_start
    for count, hs, ds in segments:
        if not count or not ds:
            if trail is not None:
                trail.append((0.0, 0.0, 0.0))
            continue
        lane, before = Lane.of(hs, ds), end
        end, issue = repeat(end, issue, count, lane)
        if trail is not None:
            trail.append((count * lane.D, count * lane.H, end - before - count * lane.D))
    return end, issue


def inference_cost(model: ModelConfig, system: System, job: Job, ex: ExecutorProfile, kp: KernelProfile,
                   keep_ops: bool = False) -> tuple[StepCost, list[OpRow]]:
    """One prefill or decode step (see module doc). `job.batch`, `.seq`, `.context` may be numpy
    arrays broadcast against each other; every op is evaluated on the axes it depends on. With
    `keep_ops` the per-op rows come back too (for tables and traces)."""
    lps = int(stage_layers(model, job.pp))
    a = DTYPE_BYTES[job.dtype]
    fwd = forward_ops(model, job, ex, layers=lps)
    shape = np.broadcast_shapes(np.shape(job.batch), np.shape(job.seq), np.shape(job.context))
    by_tokens = _token_only_ops(model, job, ex, lps, fwd, shape)
    device = np.zeros(shape)
    by_bound = {b: np.zeros(shape) for b in BOUNDS}
    by_class: dict[str, np.ndarray] = {}
    rows: list[OpRow] = []
    segments: list[list] = []          # [count, host per op, device per op, name], in issue order
    for i, op in enumerate(fwd):
        if i in by_tokens:   # timed once per distinct token count, gathered to every configuration
            unique_op, inverse = by_tokens[i]
            d_u, bound_u = op_gpu_time_array(unique_op, system, kp, ex, job.tp)
            d = np.asarray(d_u, float)[inverse]
            bound = bound_u if isinstance(bound_u, str) else np.asarray(bound_u)[inverse]
        else:
            d, bound = op_gpu_time_array(op, system, kp, ex, job.tp)
            d = np.asarray(d, float)
        h = op_host_s(op, ex)
        layer = op.name.startswith(("layer.", "moe_layer."))
        if not segments or segments[-1][0] != (op.count if layer else 1) or segments[-1][3] != op.name.split(".")[0]:
            # a new segment: a block of decoder layers (with the framework's per-layer cost) or an end op
            segments.append([op.count if layer else 1, [ex.host_per_layer_s] if layer else [], [0.0] if layer else [],
                             op.name.split(".")[0]])
        segments[-1][1].append(h)
        segments[-1][2].append(d)
        t = d * op.count
        device = device + t
        by_class[op.cls] = by_class.get(op.cls, 0.0) + t
        if isinstance(bound, str):
            by_bound[bound] += t
        else:
            in_compute = np.where(bound, t, 0.0)
            by_bound["compute"] += in_compute
            by_bound["memory"] += t - in_compute
        if keep_ops:
            label = bound if isinstance(bound, str) else np.where(bound, "compute", "memory")
            rows.append(OpRow(op.name, op.cls, op.pass_, op.count, op.flops * op.count, op.bytes * op.count,
                              op.kernels * op.count, t, h * op.count, t, label))
    # fixed host work per step before the first kernel: sampling, cache bookkeeping, and in decode
    # the attention graph the backend builds for a KV length it has not seen (one per step)
    host_start = ex.host_overhead_per_step_s + (ex.host_new_shape_s if job.phase == "decode" else 0.0)
    layer_segs = [(c, hs, ds) for c, hs, ds, name in segments if name in ("layer", "moe_layer")]
    trail: list = []
    end_device, end_host = lanes([(c, hs, ds) for c, hs, ds, _ in segments], host_start, trail)
    stage = np.maximum(end_device, end_host)
    # the critical path, segment by segment: the host when the device spent more than a tenth of
    # the segment waiting for it, else the device
    critical = tuple({"segment": name, "count": c,
                      "lane": "host" if float(np.max(wait)) > 0.1 * float(np.max(dev + wait)) else "device",
                      "device_s": dev * job.pp, "host_s": host * job.pp, "device_waited_s": wait * job.pp}
                     for (c, _, _, name), (dev, host, wait) in zip(segments, trail)) if keep_ops else ()
    if keep_ops:   # the host-only work, in issue order, and the host time the device could not hide
        first = {name: next(i for i, r in enumerate(rows) if r.name.startswith(name + ".")) for *_, name in segments
                 if name in ("layer", "moe_layer")}
        for name, i in sorted(first.items(), key=lambda kv: -kv[1]):
            c = rows[i].count
            rows.insert(i, OpRow(f"{name}.python", "host", "fwd", c, 0.0, 0.0, 0, 0.0, ex.host_per_layer_s * c, 0.0,
                                 "host"))
        rows.insert(0, OpRow("step.host", "host", "fwd", 1, 0.0, 0.0, 0, 0.0, host_start, 0.0, "host"))
        rows.append(OpRow("host.exposed", "host", "fwd", 1, 0.0, 0.0, 0, 0.0, 0.0,
                          np.maximum(stage - device, 0.0), "host"))

    transfer = np.zeros(shape)
    if job.offload_weights == "cpu":
        # per layer the slower lane sets the pace; the copies stream beside it
        per_layer = sum(np.maximum(sum(ds), sum(hs)) * c for c, hs, ds in layer_segs) / lps
        layer_time = sum(sum(ds) * c for c, hs, ds in layer_segs)
        other = stage - np.maximum(layer_time, sum(sum(hs) * c for c, hs, ds in layer_segs))
        ends = (model.embedding_params + model.head_params) / job.tp
        layer_bytes = (weight_params_per_gpu(model, job) - ends) / lps * a
        bw = h2d_Bps(system, kp, ex, job.host_memory)
        layer_transfer = layer_bytes / bw + kp.copy_latency_s
        transfer = transfer + layer_transfer * lps
        stage = other + stream_schedule(per_layer, layer_transfer, lps, job.overlap)
        resident_ends = ends * a
        if ex.offload_embeddings:
            # the embedding and the LM head travel too, each before its own use, not overlapped; a
            # head tied to the embedding travels again (accelerate's cpu_offload hooks each module
            # and passes its hooks no tied_params_map, so the lm_head hook copies the shared table)
            tied_head = model.vocab * model.hidden / job.tp if model.tie_embeddings else 0.0
            ends_transfer = (ends + tied_head) * a / bw + 2 * kp.copy_latency_s
            transfer = transfer + ends_transfer
            stage = stage + ends_transfer
            resident_ends = max(model.embedding_params, model.head_params) / job.tp * a
        mem = inference_memory(model, job, ex, weights_on_gpu=False, offload_buffers=2 * layer_bytes + resident_ends)
    else:
        mem = inference_memory(model, job, ex)
    pp_hops = 0.0
    step = stage
    if job.pp > 1:
        # one request traverses all stages in turn; activations hop between GPUs
        hop = (job.batch * (1 if job.phase == "decode" else job.seq) + job.chunk_tokens) * model.hidden * a
        pp_hops = (job.pp - 1) * collective_time("p2p", hop, 2, system, 2)
        step = stage * job.pp + pp_hops
    transfer_exposed = (stage - np.maximum(end_device, end_host)) if job.offload_weights == "cpu" else 0.0
    host_stall = np.maximum(np.maximum(end_device, end_host) - device, 0.0)
    resources = {k: v * job.pp for k, v in by_bound.items()}
    resources["host"] = host_stall * job.pp
    resources["transfer"] = np.maximum(transfer_exposed, 0.0) * job.pp
    resources["communication"] = resources["communication"] + pp_hops
    bound = _bound_of(resources, step)
    if job.offload_weights == "cpu":
        bound = np.where((transfer > 0) & (transfer >= step * 0.5), "transfer", bound).astype(object)
    terms = {k: v * job.pp for k, v in by_class.items()}
    terms.update(host=host_stall * job.pp, transfer=resources["transfer"], pp_comm=pp_hops)
    cost = StepCost(time_s=np.broadcast_to(step, shape), bound=np.broadcast_to(bound, shape),
                    memory=MemoryBreakdown(**{k: np.broadcast_to(np.asarray(v, float), shape)
                                              for k, v in mem.as_dict().items()}),
                    time_by_resource=resources, time_by_term=terms,
                    transfer_time_s=np.broadcast_to(transfer, shape),
                    host_time_s=np.broadcast_to(end_host * job.pp, shape),
                    device_busy_s=np.broadcast_to(device * job.pp + pp_hops, shape), critical_path=critical)
    return cost, rows


def _token_only_ops(model: ModelConfig, vjob: Job, ex: ExecutorProfile, lps: int, fwd, shape) -> dict:
    """Ops whose FLOPs and bytes depend only on the step's token count (prefill: batch x seq,
    decode: batch) -- most of them -- are timed once per distinct count and gathered, instead of
    once per configuration: a sweep of scattered (batch, context) pairs has few distinct batches.
    Which ops qualify is found, not assumed: an op qualifies when two jobs with the same token
    counts but different shapes (prefill: T x 1 vs 1 x T; decode: context 0 vs 1) give it equal
    numbers. Returns {index in fwd: (op on the distinct counts, inverse index into `shape`)}."""
    n = int(np.prod(shape))
    if n < 4096:
        return {}
    B = np.broadcast_to(vjob.batch, shape)
    tokens = B * (np.broadcast_to(vjob.seq, shape) if vjob.phase == "prefill" else 1)
    unique, inverse = np.unique(tokens, return_inverse=True)
    if unique.size * 2 > n:   # too few repeats to pay for np.unique and the gathers
        return {}
    if vjob.phase == "prefill":
        a = forward_ops(model, replace(vjob, batch=unique, seq=np.ones_like(unique)), ex, layers=lps)
        b = forward_ops(model, replace(vjob, batch=np.ones_like(unique), seq=unique), ex, layers=lps)
    else:
        a = forward_ops(model, replace(vjob, batch=unique, context=np.zeros_like(unique)), ex, layers=lps)
        b = forward_ops(model, replace(vjob, batch=unique, context=np.ones_like(unique)), ex, layers=lps)
    if not (len(a) == len(b) == len(fwd)):
        return {}
    out = {}
    for i, (op, x, y) in enumerate(zip(fwd, a, b)):
        full_size = np.shape(op.flops) == shape or np.shape(op.bytes) == shape
        if op.name == x.name == y.name and full_size and np.array_equal(x.flops, y.flops) \
                and np.array_equal(x.bytes, y.bytes) and np.array_equal(x.seq, y.seq):
            out[i] = (x, inverse.reshape(shape))
    return out


# ---------------------------------------------------------------------------------------------
# training: per-layer times of one micro-batch, then the vectorised step


ATTENTION_OPS = ("attention", "attn_qk", "attn_scores", "attn_av")   # what selective recompute redoes
SEQUENCE_PARALLEL_OPS = ("attn_norm", "mlp_norm", "residual_add", "residual_add2")


@dataclass(frozen=True)
class StageTimes:
    """Seconds for one micro-batch on one GPU (core time model), by layer kind and stage end,
    for one (tp, micro-batch, seq, cp, sp, LoRA rank): what the vectorised step shares."""
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
    trainable_fraction: float = 1.0   # trainable / all parameters (LoRA < 1)
    lora_rank: int = 0
    bound_shares: tuple = (("compute", 1.0),)   # share of the GPU time bound by compute / memory / host
    host_free: bool = True            # the executor issues kernels faster than the GPU runs them
    lanes: tuple = ()                 # (name, Lane) of each layer kind's forward, backward and
                                      # recompute runs and of the stage ends (see train_terms)
    step_host_s: float = 0.0          # host work per micro-batch before its first kernel
    optimizer_host_s: float = 0.0     # host time of the optimizer step (a floor under its GPU time)


def stage_ops(model: ModelConfig, job: Job, ex: ExecutorProfile, moe: bool, count: int = 1):
    """(forward, backward) ops of one decoder layer for one training micro-batch of `job`: local
    sequence seq / cp (its queries attend to all cp chunks' keys), the sequence-parallel region
    (norms, residual adds: Korthikanti et al. 2022 sec. 4.2.2) on seq / tp tokens per GPU."""
    s_local = job.seq // job.cp
    mb = job.micro_batch or job.batch
    # training's expert parallelism splits the data-parallel group: each rank computes its own
    # tokens' expert work (balanced routing) with experts split tp ways; the all-to-alls that
    # move tokens to the experts' ranks are train_terms' ep_comm
    ljob = replace(job, batch=mb, seq=s_local, micro_batch=mb, ep=1)
    fwd = layer_forward_ops(model, ljob, ex, moe, count, tokens=mb * s_local, batch=mb, q_len=s_local,
                            kv_len=0, prefix="moe_layer." if moe else "layer.")
    fwd = [replace(o, flops=o.flops * job.cp) if o.cls == "attention" else o for o in fwd]
    if job.sp and job.tp > 1:
        fwd = [replace(o, flops=o.flops / job.tp, bytes=o.bytes / job.tp) if o.name.endswith(SEQUENCE_PARALLEL_OPS)
               else o for o in fwd]
    if ex.autocast_weight_casts and not job.lora_rank:
        linears = [lin for lin in model.layer_linears(moe) if lin.name != "router"]
        fwd = [weight_cast_op(f"{'moe_layer.' if moe else 'layer.'}autocast_weight_cast",
                              model.layer_params(moe) / job.tp, len(linears), count)] + fwd
    return fwd, backward_ops(fwd, ljob, ex)


def weight_cast_op(name: str, params: float, kernels: int, count: int = 1) -> Op:
    """Autocast with fp32 parameters casts each weight to the compute dtype when the forward first
    uses it (torch.autocast; its cache keeps the copy for the backward): read 4 B, write 2 B per
    parameter (RECAST_TRAFFIC_BYTES), one kernel per weight. It replaces the optimizer's recast
    of a bf16 working copy."""
    return Op(name, "elementwise", params, RECAST_TRAFFIC_BYTES * params, count, kernels, kind="cast")


def end_ops(model: ModelConfig, job: Job, ex: ExecutorProfile):
    """(embedding forward + backward, final norm + LM head + loss forward + backward) of one
    micro-batch."""
    s_local = job.seq // job.cp
    mb = job.micro_batch or job.batch
    ljob = replace(job, batch=mb, seq=s_local, micro_batch=mb, ep=1)
    emb = forward_ops(model, ljob, ex, layers=0, batch=mb, embed=True, head=False)
    head = forward_ops(model, ljob, ex, layers=0, batch=mb, embed=False, head=True)
    if ex.autocast_weight_casts and not job.lora_rank:
        head = [weight_cast_op("lm_head.autocast_weight_cast", model.vocab * model.hidden / job.tp, 1)] + head
    return (emb + backward_ops(emb, ljob, ex),
            head + loss_ops(model, ljob, mb * s_local) + backward_ops(head, ljob, ex))


def _timed(ops, system: System, kp: KernelProfile, ex: ExecutorProfile, tp: int):
    """[(op, device seconds per step, GPU bound label)] for scalar ops."""
    out = []
    for op in ops:
        d, bound = op_gpu_time_array(op, system, kp, ex, tp)
        label = bound if isinstance(bound, str) else ("compute" if bound else "memory")
        out.append((op, float(d) * op.count, label))
    return out


def train_host_s(op, ex: ExecutorProfile, backward: bool) -> float:
    """Host seconds to issue a training op: forward ops cost their inference dispatch times the
    autograd-recording factor; each backward node (one per forward kernel) its class's cost."""
    if op.cls == "communication":
        return 0.0
    if backward:
        return op.kernels * ex.host_backward_per_kernel_s.get(op.cls, 0.0)
    return op_host_s(op, ex) * ex.host_autograd_scale


def train_ops_host_s(ops, ex: ExecutorProfile, recompute: str) -> list[float]:
    """Host seconds of each op of one training micro-batch's stage op list (forward, backward,
    recomputed, stage ends; `count` instances each) as the lanes of `stage_times` charge them: a
    layer's backward op costs the autograd nodes of the forward op it mirrors, a stage end's its
    own; under full recompute the layers' ops cost host_recompute_scale x that."""
    fwd = {o.name: o for o in ops if o.pass_ == "fwd"}
    ck = ex.host_recompute_scale if recompute == "full" else 1.0
    out = []
    for o in ops:
        layer = o.name.startswith(("layer.", "moe_layer."))
        if o.pass_ == "fwd" or o.name.endswith(".recompute"):
            h = train_host_s(o, ex, False)
        else:
            h = train_host_s(fwd[o.name.removesuffix(".bwd")], ex, True) if layer else train_host_s(o, ex, True)
        out.append(h * o.count * (ck if layer else 1.0))
    return out


def train_layer_python_s(ex: ExecutorProfile, recompute: str) -> float:
    """Host seconds per layer per micro-batch outside its ops (module calls, autograd engine), as
    the lanes of `stage_times` charge them: the forward's (twice under full recompute) and the
    backward's."""
    fwd = ex.host_per_layer_s * ex.host_autograd_scale
    if recompute == "full":
        return (2 * fwd + ex.host_backward_per_layer_s) * ex.host_recompute_scale
    return fwd + ex.host_backward_per_layer_s


def stage_times(model: ModelConfig, system: System, job: Job, ex: ExecutorProfile, kp: KernelProfile) -> StageTimes:
    """Time one layer (dense and MoE) and the stage ends for a micro-batch of `job` through the
    core op lists and roofline."""
    out = {}
    gpu: dict[str, float] = {}
    lanes: list = []

    def total(timed, comm: bool | None = None):
        return sum(t for op, t, _ in timed if comm is None or (op.cls == "communication") == comm)
    for moe, key in ((False, "layer"), (True, "moe")):
        if (moe and not model.is_moe) or (not moe and model.n_moe_layers == model.n_layers):
            out.update({f"{key}_fwd": 0.0, f"{key}_bwd": 0.0, f"{key}_attn_fwd": 0.0, f"{key}_tp_comm": 0.0})
            continue
        fwd_ops, bwd_ops = stage_ops(model, job, ex, moe)
        fwd, bwd = _timed(fwd_ops, system, kp, ex, job.tp), _timed(bwd_ops, system, kp, ex, job.tp)
        compute_f = [(o, d) for o, d, _ in fwd if o.cls != "communication"]
        compute_b = [(o, d) for o, d, _ in bwd if o.cls != "communication"]
        fh = [ex.host_per_layer_s * ex.host_autograd_scale] + [train_host_s(o, ex, False) for o, _ in compute_f]
        fd = [0.0] + [d for _, d in compute_f]
        # backward nodes mirror the forward ops: op i's backward is issued after op i+1's
        bh = [ex.host_backward_per_layer_s] + [train_host_s(o, ex, True) for o, _ in compute_f[::-1]]
        bd = [0.0] + [d for _, d in compute_b[::-1]] + [0.0] * (len(compute_f) - len(compute_b))
        # a fully recomputed layer runs inside the executor's checkpoint wrapper: its forward, the
        # recomputed forward and its backward cost host_recompute_scale x their ops' host time
        ck = ex.host_recompute_scale
        fwd_ckpt = Lane.of([h * ck for h in fh], fd)
        sel = [(o, d) for o, d in compute_f if o.name.endswith(ATTENTION_OPS)]
        lanes += [(f"{key}_fwd", Lane.of(fh, fd)), (f"{key}_bwd", Lane.of(bh, bd)),
                  (f"{key}_fwd_ckpt", fwd_ckpt), (f"{key}_rec_full", fwd_ckpt),
                  (f"{key}_bwd_ckpt", Lane.of([h * ck for h in bh], bd)),
                  (f"{key}_rec_selective", Lane.of([train_host_s(o, ex, False) for o, _ in sel], [d for _, d in sel]))]
        out[f"{key}_fwd"], out[f"{key}_bwd"] = total(fwd, False), total(bwd, False)
        out[f"{key}_tp_comm"] = total(fwd, True) + total(bwd, True)
        out[f"{key}_attn_fwd"] = sum(t for op, t, _ in fwd if op.name.endswith(ATTENTION_OPS))
        for op, t, label in fwd + bwd:
            if op.cls != "communication":
                gpu[label] = gpu.get(label, 0.0) + t
    emb, head = (_timed(ops, system, kp, ex, job.tp) for ops in end_ops(model, job, ex))
    for op, t, label in emb + head:
        gpu[label] = gpu.get(label, 0.0) + t
    for name, ops in (("embed", emb), ("head", head)):
        lanes.append((name, Lane.of([train_host_s(o, ex, o.pass_ == "bwd") for o, _, _ in ops], [d for _, d, _ in ops])))
    whole = sum(gpu.values())
    shares = tuple((k, v / whole) for k, v in sorted(gpu.items())) if whole > 0 else (("compute", 1.0),)
    host_free = not any(lane.H for _, lane in lanes)
    return StageTimes(**out, embed=total(emb), head=total(head),
                      trainable_fraction=trainable_fraction(model, job.lora_rank, ex, job.lora_targets), lora_rank=job.lora_rank,
                      bound_shares=shares, host_free=host_free, lanes=tuple(lanes),
                      step_host_s=ex.host_overhead_per_step_s, optimizer_host_s=ex.host_optimizer_s)


def optimizer_seconds_per_param(model: ModelConfig, system: System, ex: ExecutorProfile, kp: KernelProfile) -> float:
    """AdamW + weight recast time per parameter (core optimizer ops, timed at 1e9 parameters: the
    step is bandwidth bound and linear in parameters at that size)."""
    n = 1e9
    ops = [o for o in optimizer_ops(model, Job(phase="train", batch=1, seq=1), n)
           if not (ex.autocast_weight_casts and o.name == "optimizer.cast_weights")]
    return sum(t for _, t, _ in _timed(ops, system, kp, ex, 1)) / n


def train_terms(model: ModelConfig, system: System, seq, st: StageTimes, tp, pp, dp, cp, ep, micro_batch, n_micro,
                vpp, zero, recompute: str, overlap_grad_reduce, optimizer_s_per_param,
                grad_reduce_bytes: float = GRAD_REDUCE_BYTES) -> dict:
    """Vectorised training step terms in seconds (see module doc) for plans that share `st` (same
    tp, micro-batch, cp, sp, LoRA rank). Keys: "time" and TRAIN_TERMS, which add up to it, and
    "lanes": (host lane seconds, device busy seconds) of the step."""
    tp, pp, dp, cp, ep, mb, m, v, zero = (np.asarray(x) for x in (tp, pp, dp, cp, ep, micro_batch, n_micro, vpp, zero))
    a = DTYPE_BYTES["bf16"]
    moe_frac = model.n_moe_layers / model.n_layers
    layers = stage_layers(model, pp)
    rec = {"none": 0.0, "selective": 1.0, "full": 1.0}[recompute]
    layer_rec = st.layer_fwd if recompute == "full" else st.layer_attn_fwd
    moe_rec = st.moe_fwd if recompute == "full" else st.moe_attn_fwd
    per_layer = (1 - moe_frac) * (st.layer_fwd + st.layer_bwd) + moe_frac * (st.moe_fwd + st.moe_bwd)
    per_layer_rec = rec * ((1 - moe_frac) * layer_rec + moe_frac * moe_rec)
    per_layer_tp = (1 - moe_frac) * st.layer_tp_comm + moe_frac * st.moe_tp_comm
    ends = np.where(pp == 1, st.embed + st.head, max(st.embed, st.head))
    c = layers * (per_layer + per_layer_rec) + ends
    device_c, host_c = c, 0.0          # a micro-batch's kernel seconds and host issue seconds
    if not st.host_free:
        # an eager executor: the host lane may set the pace (forward layers, then the backward
        # layers with their recomputed forward, then the stage ends)
        ln = dict(st.lanes)
        end, issue = 0.0, st.step_host_s
        ckpt = "_ckpt" if recompute == "full" else ""    # the checkpointed layers' lanes
        for kind, frac in (("layer", 1 - moe_frac), ("moe", moe_frac)):
            if f"{kind}_fwd" in ln:
                end, issue = repeat(end, issue, layers * frac, ln[f"{kind}_fwd{ckpt}"])
        forward_done = np.maximum(end, issue)
        for kind, frac in (("layer", 1 - moe_frac), ("moe", moe_frac)):
            if f"{kind}_bwd" in ln:
                bwd = ln[f"{kind}_bwd{ckpt}"]
                bwd = ln[f"{kind}_rec_{recompute}"].then(bwd) if recompute != "none" else bwd
                end, issue = repeat(end, issue, layers * frac, bwd)
        e, h = ln["embed"], ln["head"]
        ends_lane = np.where(pp == 1, max(e.D, e.H) + max(h.D, h.H), max(max(e.D, e.H), max(h.D, h.H)))
        c = np.maximum(end, issue) + ends_lane
        lane_bwd = np.maximum(end, issue) - forward_done    # the backward layers on the slower lane
        host_c = issue + np.where(pp == 1, e.H + h.H, max(e.H, h.H))
    # forward has 2 of the layer's 4 TP collectives; full recompute repeats the forward's
    t_tp = layers * per_layer_tp * (1.5 if recompute == "full" else 1.0)
    # MoE expert parallelism: dispatch + combine all-to-all, forward and backward
    tokens = mb * np.asarray(seq) / cp
    a2a_bytes = tokens * model.top_k * model.hidden * a / tp if model.is_moe else 0.0
    ep_rpn = np.minimum(ep, np.maximum(1, system.gpu_count // tp))
    t_a2a = collective_time("all_to_all", a2a_bytes, ep, system, ep_rpn) if model.is_moe else 0.0
    t_ep = layers * moe_frac * 4 * t_a2a
    # context parallel: K and V of the other chunks (ring), forward + backward, overlapped with attention
    kv_bytes = tokens * 2 * model.n_kv_heads * model.head_dim / tp * a
    cp_rpn = np.minimum(cp, np.maximum(1, system.gpu_count // tp))
    t_cp_ag = collective_time("all_gather", kv_bytes * cp, cp, system, cp_rpn)
    attn_t = (1 - moe_frac) * st.layer_attn_fwd + moe_frac * st.moe_attn_fwd
    # (an eager executor issues the exchange beside its ops, not hidden behind attention)
    t_cp = layers * np.maximum(0.0, 3 * t_cp_ag - (3.5 * attn_t if st.host_free else 0.0))
    s = c + t_tp + t_ep + t_cp
    # data-parallel gradients of this stage's trainable parameters (non-expert over dp, expert
    # over dp / ep: their replicas are tp x ep apart)
    P = stage_params(model, tp, pp, ep)
    P_expert = P - stage_params(model, tp, pp, np.inf)
    P_dense = (P - P_expert) * st.trainable_fraction
    P_expert = P_expert * st.trainable_fraction
    dp_inner = tp * cp
    dp_rpn = np.minimum(dp, np.maximum(1, system.gpu_count // dp_inner))
    edp = np.maximum(dp // ep, 1)
    edp_rpn = np.minimum(edp, np.maximum(1, system.gpu_count // (dp_inner * ep)))

    def reduce_time(kind, bytes_per_param):
        return (collective_time(kind, P_dense * bytes_per_param, dp, system, dp_rpn)
                + np.where(P_expert > 0, collective_time(kind, P_expert * bytes_per_param, edp, system, edp_rpn), 0.0))
    t_ar = reduce_time("all_reduce", grad_reduce_bytes)
    t_rs = reduce_time("reduce_scatter", grad_reduce_bytes)
    t_ag = reduce_time("all_gather", a)
    many = dp > 1
    # ZeRO 0: all-reduce; 1-2: reduce-scatter + all-gather of the updated weights; 3: the weights
    # are gathered on demand (z below), so only the gradients' reduce-scatter remains
    t_dp = np.where(many, np.where(zero == 0, t_ar, np.where(zero >= 3, t_rs, t_rs + t_ag)), 0.0)
    z = np.where(many & (zero >= 3), 2 * t_ag + t_rs, 0.0)
    t_mb = np.maximum(s, z)
    last_bwd = layers * ((1 - moe_frac) * st.layer_bwd + moe_frac * st.moe_bwd) if st.host_free else lane_bwd
    ready = np.where(overlap_grad_reduce, (m - 1) * t_mb + (s - last_bwd), m * t_mb)
    sync = np.maximum(np.maximum(m * t_mb, ready + t_dp), m * z + t_dp)
    bubble = (pp - 1) / v * t_mb
    # pipeline p2p: one micro-batch's boundary activation (scatter-gather: / tp)
    p2p_bytes = tokens * model.hidden * a / tp
    pp_rpn = np.where(tp * dp * cp >= system.gpu_count, 1, 2)
    t_send = collective_time("p2p", p2p_bytes, np.where(pp > 1, 2, 1), system, pp_rpn)
    pp_comm = np.where(pp > 1, 2 * v * m * t_send + 2 * (pp - 1) * t_send, 0.0)
    optimizer = np.maximum(optimizer_s_per_param * P * st.trainable_fraction / np.where(zero >= 1, dp, 1),
                           st.optimizer_host_s)
    recompute_s = m * layers * per_layer_rec
    terms = {"compute": m * c - recompute_s, "recompute": recompute_s, "bubble": bubble, "tp_comm": m * t_tp,
             "pp_comm": pp_comm, "dp_comm": sync - m * s, "ep_comm": m * t_ep, "cp_comm": m * t_cp,
             "optimizer": optimizer}
    terms["time"] = sync + bubble + pp_comm + optimizer
    # the two lanes' totals (not terms of the sum): CPU time to issue the step, device busy time,
    # and the kernel seconds inside compute + recompute (the rest of those is the device waiting
    # for the host)
    comm = m * (t_tp + t_ep + t_cp) + t_dp + pp_comm
    terms["lanes"] = (m * host_c + st.optimizer_host_s,
                      m * device_c + comm + optimizer_s_per_param * P * st.trainable_fraction / np.where(zero >= 1, dp, 1),
                      m * device_c)
    return terms


def train_cost(model: ModelConfig, system: System, job: Job, ex: ExecutorProfile, kp: KernelProfile,
               st: StageTimes | None = None) -> StepCost:
    """One training step of `job` (any plan; one GPU is tp = pp = dp = 1); `job.overlap` lets the
    gradient reduction run during the last backward."""
    st = st or stage_times(model, system, job, ex, kp)
    mb = job.micro_batch or job.batch
    t = train_terms(model, system, job.seq, st, job.tp, job.pp, job.dp, job.cp, job.ep, mb, job.batch // mb,
                    job.vpp, job.zero, job.recompute, job.overlap, optimizer_seconds_per_param(model, system, ex, kp))
    time_s = t.pop("time")
    host_s, device_s, kernel_s = t.pop("lanes")
    comm = t["tp_comm"] + t["pp_comm"] + t["dp_comm"] + t["ep_comm"] + t["cp_comm"]
    gpu = t["compute"] + t["recompute"]
    waited = np.maximum(gpu - kernel_s, 0.0)     # the device idle while an eager host issues
    resources = {k: (gpu - waited) * share for k, share in st.bound_shares}
    resources["host"] = resources.get("host", 0.0) + waited
    resources["memory"] = resources.get("memory", 0.0) + t["optimizer"]   # AdamW streams the states
    resources["communication"] = comm
    resources["bubble"] = t["bubble"]
    return StepCost(time_s=time_s, bound=_bound_of(resources, time_s), memory=training_memory(model, job, ex),
                    time_by_resource=resources, time_by_term=t, host_time_s=host_s, device_busy_s=device_s)


__all__ = ["BOUNDS", "TRAIN_TERMS", "StepCost", "StageTimes", "OpRow", "inference_cost", "train_cost", "train_terms",
           "stage_times", "stage_ops", "end_ops", "stream_schedule", "h2d_Bps",
           "optimizer_seconds_per_param", "param_split"]


# ---------------------------------------------------------------------------------------------
# FLOPs


def megatron_convention_forward_flops(model: ModelConfig, seq: int, sequences: int = 1) -> tuple[float, float, float]:
    """(forward FLOPs, forward FLOPs of the layers, of the attention kernels) for `sequences`
    sequences of the whole model, attention counted as the full square (Megatron convention:
    2x the core's causal count)."""
    job = Job(phase="train", batch=1, seq=seq, micro_batch=1)
    # FLOPs do not depend on how an executor fuses kernels: any flash-attention profile counts them
    ops = forward_ops(model, job, ExecutorProfile(name="flops", description="FLOP counting"), batch=1)
    attn = sum(2 * o.flops * o.count for o in ops if o.cls == "attention")
    layers = sum(o.flops * o.count for o in ops if o.cls == "gemm" and o.name.startswith(("layer.", "moe_layer."))) + attn
    total = sum(o.flops * o.count for o in ops if o.cls == "gemm") + attn
    return total * sequences, layers * sequences, attn * sequences


def train_flops(model: ModelConfig, seq: int, global_batch: int, recompute: str, lora_rank: int = 0) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one training step over all GPUs (Narayanan et al. 2021,
    eq. 3: model FLOPs = 3 x forward, the attention as the full square; for GPT 72 B s l h^2
    (1 + s/6h + V/12lh)); hardware FLOPs add the recomputed forward (full: the layers, selective:
    the attention). LoRA's frozen weights skip the weight gradient: 2 x forward."""
    fwd, layers, attn = megatron_convention_forward_flops(model, seq, global_batch)
    extra = {"none": 0.0, "selective": attn, "full": layers}[recompute]
    model_flops = (2 if lora_rank else 3) * fwd
    return model_flops, model_flops + extra
