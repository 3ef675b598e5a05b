"""Execute an inference offload plan (`roofplan plan offload --format json`, schema
roofplan.offload-plan/1) on a real device, with the placement and schedule the plan names.

What runs (phase decode = a whole generation: one prefill of `prompt_len` tokens, then
`gen_len - 1` greedy decode steps; phase prefill = the prefill only), for one block of
`gpu_batch_size x num_gpu_batches` sequences in FlexGen's zig-zag order: per layer, the layer's
weights are made ready once and every GPU batch runs through it before the next layer.

Weights: per layer, whole tensors are placed by FlexGen's midpoint rule with the largest tensor
first (`split_tensors`): a tensor goes to the tier whose cumulative-fraction interval holds its
size midpoint. Device-resident tensors stay on the device; host tensors live in (pinned, on
cuda) host memory; NVMe tensors live in one file on disk. The non-resident tensors of layer i+1
are staged by a worker thread while layer i computes: NVMe bytes are read with np.memmap into a
pinned staging buffer, then every host tensor is copied into one of two device slots on a side
stream; events order each copy after the slot's last use, and the staging buffer is reused only
after its previous copy finished. The layer runs through `torch.func.functional_call` on one
template Block (executor/model.py), so the model code is the executor's, not a copy.

KV cache (whole tier): on the device, the Block's own static cache. On the host with attention on
the CPU (decode): q, k, v go to the host, k, v are written into the host cache and SDPA runs on
the CPU, the output goes back. On the host with attention on the GPU (prefill always, decode if
the plan says so): the new k, v are written to the host cache and, in decode, the cache up to the
current position is copied into a device window per layer and GPU batch (synchronously, on the
compute stream; the planner counts that copy as h2d traffic). Activations (whole tier): on the host, each GPU batch's hidden state goes to the host
after every layer and back before the next one (non-blocking copies on the compute stream).

Refused with a one-line RoofplanError (field and fix): another schema, phase train, a KV cache or
activations split over tiers or on NVMe, a workload longer than the model's positions.

Timing: `warmup` untimed generations, then the median of `steps` generations (device
synchronised after the prefill and at the end, so prefill and decode times are reported apart).
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.profiler import ProfilerActivity, profile, record_function

from simulator.core.errors import RoofplanError
from simulator.core.models import ModelConfig
from simulator.executor.fits import check_dense_decoder, check_plan_memory
from simulator.executor.model import Decoder
from simulator.executor.run import TORCH_DTYPES, _export, _sync, move_ends

SCHEMA = "roofplan.offload-plan/1"
TIERS = ("gpu", "cpu", "nvme")
EPS = 1e-6


@dataclass(frozen=True)
class PlanSpec:
    """The executable part of a plan (SI units, fractions in [0, 1])."""
    phase: str
    prompt_len: int
    gen_len: int
    gpu_batch_size: int
    num_gpu_batches: int
    dtype: str
    weights: dict
    kv_tier: str            # gpu | cpu
    act_tier: str           # gpu | cpu
    attention: str          # gpu | cpu (decode)

    @property
    def max_len(self) -> int:
        return self.prompt_len + (self.gen_len if self.phase == "decode" else 0)

    @property
    def tokens(self) -> int:
        """Tokens the plan's throughput counts: generated tokens (decode) or prompt tokens (prefill)."""
        bls = self.gpu_batch_size * self.num_gpu_batches
        return bls * (self.gen_len if self.phase == "decode" else self.prompt_len)


def _whole_tier(plan: dict, key: str) -> str:
    frac = plan["placement"][key]
    for tier in ("gpu", "cpu"):
        if abs(float(frac.get(tier, 0.0)) - 1.0) <= EPS:
            return tier
    pretty = ", ".join(f"{t} {float(frac.get(t, 0.0)):.3g}" for t in TIERS)
    raise RoofplanError(f"plan field placement.{key} ({pretty}) is split or on NVMe; the executor places the {key} "
                        f"whole on gpu or cpu: edit it to {{\"gpu\": 0, \"cpu\": 1, \"nvme\": 0}} (or gpu 1) and re-run")


def parse_plan(plan: dict) -> PlanSpec:
    """Check a plan dict and return what the executor runs; one-line errors name field and fix."""
    if plan.get("schema") != SCHEMA:
        raise RoofplanError(f"plan field schema is {plan.get('schema')!r}, not {SCHEMA}; "
                            f"write the plan with roofplan plan offload ... --format json")
    phase = plan.get("phase")
    if phase not in ("decode", "prefill"):
        raise RoofplanError(f"plan field phase is {phase!r}; the executor runs inference plans (decode or prefill): "
                            f"plan with --phase decode or --phase prefill")
    sched, wl = plan["schedule"], plan["workload"]
    w = {t: float(plan["placement"]["weights"].get(t, 0.0)) for t in TIERS}
    if any(v < -EPS for v in w.values()) or abs(sum(w.values()) - 1.0) > 1e-3:
        raise RoofplanError(f"plan field placement.weights {w} must be fractions summing to 1; fix the plan JSON")
    if plan["dtype"] not in TORCH_DTYPES:
        raise RoofplanError(f"plan field dtype is {plan['dtype']!r}; the executor runs bf16, fp16 or fp32: re-plan with --dtype bf16")
    kv, act = _whole_tier(plan, "kv_cache"), _whole_tier(plan, "activations")
    return PlanSpec(phase=phase, prompt_len=int(wl["prompt_len"]), gen_len=int(wl["gen_len"] or 1),
                    gpu_batch_size=int(sched["gpu_batch_size"]), num_gpu_batches=int(sched["num_gpu_batches"]),
                    dtype=plan["dtype"], weights=w, kv_tier=kv, act_tier=act,
                    attention=plan.get("attention") or "gpu")


def split_tensors(sizes: dict[str, int], fractions: dict[str, float]) -> dict[str, str]:
    """Tier of each tensor: largest first, a tensor goes to the tier whose cumulative interval
    [0, g) gpu, [g, g + c) cpu, [g + c, 1] nvme holds its size midpoint (FlexGen's rule,
    flex_opt.py init_weight_list; planners/flexgen._split)."""
    total = float(sum(sizes.values()))
    g, c = fractions["gpu"], fractions["cpu"]
    out, cum = {}, 0.0
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        mid = (cum + sizes[name] / 2) / total
        cum += sizes[name]
        out[name] = "gpu" if mid < g else "cpu" if mid < g + c else "nvme"
    return out


def build_model(cfg: ModelConfig, dtype, max_len: int, seed: int) -> Decoder:
    """The executor's model on the host with random normal weights (std 0.02), as run.build_step."""
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = Decoder(cfg, max_len)
    model = model.to(dtype)
    for p in model.parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.02)
    return model


class PlanWeights:
    """Per-layer weights split over device / host / NVMe file, two device slots for streamed
    tensors, a worker thread that stages layer i+1 while layer i computes."""

    def __init__(self, model: Decoder, tiers: dict[str, str], device: torch.device, nvme_dir: str | None,
                 pinned: bool = True):
        cuda = device.type == "cuda"
        self.device, self.tiers, self.n = device, tiers, len(model.layers)
        self.template = model.layers[0]
        self.streamed = [n for n, t in tiers.items() if t != "gpu"]
        self.nvme_names = [n for n, t in tiers.items() if t == "nvme"]
        self.resident, self.host = [], []
        self._tmp = None
        self.nvme_path, self.nvme_off = None, {}
        if self.nvme_names:
            if nvme_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="roofplan-nvme-")
                nvme_dir = self._tmp.name
            self.nvme_path = os.path.join(nvme_dir, "weights.bin")
            fh = open(self.nvme_path, "wb")
        for i, blk in enumerate(model.layers):
            params = dict(blk.named_parameters())
            self.resident.append({n: params[n].detach().to(device) for n, t in tiers.items() if t == "gpu"})
            host = {}
            for n, t in tiers.items():
                p = params[n].detach()
                if t == "cpu":
                    host[n] = p.pin_memory() if pinned and cuda else p.clone()
                elif t == "nvme":
                    self.nvme_off[(i, n)] = fh.tell()
                    fh.write(p.contiguous().view(torch.uint8).numpy().tobytes())
            self.host.append(host)
        if self.nvme_names:
            fh.close()
            self.mm = np.memmap(self.nvme_path, dtype=np.uint8, mode="r")
        shapes = {n: self.template.get_parameter(n) for n in self.streamed}
        self.slots = [{n: torch.empty_like(p, device=device) for n, p in shapes.items()} for _ in range(2)]
        self.staging = [{n: torch.empty_like(shapes[n], device="cpu", pin_memory=pinned and cuda)
                         for n in self.nvme_names} for _ in range(2)]
        # what the host side really is (on cpu nothing is pinned), for the result
        host = [t for layer in self.host for t in layer.values()] + [t for st in self.staging for t in st.values()]
        self.host_memory = ("pinned" if all(t.is_pinned() for t in host) else "pageable") if host else None
        self.stream = torch.cuda.Stream(device) if cuda else None
        self.ready = [torch.cuda.Event() for _ in range(2)] if cuda else None
        self.free = [torch.cuda.Event() for _ in range(2)] if cuda else None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="roofplan-stage") if self.streamed else None
        self.pending = {}

    def _stage(self, i: int) -> None:
        """Worker thread: NVMe -> pinned staging, then host -> device slot (side stream on cuda)."""
        s = i % 2
        if self.ready is not None:
            self.ready[s].synchronize()          # the staging buffer's previous copy has finished
        for n in self.nvme_names:
            off = self.nvme_off[(i, n)]
            buf = self.staging[s][n]
            nbytes = buf.numel() * buf.element_size()
            np.copyto(buf.view(torch.uint8).numpy().reshape(-1), self.mm[off:off + nbytes])
        src = {**self.host[i], **self.staging[s]}
        if self.stream is None:
            for n in self.streamed:
                self.slots[s][n].copy_(src[n])
            return
        self.stream.wait_event(self.free[s])
        with torch.cuda.stream(self.stream):
            for n in self.streamed:
                self.slots[s][n].copy_(src[n], non_blocking=True)
            self.ready[s].record(self.stream)

    def _submit(self, i: int) -> None:
        if self.pool is not None and i < self.n and i not in self.pending:
            self.pending[i] = self.pool.submit(self._stage, i)

    def get(self, i: int) -> dict:
        """Parameters of layer i (resident + its device slot); prefetches layer i+1."""
        self._submit(i)
        if i in self.pending:
            with record_function(f"stage layer{i}"):
                self.pending.pop(i).result()
            if self.stream is not None:
                torch.cuda.current_stream().wait_event(self.ready[i % 2])
        self._submit(i + 1 if i + 1 < self.n else 0)      # the last layer prefetches the next block's first
        return {**self.resident[i], **{n: self.slots[i % 2][n] for n in self.streamed}}

    def done(self, i: int) -> None:
        if self.free is not None:
            self.free[i % 2].record(torch.cuda.current_stream())

    def close(self) -> None:
        for f in self.pending.values():
            f.result()
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown()
        if self._tmp is not None:
            self.mm = None
            self._tmp.cleanup()


class PlanExecutor:
    """Builds everything a plan needs once; `generate()` runs one block and returns the logits."""

    def __init__(self, cfg: ModelConfig, ps: PlanSpec, device: torch.device, seed: int = 0,
                 nvme_dir: str | None = None):
        self.cfg, self.ps, self.device = cfg, ps, device
        self.dtype = TORCH_DTYPES[ps.dtype]
        model = build_model(cfg, self.dtype, ps.max_len, seed)
        blk0 = model.layers[0]
        sizes = {n: p.numel() * p.element_size() for n, p in blk0.named_parameters()}
        self.tiers = split_tensors(sizes, ps.weights)
        total = sum(sizes.values())
        self.effective = {t: sum(sizes[n] for n in sizes if self.tiers[n] == t) / total for t in TIERS}
        self.n_params = sum(p.numel() for p in model.parameters())
        self.weights = PlanWeights(model, self.tiers, device, nvme_dir)
        move_ends(model, device)
        model.layers = torch.nn.ModuleList([self.weights.template.to("meta")])
        self.model = model
        g, nb, L = ps.gpu_batch_size, ps.num_gpu_batches, cfg.n_layers
        shape = (g, cfg.n_kv_heads, ps.max_len, cfg.head_dim)
        kv_dev = device if ps.kv_tier == "gpu" else torch.device("cpu")
        pin = device.type == "cuda" and ps.kv_tier == "cpu"
        self.caches = [[(torch.zeros(shape, dtype=self.dtype, device=kv_dev, pin_memory=pin),
                         torch.zeros(shape, dtype=self.dtype, device=kv_dev, pin_memory=pin)) for _ in range(nb)]
                       for _ in range(L)]
        self.window = ((torch.empty(shape, dtype=self.dtype, device=device),
                        torch.empty(shape, dtype=self.dtype, device=device)) if ps.kv_tier == "cpu" else None)
        gen = torch.Generator().manual_seed(seed + 1)
        self.prompts = [torch.randint(0, cfg.vocab, (g, ps.prompt_len), generator=gen).to(device) for _ in range(nb)]

    # attention over a host-resident cache ------------------------------------------------
    def _attend_host(self, blk, cpu_attention: bool):
        def attend(q, k, v, kc, vc, pos0):
            T = q.shape[2]
            kc[:, :, pos0:pos0 + T] = k.to("cpu")
            vc[:, :, pos0:pos0 + T] = v.to("cpu")
            if cpu_attention:
                a = F.scaled_dot_product_attention(q.to("cpu"), kc[:, :, :pos0 + T], vc[:, :, :pos0 + T],
                                                   is_causal=T > 1, enable_gqa=blk.kv != blk.h)
                return a.to(self.device)
            if pos0 == 0:          # prefill: the new k, v are the whole cache and already on the device
                return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=blk.kv != blk.h)
            wk, wv = self.window
            wk[:, :, :pos0 + T].copy_(kc[:, :, :pos0 + T])
            wv[:, :, :pos0 + T].copy_(vc[:, :, :pos0 + T])
            return F.scaled_dot_product_attention(q, wk[:, :, :pos0 + T], wv[:, :, :pos0 + T],
                                                  is_causal=T > 1, enable_gqa=blk.kv != blk.h)
        return attend

    def _step(self, xs: list, pos0: int, decode: bool) -> list:
        """One token step (prefill or decode) through every layer in zig-zag order."""
        m, ps, w = self.model, self.ps, self.weights
        T = xs[0].shape[1]
        cos, sin = m.rope(pos0, T, self.dtype)
        blk = w.template
        attend = None
        if ps.kv_tier == "cpu":
            attend = self._attend_host(blk, cpu_attention=decode and ps.attention == "cpu")
        for i in range(self.cfg.n_layers):
            with record_function(f"layer{i}"):
                params = w.get(i)
                for k in range(ps.num_gpu_batches):
                    x = xs[k].to(self.device, non_blocking=True) if ps.act_tier == "cpu" else xs[k]
                    kc, vc = self.caches[i][k]
                    x = functional_call(blk, params, (x, cos, sin, kc, vc, pos0), {"attend": attend})
                    # non_blocking d2h lands in pinned memory, ordered on the stream before the next h2d
                    xs[k] = x.to("cpu", non_blocking=True) if ps.act_tier == "cpu" else x
                w.done(i)
        return xs

    @torch.no_grad()
    def generate(self, timings: dict | None = None) -> list[torch.Tensor]:
        """One block: prefill + greedy decode; logits [block, vocab] per token step (on the device)."""
        m, ps = self.model, self.ps
        t0 = time.perf_counter()
        with record_function("plan.prefill"):
            xs = [m.embed_tokens(ids, 0) for ids in self.prompts]
            if ps.act_tier == "cpu":
                xs = [x.to("cpu") for x in xs]
            xs = self._step(xs, 0, decode=False)
            logits = [m.head(x.to(self.device), True)[:, -1] for x in xs]
        out = [torch.cat(logits)]
        _sync(self.device)
        t1 = time.perf_counter()
        steps = ps.gen_len - 1 if ps.phase == "decode" else 0
        for j in range(steps):
            pos0 = ps.prompt_len + j
            with record_function("plan.decode"):
                ids = [lg.argmax(-1, keepdim=True) for lg in logits]
                xs = [m.embed_tokens(t, pos0) for t in ids]
                if ps.act_tier == "cpu":
                    xs = [x.to("cpu") for x in xs]
                xs = self._step(xs, pos0, decode=True)
                logits = [m.head(x.to(self.device), True)[:, -1] for x in xs]
            out.append(torch.cat(logits))
        _sync(self.device)
        if timings is not None:
            timings["prefill_s"], timings["decode_s"] = t1 - t0, time.perf_counter() - t1
        return out

    def close(self) -> None:
        self.weights.close()


def run_plan(cfg: ModelConfig, plan: dict, device: str = "cpu", steps: int = 3, warmup: int = 1,
             trace_path: str | None = None, result_path: str | None = None, seed: int = 0,
             nvme_dir: str | None = None, plan_path: str | None = None) -> dict:
    """Execute the plan, time it, optionally trace one generation; returns (and writes) the result."""
    ps = parse_plan(plan)
    if ps.max_len > cfg.max_positions:
        raise RoofplanError(f"plan workload prompt_len + gen_len = {ps.max_len} exceeds {cfg.name}'s "
                            f"{cfg.max_positions} positions; re-plan with a shorter --prompt-len/--gen-len")
    if device == "cuda" and not torch.cuda.is_available():
        raise RoofplanError("--device cuda: torch sees no CUDA device here (CPU build or no GPU); use --device cpu")
    dev = torch.device(device)
    check_dense_decoder(cfg)
    # refuse in one line what the host RAM or the device's free memory cannot hold (executor/fits.py)
    check_plan_memory(cfg, ps, device, device_free=(*torch.cuda.mem_get_info(dev), torch.cuda.get_device_name(dev))
                      if dev.type == "cuda" else None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    ex = PlanExecutor(cfg, ps, dev, seed, nvme_dir)
    try:
        for _ in range(warmup):
            ex.generate()
        runs = []
        for _ in range(steps):
            t = {}
            t0 = time.perf_counter()
            ex.generate(t)
            t["time_s"] = time.perf_counter() - t0
            runs.append(t)
        if trace_path:
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
            with profile(activities=acts, record_shapes=True) as prof:
                ex.generate()
            _export(prof, Path(trace_path))
    finally:
        ex.close()
    med = statistics.median(r["time_s"] for r in runs)
    pick = min(runs, key=lambda r: abs(r["time_s"] - med))
    result = {
        "schema": "roofplan.plan-run/1", "model": cfg.name, "plan": plan_path, "phase": ps.phase,
        "device": device, "dtype": ps.dtype,
        "schedule": {"gpu_batch_size": ps.gpu_batch_size, "num_gpu_batches": ps.num_gpu_batches,
                     "block_size": ps.gpu_batch_size * ps.num_gpu_batches, "order": "zig-zag"},
        "placement": {"weights_planned": ps.weights, "weights_effective": ex.effective,
                      "weight_tensors": ex.tiers, "kv_cache": ps.kv_tier, "activations": ps.act_tier,
                      "attention": ps.attention},
        "workload": {"prompt_len": ps.prompt_len, "gen_len": ps.gen_len if ps.phase == "decode" else None},
        "tokens": ps.tokens, "time_s": med, "times_s": [r["time_s"] for r in runs],
        "prefill_s": pick["prefill_s"], "decode_s": pick["decode_s"], "tokens_per_s": ps.tokens / med,
        "host_memory": ex.weights.host_memory, "overlap": ex.weights.stream is not None,
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "params": ex.n_params, "seed": seed,
    }
    if dev.type == "cuda":
        result["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(dev))
    if trace_path:
        result["trace"] = str(trace_path)
    if result_path:
        Path(result_path).write_text(json.dumps(result, indent=2))
    return result
