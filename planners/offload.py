"""Offload planner: where weights, KV cache, activations, gradients and optimizer states live
(GPU / CPU memory / NVMe), how big the batch is, and where attention and the optimizer step
run, so that one GPU serves or fine-tunes a model larger than its memory as fast as possible.

Model (FlexGen's LP, Sheng et al. ICML 2023 section 4.2, extended to training as in
ZeRO-Offload / ZeRO-Infinity / Fuyou): every transformer layer gets the same placement
fractions; a layer step overlaps all resources, so

    T_layer = max(GPU compute, CPU compute, PCIe h2d, PCIe d2h, NVMe read, NVMe write, CPU memory)

linearised with an epigraph variable (T_layer >= each resource time). Each resource time is
linear in the placement fractions once the integer choices (GPU batch `gbs`, number of GPU
batches `nb` in FlexGen's zig-zag block, attention on GPU or CPU, training micro-batch) are
fixed, so the planner enumerates those outside and solves one small LP per choice with
`planners.solver.solve` (HiGHS, CBC fallback). GPU compute comes from the core time model
(`simulator.core.ops.forward_ops` / `backward_ops` / `optimizer_ops` timed by
`simulator.core.roofline.time_ops`), so the planner and `roofplan predict` agree.

Inference (phase decode = a whole generation, FlexGen's setting; phase prefill = prompts only):
  per layer, per block of bls = gbs x nb sequences, prompt s, generation n, context c = s + n/2
  W = layer weight bytes, K = KV bytes per token per layer, H = hidden bytes per token
  h2d   = (wc + wd) W + nb [(hc + hd) H gbs q + (cc + cd) K gbs c (attention on GPU)
                            + (cc + cd) H gbs (attention on CPU: its output)]
  d2h   = nb [(hc + hd) H gbs q + (cc + cd) K gbs q + (cc + cd) H gbs (attention on CPU: q)]
  disk read  = wd W + nb [cd K gbs c + hd H gbs q],  disk write = nb [cd K gbs q + hd H gbs q]
  GPU   = nb [t_rest(gbs) + t_attn(gbs) (cg if attention on CPU else 1)]
  CPU   = nb (cc + cd) K gbs c / cpu attention rate + h2d   (attention on CPU: the host threads
          that run it also issue the h2d copies, so the two serialise; FlexGen's fitted model
          has the same structure, Tgen = ctog + max(...), experimental/cost_model.py)
  (q = tokens per sequence this step: s in prefill, 1 in decode; prefill attention always on GPU)
  a pass over the L layers is double-buffered, the schedule predict() uses for weight streaming
  (simulator.core.step.stream_schedule): fill (layer 0's copies) + (L - 1) T + last compute;
  total = pass_prefill + (n - 1) pass_decode + head/embedding per step; throughput = bls n / total
  (FlexGen's "generation throughput": generated tokens over prefill + decode time).

Training (one optimizer step of `batch` sequences of `seq` tokens, full activation
checkpointing as Fuyou and ZeRO-Infinity use): per layer with P params,
  weights w{g,c,d} (2 B/param), fp32 master + Adam m, v o{g,c,d} (12 B/param), checkpoints a{g,c}
  h2d   = 2 (wc + wd) W + ac C + 2 P u,  u >= wg - og (fresh weights from a CPU update)
  d2h   = 2 P (oc + od) (fp16 gradients to the CPU optimizer) + ac C
  disk read = 2 wd W + 12 P od,  disk write = 2 P wd + 12 P od
  GPU   = t_fwd + t_bwd + t_recompute + og t_adam_gpu,  CPU = (oc + od) P / cpu Adam rate
  (C = checkpoint bytes per layer = tokens x hidden x 2 B). The CPU Adam rate is the measured
  `cpu.adam_params_per_s` of the reference host (16 vCPUs) scaled by core count and capped by
  host memory bandwidth / 28 B per parameter.

Memory (every bound binds at its own peak): GPU holds its share of everything plus double
buffers for streamed layers, the working activations of one GPU batch and the executor's
workspace; the CPU holds its share plus pinned staging buffers for NVMe traffic; NVMe its share.
When no choice fits, an elastic LP finds the least extra GPU / host / NVMe memory that would
make the smallest plan fit, and the error names the binding constraint and by how much.

JSON plan (schema "roofplan.offload-plan/1", stable; the executor runs from it):
  schema, model, hardware, phase, dtype, objective
  workload:   {prompt_len, gen_len, seq, batch}
  schedule:   {gpu_batch_size, num_gpu_batches, block_size, order: "zig-zag"|"layer-by-layer"}
  placement:  {weights, kv_cache, activations[, optimizer_states, checkpoints]}: {gpu, cpu, nvme}
              fractions in [0, 1] summing to 1 (FlexGen's --percent: wg wc cg cc hg hc)
  attention:  "gpu" | "cpu"          optimizer_step: {gpu, cpu} fractions (train) or null
  pinned_buffer_bytes, memory_bytes: {gpu, host, nvme} (peak, SI bytes)
  predicted:  {time_s, tokens_per_s, latency_s, prefill_s, decode_s, model_tflops_per_s,
              hardware_tflops_per_s (train: + the full-recompute forward, 8 instead of 6 FLOP/param/token)}
  stages:     [{stage, count, layer_time_s, resources_s: {gpu, cpu, h2d, d2h, disk_read,
              disk_write, cpu_mem}, utilisation: {...}, binds}]
  binds:      the resource that binds the longest stage
  solver:     {name, status, gap, time_s, lps_solved}
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from simulator.core.constants import ADAM_TRAFFIC_BYTES, LOSS_BYTES_PER_LOGIT, MASTER_ADAM_BYTES
from simulator.core.errors import FieldError, RoofplanError
from simulator.core.models import ModelConfig
from simulator.core.ops import backward_ops, forward_ops, loss_ops, optimizer_ops
from simulator.core.profiles import ExecutorProfile, KernelProfile
from simulator.core.roofline import time_ops
from simulator.core.specs import System
from simulator.core.step import h2d_Bps
from simulator.core.units import DTYPE_BYTES, GiB, fmt_bytes
from simulator.core.workload import Job

SCHEMA = "roofplan.offload-plan/1"
RESOURCES = ("gpu", "cpu", "h2d", "d2h", "disk_read", "disk_write", "cpu_mem")
REFERENCE_HOST_CORES = 16        # measurements/h100-sxm/README.md: 16 vCPU Intel Xeon host
GBS_CHOICES = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 256, 512)
TRAIN_BATCH_CHOICES = (1, 2, 4, 8, 16, 32, 64, 128)
MAX_NUM_GPU_BATCHES = 64
MAX_BATCH = 2**24                # sequences per block or step: a typo beyond this, not a workload
TIE_BREAK_S = 1e-6               # objective nudge toward GPU-resident tensors when times tie


@dataclass(frozen=True)
class OffloadRequest:
    phase: str                          # decode (whole generation) | prefill | train
    prompt_len: int = 512
    gen_len: int = 32
    seq: int = 1024                     # train: tokens per sequence
    batch: int | None = None            # sequences per block / step; None = search
    dtype: str = "fp16"
    gpu_mem_bytes: float | None = None  # caps (None: the system's)
    host_mem_bytes: float | None = None
    nvme_bytes: float | None = None
    objective: str = "throughput"       # throughput | latency
    attention: str = "auto"             # auto | gpu | cpu
    overlap_optimizer: bool = True      # train: CPU Adam hidden behind backward (Fuyou) or after it (ZeRO-Infinity)


@dataclass(frozen=True)
class Rates:
    """Achieved rates of every resource, SI units."""
    h2d_Bps: float
    d2h_Bps: float
    disk_read_Bps: float
    disk_write_Bps: float
    cpu_mem_Bps: float
    cpu_attention_Bps: float
    cpu_adam_params_per_s: float


def system_rates(system: System, kp: KernelProfile, ex: ExecutorProfile) -> Rates:
    """Pinned PCIe copies at the kernel profile's measured efficiency and the executor's copy
    efficiency (simulator.core.step.h2d_Bps, the predictor's rate); NVMe and CPU memory at
    their spec; CPU attention at the CPU's measured rate, else its roofline (decode attention
    does 1 FLOP per byte of fp16 K/V: min(memory bandwidth, fp32 peak)); CPU Adam at the
    reference host's measured rate scaled by cores, capped by memory bandwidth / 28 B."""
    link = system.host_link.bw_Bps
    cpu = system.cpu
    if cpu is None:
        raise RoofplanError(f"{system.name} has no cpu in its spec; the offload planner needs the host CPU "
                            f"(add cpu: and host_memory_GiB: to hardware_specs/systems/{system.name}.yaml)")
    n = max(system.cpu_count, 1)
    mem_bw = cpu.mem_bw_Bps * n
    attn = (cpu.attention_Bps * n) if cpu.attention_Bps else min(mem_bw, cpu.peak_flops_fp32 * n)
    adam = min(kp.cpu_adam_params_per_s * cpu.cores * n / REFERENCE_HOST_CORES, mem_bw / ADAM_TRAFFIC_BYTES)
    return Rates(h2d_Bps=h2d_Bps(system, kp, ex, "pinned"), d2h_Bps=link * kp.d2h_pinned_eff,
                 disk_read_Bps=system.nvme_read_Bps, disk_write_Bps=system.nvme_write_Bps,
                 cpu_mem_Bps=mem_bw, cpu_attention_Bps=attn, cpu_adam_params_per_s=adam)


# --------------------------------------------------------------------------------------------
# per-layer GPU times from the core model


@dataclass(frozen=True)
class LayerTimes:
    rest_s: float        # one layer, one GPU batch: everything but attention
    attn_s: float        # attention
    ends_s: float        # embedding + final norm + LM head, one GPU batch, one step
    work_bytes: float    # working activations of one GPU batch on the GPU


def _layer_times(model, system, kp, ex, dtype, phase, gbs, seq, context) -> LayerTimes:
    job = Job(phase=phase, batch=gbs, seq=seq, context=context, dtype=dtype, micro_batch=gbs)
    layer = time_ops(forward_ops(model, job, ex, layers=1, embed=False, head=False), system, kp, ex)
    ends = time_ops(forward_ops(model, job, ex, layers=0), system, kp, ex)
    attn = float(layer.loc[layer["cls"] == "attention", "time_s"].sum())
    from simulator.core.memory import inference_activation_bytes
    return LayerTimes(rest_s=_lane_s(layer) - attn, attn_s=attn, ends_s=_lane_s(ends),
                      work_bytes=inference_activation_bytes(model, job, ex.fused_gate_up))


def _lane_s(df) -> float:
    """A run of ops repeated layer after layer takes the slower of its two lanes (GPU time,
    host time to issue it): the steady state of simulator.core.step.lanes."""
    return max(float(df["time_s"].sum()), float(df["host_time_s"].sum()))


# --------------------------------------------------------------------------------------------
# result


@dataclass(frozen=True)
class Stage:
    name: str
    count: int                       # how many times this layer step runs (layers x steps)
    layer_time_s: float
    resources_s: dict[str, float]

    @property
    def binds(self) -> str:
        return max(self.resources_s, key=self.resources_s.get)


@dataclass(frozen=True)
class OffloadPlan:
    model: str
    hardware: str
    request: OffloadRequest
    gpu_batch_size: int
    num_gpu_batches: int
    placement: dict[str, dict[str, float]]
    attention: str
    optimizer_step: dict[str, float] | None
    time_s: float
    tokens: float
    stages: tuple[Stage, ...]
    memory_bytes: dict[str, float]
    pinned_buffer_bytes: float
    model_flops: float
    solver: dict
    extra: dict = field(default_factory=dict)

    @property
    def block_size(self) -> int:
        return self.gpu_batch_size * self.num_gpu_batches

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.time_s

    @property
    def binds(self) -> str:
        longest = max(self.stages, key=lambda s: s.layer_time_s * s.count)
        return longest.binds

    def as_dict(self) -> dict:
        r = self.request
        stage_s = {s.name: s.layer_time_s * s.count for s in self.stages}
        return {
            "schema": SCHEMA, "model": self.model, "hardware": self.hardware, "phase": r.phase,
            "dtype": r.dtype, "objective": r.objective,
            "workload": {"prompt_len": r.prompt_len if r.phase != "train" else None,
                         "gen_len": r.gen_len if r.phase == "decode" else None,
                         "seq": r.seq if r.phase == "train" else None, "batch": self.block_size},
            "schedule": {"gpu_batch_size": self.gpu_batch_size, "num_gpu_batches": self.num_gpu_batches,
                         "block_size": self.block_size,
                         "order": "zig-zag" if r.phase != "train" else "layer-by-layer"},
            "placement": self.placement, "attention": self.attention, "optimizer_step": self.optimizer_step,
            "pinned_buffer_bytes": self.pinned_buffer_bytes, "memory_bytes": self.memory_bytes,
            "predicted": {"time_s": self.time_s, "tokens_per_s": self.tokens_per_s, "latency_s": self.time_s,
                          "prefill_s": stage_s.get("prefill", 0.0), "decode_s": stage_s.get("decode", 0.0),
                          "model_tflops_per_s": self.model_flops / self.time_s / 1e12,
                          "hardware_tflops_per_s": self.model_flops * (4 / 3 if r.phase == "train" else 1)
                          / self.time_s / 1e12},
            "stages": [{"stage": s.name, "count": s.count, "layer_time_s": s.layer_time_s,
                        "resources_s": dict(s.resources_s),
                        "utilisation": {k: (v / s.layer_time_s if s.layer_time_s else 0.0)
                                        for k, v in s.resources_s.items()},
                        "binds": s.binds} for s in self.stages],
            "binds": self.binds, "solver": dict(self.solver), **self.extra,
        }


# --------------------------------------------------------------------------------------------
# LP building blocks


class _LP:
    """A PuLP problem with placement triples and resource expressions; built per integer choice."""

    def __init__(self, name: str):
        import pulp
        self.pulp = pulp
        self.prob = pulp.LpProblem(name, pulp.LpMinimize)
        self.vars: dict[str, object] = {}

    def var(self, name, lo=0.0, hi=None):
        v = self.prob.add_variable(name, lowBound=lo, upBound=hi)
        self.vars[name] = v
        return v

    def triple(self, name: str, nvme: bool, fixed: dict | None = None):
        g, c, d = self.var(f"{name}_gpu", 0, 1), self.var(f"{name}_cpu", 0, 1), self.var(f"{name}_nvme", 0, 1 if nvme else 0)
        self.prob += g + c + d == 1
        for k, v in (fixed or {}).items():
            self.prob += {"gpu": g, "cpu": c, "nvme": d}[k] == v
        return g, c, d

    def value(self, expr) -> float:
        v = self.pulp.value(expr)
        return float(v) if v is not None else 0.0

    def fraction(self, var) -> float:
        """A placement fraction, with the solver's +-1e-9 noise clipped to [0, 1]."""
        return min(1.0, max(0.0, self.value(var)))


def _caps(system: System, req: OffloadRequest, ex: ExecutorProfile) -> tuple[float, float, float]:
    gpu = req.gpu_mem_bytes if req.gpu_mem_bytes is not None else system.gpu.mem_bytes
    host = req.host_mem_bytes if req.host_mem_bytes is not None else (system.host_mem_bytes or 0.0)
    nvme = req.nvme_bytes if req.nvme_bytes is not None else system.nvme_bytes
    return gpu, host, nvme


def _memory_rows(lp, caps, elastic):
    """Slack for the memory rows (GiB the cap would have to grow): a variable for the tier named
    by `elastic` ("gpu" | "host" | "nvme"), zero for the others."""
    return {key: lp.var(f"extra_{key}") if elastic == key else 0.0 for key in ("gpu", "host", "nvme")}


# --------------------------------------------------------------------------------------------
# inference


def _inference_lp(model, system, kp, ex, req, rates, gbs, nb, attn_cpu, fixed=None, elastic=False, memo=None):
    """Build and solve one LP for fixed (gbs, nb, attention); returns a plan dict or None.
    `memo` keeps the core model's layer times per GPU batch across the LPs of one search."""
    from .solver import solve
    a = DTYPE_BYTES[req.dtype]
    L = model.n_layers
    s, n = req.prompt_len, (req.gen_len if req.phase == "decode" else 1)
    bls = gbs * nb
    W = (model.params_total() - model.embedding_params - model.head_params) / L * a
    ends_bytes = (model.embedding_params + model.head_params) * a
    K = model.kv_cache_elems_per_token_layer() * a
    Hb = model.hidden * a
    ctx = s + n / 2.0
    memo = {} if memo is None else memo
    if gbs not in memo:
        memo[gbs] = (_layer_times(model, system, kp, ex, req.dtype, "prefill", gbs, s, 0),
                     _layer_times(model, system, kp, ex, req.dtype, "decode", gbs, 0, int(ctx))
                     if req.phase == "decode" else None)
    pre, dec = memo[gbs]
    has_nvme = system.nvme_bytes > 0 or (req.nvme_bytes or 0) > 0
    fixed = fixed or {}

    lp = _LP(f"offload_{gbs}x{nb}_{'cpu' if attn_cpu else 'gpu'}")
    wg, wc, wd = lp.triple("w", has_nvme, fixed.get("weights"))
    cg, cc, cd = lp.triple("c", has_nvme, fixed.get("kv_cache"))
    hg, hc, hd = lp.triple("h", has_nvme, fixed.get("activations"))
    P = lp.prob

    def stage(name, q, cache_tokens, lt: LayerTimes, attn_on_cpu):
        act = gbs * q * Hb
        new_kv = gbs * q * K
        cache = gbs * cache_tokens * K
        # each streamed layer's weights are one copy: its latency counts once per layer
        h2d = (((wc + wd) * W + nb * ((hc + hd) * act + (cc + cd) * (Hb * gbs if attn_on_cpu else cache))) / rates.h2d_Bps
               + (wc + wd) * kp.copy_latency_s)
        r = {
            "gpu": nb * (lt.rest_s + lt.attn_s * (cg if attn_on_cpu else 1)),
            # the host threads that run CPU attention also issue the h2d stream: serial, as
            # FlexGen's fitted model has it (Tgen = ctog + max(...), cost_model.py)
            "cpu": nb * (cc + cd) * cache / rates.cpu_attention_Bps + h2d if attn_on_cpu else 0,
            "h2d": h2d,
            "d2h": nb * ((hc + hd) * act + (cc + cd) * (new_kv + (Hb * gbs if attn_on_cpu else 0))) / rates.d2h_Bps,
        }
        disk_r = wd * W + nb * (cd * cache + hd * act)
        disk_w = nb * (cd * new_kv + hd * act)
        r["disk_read"] = disk_r / rates.disk_read_Bps if has_nvme and rates.disk_read_Bps else 0
        r["disk_write"] = disk_w / rates.disk_write_Bps if has_nvme and rates.disk_write_Bps else 0
        host_bytes = ((wc + wd) * W + nb * ((hc + hd) * 2 * act + (cc + cd) * (new_kv + (0 if attn_on_cpu else cache)))
                      + disk_r + disk_w)
        r["cpu_mem"] = host_bytes / rates.cpu_mem_Bps
        T = lp.var(f"T_{name}")
        for k, e in r.items():
            if not isinstance(e, (int, float)) or e:
                lp.prob += T >= e
        return T, r

    def streamed(name, T, r):
        """One pass over the L layers, double-buffered: the same schedule as predict()'s
        (simulator.core.step.stream_schedule): the first layer's copies and host work cannot
        overlap compute (fill F, the slowest of them), the last layer's compute cannot overlap
        the next copy, every layer between takes the slowest resource T. Linear in the
        placement: F + (L - 1) T + last compute (>= L T)."""
        F = lp.var(f"F_{name}")
        for k, e in r.items():
            if k != "gpu" and (not isinstance(e, (int, float)) or e):
                lp.prob += F >= e
        return F + (L - 1) * T + r["gpu"]

    T_pre, r_pre = stage("prefill", s, 0, pre, False)
    stages = [("prefill", L, T_pre, r_pre)]
    total = streamed("prefill", T_pre, r_pre) + nb * pre.ends_s + ex.host_overhead_per_step_s
    if dec is not None:
        T_dec, r_dec = stage("decode", 1, ctx, dec, attn_cpu)
        stages.append(("decode", L * (n - 1), T_dec, r_dec))
        total = total + (n - 1) * (streamed("decode", T_dec, r_dec) + nb * dec.ends_s + ex.host_overhead_per_step_s)

    # memory (bytes); KV for the whole generation s + n
    W_all, KV_all, H_home = W * L, bls * (s + n) * L * K, bls * s * Hb
    stream_buf = 2 * W * (1 - wg)
    cache_buf = 0 if attn_cpu else 2 * gbs * (s + n) * K * (1 - cg)
    gpu_mem = (wg * W_all + cg * KV_all + hg * H_home + ends_bytes + stream_buf + cache_buf
               + pre.work_bytes + ex.workspace_bytes)   # work_bytes holds the GPU batch's hidden in/out
    # NVMe traffic stages through pinned host buffers, double-buffered per GPU batch (zig-zag order)
    pinned = 2 * (wd * W + gbs * (ctx * K * cd + s * Hb * hd)) if has_nvme else 0
    host_mem = wc * W_all + cc * KV_all + hc * H_home + pinned
    nvme_mem = wd * W_all + cd * KV_all + hd * H_home
    caps = _caps(system, req, ex)
    slack = _memory_rows(lp, caps, elastic)
    # rows in GiB: byte-sized coefficients next to second-sized ones upset the LP's tolerances
    P += gpu_mem * (1 / GiB) <= caps[0] / GiB + slack["gpu"]
    P += host_mem * (1 / GiB) <= caps[1] / GiB + slack["host"]
    P += nvme_mem * (1 / GiB) <= caps[2] / GiB + slack["nvme"]
    # tie-break among equal-time plans: keep tensors as close to the GPU as possible (1 us scale)
    near = TIE_BREAK_S * (wc + cc + hc + 2 * (wd + cd + hd))
    if elastic:
        P += slack["gpu"] + slack["host"] + slack["nvme"] + 1e-3 * total
    else:
        P += total + near
    rep = solve(P, time_limit_s=10, gap=1e-4)
    if not rep.has_solution:
        return None, rep
    tokens = bls * (n if req.phase == "decode" else s)
    model_flops = 2.0 * (model.params_total() - model.embedding_params) * tokens
    v, f = lp.value, lp.fraction
    out = dict(
        gpu_batch_size=gbs, num_gpu_batches=nb,
        placement={
            "weights": {"gpu": f(wg), "cpu": f(wc), "nvme": f(wd)},
            "kv_cache": {"gpu": f(cg), "cpu": f(cc), "nvme": f(cd)},
            "activations": {"gpu": f(hg), "cpu": f(hc), "nvme": f(hd)},
        },
        attention="cpu" if attn_cpu else "gpu", optimizer_step=None,
        time_s=v(total), tokens=tokens,
        stages=tuple(Stage(nm, cnt, v(T), {k: v(e) if not isinstance(e, (int, float)) else float(e)
                                             for k, e in r.items()}) for nm, cnt, T, r in stages),
        memory_bytes={"gpu": v(gpu_mem), "host": v(host_mem), "nvme": v(nvme_mem)},
        pinned_buffer_bytes=v(pinned) if has_nvme else 0.0, model_flops=model_flops,
        slack={k: v(x) * GiB if not isinstance(x, float) else 0.0 for k, x in slack.items()},
    )
    return out, rep


# --------------------------------------------------------------------------------------------
# training


def _train_lp(model, system, kp, ex, req, rates, mb, fixed=None, elastic=False):
    """One optimizer step over `mb` sequences (one micro-batch), full activation checkpointing."""
    from .solver import solve
    a = DTYPE_BYTES[req.dtype]
    L = model.n_layers
    T_tok = mb * req.seq
    P_layer = (model.params_total() - model.embedding_params - model.head_params) / L
    P_ends = model.embedding_params + model.head_params
    W = P_layer * a
    C = T_tok * model.hidden * a                  # checkpoint: the layer input
    job = Job(phase="train", batch=mb, seq=req.seq, dtype=req.dtype, micro_batch=mb, recompute="full")
    fwd = forward_ops(model, job, ex, layers=1, embed=False, head=False)
    layer_df = time_ops(fwd + backward_ops(fwd, job, ex) + fwd, system, kp, ex)  # + recompute
    t_layer_gpu = _lane_s(layer_df)
    ends_fwd = forward_ops(model, job, ex, layers=0)
    ends_ops = ends_fwd + loss_ops(model, job, T_tok) + backward_ops(ends_fwd, job, ex)
    t_ends = _lane_s(time_ops(ends_ops, system, kp, ex))
    t_adam_gpu_ends = float(time_ops(optimizer_ops(model, job, P_ends), system, kp, ex)["time_s"].sum())
    t_adam_gpu = float(time_ops(optimizer_ops(model, job, P_layer), system, kp, ex)["time_s"].sum())
    from simulator.core.memory import saved_activation_bytes_per_token_layer
    one_layer_acts = T_tok * saved_activation_bytes_per_token_layer(model, job, ex, False)
    logits = T_tok * model.vocab * LOSS_BYTES_PER_LOGIT
    has_nvme = system.nvme_bytes > 0 or (req.nvme_bytes or 0) > 0
    fixed = fixed or {}

    lp = _LP(f"train_{mb}")
    wg, wc, wd = lp.triple("w", has_nvme, fixed.get("weights"))
    og, oc, od = lp.triple("o", has_nvme, fixed.get("optimizer_states"))
    ag, ac, ad = lp.triple("a", False, fixed.get("checkpoints"))
    u = lp.var("u")
    P = lp.prob
    P += u >= wg - og
    r = {
        "gpu": t_layer_gpu + og * t_adam_gpu,
        "cpu": (oc + od) * P_layer / rates.cpu_adam_params_per_s,
        "h2d": (2 * (wc + wd) * W + ac * C + 2 * P_layer * u) / rates.h2d_Bps,
        "d2h": (2 * P_layer * (oc + od) + ac * C) / rates.d2h_Bps,
    }
    disk_r = 2 * wd * W + MASTER_ADAM_BYTES * P_layer * od
    disk_w = 2 * P_layer * wd + MASTER_ADAM_BYTES * P_layer * od
    ov = req.overlap_optimizer
    # serial optimizer (ZeRO-Infinity): the NVMe swap of optimizer states belongs to the step after
    # the backward, with the CPU Adam; overlapped (Fuyou): every layer step hides it
    r["disk_read"] = (disk_r if ov else 2 * wd * W) / rates.disk_read_Bps if has_nvme else 0
    r["disk_write"] = (disk_w if ov else 2 * P_layer * wd) / rates.disk_write_Bps if has_nvme else 0
    # CPU Adam streams 28 B/param through host memory, plus every copy in or out
    r["cpu_mem"] = (ADAM_TRAFFIC_BYTES * P_layer * (oc + od) + 2 * (wc + wd) * W + 2 * ac * C
                    + 2 * P_layer * (oc + od) + disk_r + disk_w) / rates.cpu_mem_Bps
    T = lp.var("T_layer")
    for k, e in r.items():
        if not isinstance(e, (int, float)) and (k != "cpu" or ov):
            P += T >= e
    # embedding and LM head: fp16 weights stay on the GPU; their optimizer states follow o*,
    # and their update runs after the last backward (not hidden behind a layer)
    total = L * T + t_ends + og * t_adam_gpu_ends + (oc + od) * P_ends / rates.cpu_adam_params_per_s
    if not ov:      # ZeRO-Infinity: the optimizer phase starts after the backward ends
        T_opt = lp.var("T_optimizer_layer")
        P += T_opt >= r["cpu"]
        if has_nvme:
            P += T_opt >= MASTER_ADAM_BYTES * P_layer * od / rates.disk_read_Bps
            P += T_opt >= MASTER_ADAM_BYTES * P_layer * od / rates.disk_write_Bps
        total = total + L * T_opt

    W_all, O_all, C_all = W * L, MASTER_ADAM_BYTES * (P_layer * L + P_ends), C * L
    gpu_mem = (wg * W_all + og * (O_all + 4 * (P_layer * L + P_ends)) + ag * C_all + 2 * W * (1 - wg)
               + P_ends * a + one_layer_acts + logits + ex.workspace_bytes
               + 2 * P_layer * a)           # the layer's gradient buffer
    pinned = 2 * (wd * W + MASTER_ADAM_BYTES * P_layer * od) + 2 * 2 * P_layer if has_nvme else 2 * 2 * P_layer
    host_mem = wc * W_all + oc * O_all + ac * C_all + pinned
    nvme_mem = wd * W_all + od * O_all
    caps = _caps(system, req, ex)
    slack = _memory_rows(lp, caps, elastic)
    # rows in GiB: byte-sized coefficients next to second-sized ones upset the LP's tolerances
    P += gpu_mem * (1 / GiB) <= caps[0] / GiB + slack["gpu"]
    P += host_mem * (1 / GiB) <= caps[1] / GiB + slack["host"]
    P += nvme_mem * (1 / GiB) <= caps[2] / GiB + slack["nvme"]
    near = TIE_BREAK_S * (wc + oc + ac + 2 * (wd + od))
    P += (slack["gpu"] + slack["host"] + slack["nvme"] + 1e-3 * total) if elastic else total + near
    rep = solve(P, time_limit_s=10, gap=1e-4)
    if not rep.has_solution:
        return None, rep
    v, f = lp.value, lp.fraction
    fwd_flops = float(layer_df.loc[layer_df["name"].isin([o.name for o in fwd]) & (layer_df["pass"] == "fwd"), "flops"].sum()) / 2
    model_flops = 3.0 * (fwd_flops * L + sum(o.flops * o.count for o in ends_fwd))
    out = dict(
        gpu_batch_size=mb, num_gpu_batches=1,
        placement={
            "weights": {"gpu": f(wg), "cpu": f(wc), "nvme": f(wd)},
            "optimizer_states": {"gpu": f(og), "cpu": f(oc), "nvme": f(od)},
            "checkpoints": {"gpu": f(ag), "cpu": f(ac), "nvme": f(ad)},
        },
        attention="gpu", optimizer_step={"gpu": f(og), "cpu": 1.0 - f(og)},
        time_s=v(total), tokens=float(T_tok),
        stages=(Stage("train_layer", L, v(T), {k: v(e) if not isinstance(e, (int, float)) else float(e)
                                               for k, e in r.items()}),),
        memory_bytes={"gpu": v(gpu_mem), "host": v(host_mem), "nvme": v(nvme_mem)},
        pinned_buffer_bytes=v(pinned) if not isinstance(pinned, float) else pinned, model_flops=model_flops,
        slack={k: v(x) * GiB if not isinstance(x, float) else 0.0 for k, x in slack.items()},
    )
    return out, rep


# --------------------------------------------------------------------------------------------
# search


def _score(plan: dict, objective: str) -> float:
    return plan["time_s"] if objective == "latency" else -plan["tokens"] / plan["time_s"]


def plan_offload(model: ModelConfig, system: System, req: OffloadRequest, executor: ExecutorProfile,
                 kernels: KernelProfile, fixed: dict | None = None, gbs: int | None = None,
                 nb: int | None = None) -> OffloadPlan:
    """Best plan over the integer choices; `fixed` pins placement fractions (FlexGen's --percent)
    and `gbs`/`nb`/`req.attention` pin the schedule, to score a published policy."""
    _validate(model, system, req)
    rates = system_rates(system, kernels, executor)
    t0 = time.perf_counter()
    best, best_rep, n_lp = None, None, 0
    memo: dict = {}
    if req.phase == "train":
        choices = [req.batch] if req.batch else [b for b in TRAIN_BATCH_CHOICES]
        for mb in choices:
            out, rep = _train_lp(model, system, kernels, executor, req, rates, mb, fixed)
            n_lp += 1
            best_rep = best_rep or rep
            if out is None:
                break          # larger micro-batches need more GPU memory still
            if best is None or _score(out, req.objective) < _score(best, req.objective):
                best, best_rep = out, rep
    else:
        attn_opts = {"auto": (False, True), "gpu": (False,), "cpu": (True,)}[req.attention]
        if req.phase == "prefill":
            attn_opts = (False,)
        for attn_cpu in attn_opts:
            worse = 0          # consecutive GPU batch sizes whose best block lost to the previous size's
            last_best = None
            for g in ([gbs] if gbs else _gbs_choices(req)):
                prev = None
                best_here = None
                for k in ([nb] if nb else _nb_choices(req, g)):
                    out, rep = _inference_lp(model, system, kernels, executor, req, rates, g, k, attn_cpu, fixed, memo=memo)
                    n_lp += 1
                    if out is None:
                        break
                    sc = _score(out, req.objective)
                    best_here = sc if best_here is None else min(best_here, sc)
                    if best is None or sc < _score(best, req.objective):
                        best, best_rep = out, rep
                    if prev is not None and sc > prev:
                        break      # FlexGen's rule: stop growing the block once throughput drops
                    prev = sc
                if prev is None and not gbs:
                    break          # this GPU batch does not fit at all: larger ones will not either
                worse = worse + 1 if (last_best is not None and best_here > last_best) else 0
                last_best = best_here
                if worse >= 2:
                    break          # two larger GPU batches in a row got slower: past the optimum
    if best is None:
        _raise_infeasible(model, system, req, executor, kernels, rates, fixed, gbs, nb)
    solve_s = time.perf_counter() - t0
    slack = best.pop("slack")
    del slack
    return OffloadPlan(model=model.name, hardware=system.name, request=req,
                       solver={"name": best_rep.solver, "status": best_rep.status, "gap": best_rep.gap,
                               "time_s": solve_s, "lps_solved": n_lp}, **best)


def _gbs_choices(req):
    if req.batch:   # the standard GPU batch sizes that divide the block, and the whole block
        return sorted({g for g in GBS_CHOICES if req.batch % g == 0} | {req.batch})
    return list(GBS_CHOICES)


def _nb_choices(req, gbs):
    if req.batch:
        return [req.batch // gbs]
    if req.objective == "latency":
        return [1]
    return [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= MAX_NUM_GPU_BATCHES]


def _raise_infeasible(model, system, req, ex, kp, rates, fixed, gbs, nb):
    """The smallest plan (one sequence, unless pinned) with one memory cap made elastic at a time:
    how much more GPU memory, or host memory, or NVMe alone would make it fit."""
    caps = dict(zip(("gpu", "host", "nvme"), _caps(system, req, ex)))
    need = {}
    for tier in ("nvme", "host", "gpu"):          # cheapest capacity first
        if req.phase == "train":
            out, _ = _train_lp(model, system, kp, ex, req, rates, req.batch or 1, fixed, elastic=tier)
        else:
            g = gbs or (min(_gbs_choices(req)) if req.batch else 1)
            k = nb or (req.batch // g if req.batch else 1)
            out, _ = _inference_lp(model, system, kp, ex, req, rates, g, k, req.attention == "cpu", fixed,
                                   elastic=tier)
        if out is not None:
            need[tier] = out["slack"][tier]
    if not need:
        raise RoofplanError(f"no offload plan for {model.name} {req.phase} on {system.name} even with more memory; "
                            f"check the caps gpu_mem_bytes, host_mem_bytes and nvme_bytes")
    names = {"gpu": "GPU memory", "host": "host memory", "nvme": "NVMe capacity"}
    fields = {"gpu": "gpu_mem_bytes", "host": "host_mem_bytes", "nvme": "nvme_bytes"}
    tier = min(need, key=lambda t: need[t])
    alts = ", ".join(f"{names[t]} +{fmt_bytes(need[t])}" for t in need if t != tier)
    total = caps[tier] + need[tier]
    fix = (f"raise it to {math.ceil(total / GiB)} GiB" if tier != "nvme" or caps["nvme"] else
           "use a system with NVMe")
    smaller = "seq" if req.phase == "train" else "prompt_len"
    raise FieldError(
        fields[tier], f"{caps[tier] / GiB:.1f} GiB",
        f"{model.name} {req.phase} does not fit on {system.name}: binding constraint is {names[tier]}, "
        f"short by {fmt_bytes(need[tier])} (needs {total / GiB:.1f} GiB, has {caps[tier] / GiB:.1f} GiB"
        f"{'; or ' + alts if alts else ''})", f"{fix}, or use a smaller batch or {smaller}")


def _validate(model: ModelConfig, system: System, req: OffloadRequest) -> None:
    if req.phase not in ("decode", "prefill", "train"):
        raise FieldError("phase", req.phase, "unknown", "use decode, prefill or train")
    if req.objective not in ("throughput", "latency"):
        raise FieldError("objective", req.objective, "unknown", "use throughput or latency")
    if req.attention not in ("auto", "gpu", "cpu"):
        raise FieldError("attention", req.attention, "unknown", "use auto, gpu or cpu")
    for name in ("prompt_len", "gen_len", "seq"):
        if getattr(req, name) < 1:
            raise FieldError(name, getattr(req, name), "must be >= 1")
    if req.batch is not None and not 1 <= req.batch <= MAX_BATCH:
        raise FieldError("batch", req.batch, f"must be 1 to {MAX_BATCH:,} sequences", "check the number")
    for name in ("gpu_mem_bytes", "host_mem_bytes", "nvme_bytes"):
        v = getattr(req, name)
        if v is not None and not (0 < v < math.inf):      # the caps are LP bounds: a nan or inf one fails the solver
            raise FieldError(name, f"{v / GiB:g} GiB", "must be a finite number > 0")
    if req.dtype not in DTYPE_BYTES or req.dtype == "int4":
        raise FieldError("dtype", req.dtype, "not supported", "use fp16, bf16, fp8 or fp32")
    system.gpu.peak_flops(req.dtype)
    total = req.seq if req.phase == "train" else req.prompt_len + (req.gen_len if req.phase == "decode" else 0)
    if total > model.max_positions:
        name = "seq" if req.phase == "train" else "prompt_len" if req.prompt_len > model.max_positions else "gen_len"
        raise FieldError(name, getattr(req, name), f"a sequence of {total} tokens exceeds {model.name}'s limit of "
                         f"{model.max_positions}", "use a shorter seq" if req.phase == "train"
                         else "use a shorter prompt_len or gen_len")
