"""Run one step of a job on a real device, time it, and record a profiler trace.

Modes (Job.phase and options): prefill (one forward, logits of the last position), decode (one
token per sequence against `context` cached tokens; on cuda replayed from a CUDA graph unless
`cuda_graph=False`), train (fp32 master weights + bf16 autocast on cuda / fp32 on cpu, full
vocabulary cross entropy, AdamW, optional per-layer recompute), LoRA (frozen base, adapters on
every linear of the decoder layers) and weight offload (layer weights in pinned host memory,
streamed into two device buffers on a side stream while the previous layer computes; on cpu the
same code path copies synchronously).

Timing: `warmup` untimed steps, then the median wall time of `steps` steps (device synchronised
after each). Trace: torch.profiler over `trace_steps` more steps with record_shapes=True,
prof.step() per step and record_function labels per phase, layer and weight transfer.

The result says what really ran, never the request echoed: `cuda_graph` is whether a graph was
captured and replayed, `host_memory` whether the streamed weights are really pinned, `overlap`
whether their copies run on a side stream, `dtype` the compute dtype and `weights_dtype` the
parameters' (a cpu training step runs fp32 whatever was asked), `threads` torch's intra-op
threads; the request itself is under `requested`.
"""
from __future__ import annotations

import contextlib
import copy
import gzip
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from simulator.core.errors import RoofplanError
from simulator.core.models import ModelConfig
from simulator.executor.fits import check_dense_decoder, check_device_memory, check_host_memory
from simulator.core.workload import ALL_LINEAR
from simulator.executor.model import Decoder, apply_lora

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


@dataclass(frozen=True)
class RunSpec:
    phase: str
    batch: int = 1
    seq: int = 0
    context: int = 0
    dtype: str = "bf16"
    device: str = "cpu"
    recompute: str = "none"
    lora_rank: int = 0
    lora_targets: str = ALL_LINEAR
    offload_weights: str = "gpu"
    host_memory: str = "pinned"
    overlap: bool = True
    cuda_graph: bool = True
    steps: int = 5
    warmup: int = 2
    trace_steps: int = 2
    seed: int = 0


class LayerStreamer:
    """Layer weights on the host, two device slots; layer i+1 is copied into the other slot on a
    side stream while layer i computes (events order copy after the slot's last use)."""

    def __init__(self, model: Decoder, device: torch.device, pinned: bool, overlap: bool):
        cuda = device.type == "cuda"
        self.host = []
        for blk in model.layers:
            ps = [p.detach().cpu() for p in blk.parameters()]
            self.host.append([p.pin_memory() if pinned and cuda else p.clone() for p in ps])
        self.slots = [copy.deepcopy(model.layers[0]).to(device) for _ in range(2)]
        self.n = len(model.layers)
        self.overlap = overlap
        self.stream = torch.cuda.Stream(device) if cuda else None
        self.ready = [torch.cuda.Event() for _ in range(2)] if cuda else None
        self.free = [torch.cuda.Event() for _ in range(2)] if cuda else None
        self.issued = -1

    def _copy(self, i: int) -> None:
        slot = self.slots[i % 2]
        with record_function(f"h2d layer{i}"):
            if self.stream is None:
                for dst, src in zip(slot.parameters(), self.host[i]):
                    dst.data.copy_(src)
                return
            self.stream.wait_event(self.free[i % 2])
            with torch.cuda.stream(self.stream):
                for dst, src in zip(slot.parameters(), self.host[i]):
                    dst.data.copy_(src, non_blocking=True)
                self.ready[i % 2].record(self.stream)

    def get(self, i: int):
        if i == 0 or not self.overlap:
            self._copy(i)
        if self.overlap and i + 1 < self.n:
            self._copy(i + 1)
        if self.stream is not None:
            torch.cuda.current_stream().wait_event(self.ready[i % 2])
        return self.slots[i % 2]

    def done(self, i: int) -> None:
        if self.free is not None:
            self.free[i % 2].record(torch.cuda.current_stream())


def forward(model: Decoder, ids, pos0: int, caches, streamer=None, last_only=True, recompute=False):
    x = model.embed_tokens(ids, pos0)
    cos, sin = model.rope(pos0, ids.shape[1], x.dtype)
    for i in range(len(model.layers) if streamer is None else streamer.n):
        with record_function(f"layer{i}"):
            blk = model.layers[i] if streamer is None else streamer.get(i)
            kc, vc = caches[i] if caches else (None, None)
            if recompute:
                x = torch.utils.checkpoint.checkpoint(blk, x, cos, sin, kc, vc, pos0, use_reentrant=False)
            else:
                x = blk(x, cos, sin, kc, vc, pos0)
            if streamer is not None:
                streamer.done(i)
    return model.head(x, last_only)


def move_ends(model: Decoder, device: torch.device) -> None:
    """Everything outside the decoder layers to the device: embedding, learned positions
    (OPT/GPT-2), final norm, LM head and the RoPE tables (weight offload keeps only the layers on
    the host)."""
    for name in ("embed", "pos", "norm", "lm_head"):
        mod = getattr(model, name)
        if mod is not None:
            mod.to(device)
    model.cos, model.sin = model.cos.to(device), model.sin.to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_step(cfg: ModelConfig, spec: RunSpec, device: torch.device):
    """(step function, model, what applied) for the spec; all allocation happens here, not in the
    step. `applied`: the settings as they really are (module docstring)."""
    torch.manual_seed(spec.seed)
    cuda = device.type == "cuda"
    train = spec.phase == "train"
    dtype = torch.float32 if train else TORCH_DTYPES[spec.dtype]
    q_len = 1 if spec.phase == "decode" else spec.seq
    max_len = spec.context + q_len
    offload = spec.offload_weights == "cpu"
    with torch.device("cpu" if offload else device):
        model = Decoder(cfg, max_len)
    model = model.to(dtype)
    for p in model.parameters():          # random normal weights, never zeros (as the measurements)
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.02)
    streamer = None
    if offload:
        if train:
            raise RoofplanError("--offload weights=cpu applies to prefill and decode in the executor")
        move_ends(model, device)
        streamer = LayerStreamer(model, device, spec.host_memory == "pinned", spec.overlap)
        model.n_params = sum(p.numel() for p in model.parameters())
        model.layers = torch.nn.ModuleList()      # the streamer's host copies are the only ones now
    ids = torch.randint(0, cfg.vocab, (spec.batch, q_len), device=device)
    amp_dtype = TORCH_DTYPES[spec.dtype] if train and cuda and spec.dtype != "fp32" else None
    applied = {"device": device.type, "dtype": spec.dtype if amp_dtype else DTYPE_NAMES[dtype],
               "weights_dtype": DTYPE_NAMES[dtype], "autocast": bool(amp_dtype), "cuda_graph": False,
               "offload_weights": "cpu" if offload else "gpu", "host_memory": None, "overlap": None,
               "recompute": spec.recompute if train else "none", "lora_rank": spec.lora_rank if train else 0,
               "lora_targets": spec.lora_targets if train and spec.lora_rank else None}
    if streamer is not None:
        host = [t for layer in streamer.host for t in layer]
        applied["host_memory"] = "pinned" if host and all(t.is_pinned() for t in host) else "pageable"
        # on cpu the same code copies synchronously: nothing overlaps
        applied["overlap"] = bool(streamer.stream is not None and spec.overlap)
    if train:
        params = apply_lora(model, spec.lora_rank, spec.lora_targets) if spec.lora_rank else list(model.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
        labels = torch.randint(0, cfg.vocab, (spec.batch, q_len), device=device)
        amp = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

        def step():
            with record_function("train.forward"), amp:
                logits = forward(model, ids, 0, None, last_only=False, recompute=spec.recompute == "full")
                loss = F.cross_entropy(logits.float().view(-1, cfg.vocab), labels.view(-1))
            with record_function("train.backward"):
                loss.backward()
            with record_function("train.optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)
        return step, model, applied
    caches = None
    if spec.phase == "decode" or spec.context:
        shape = (spec.batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        caches = [(torch.randn(shape, dtype=dtype, device=device), torch.randn(shape, dtype=dtype, device=device))
                  for _ in range(cfg.n_layers)]
    pos0 = spec.context if spec.phase == "decode" else 0

    @torch.no_grad()
    def eager():
        with record_function(spec.phase):
            return forward(model, ids, pos0, caches, streamer)
    if spec.phase == "decode" and cuda and spec.cuda_graph and not offload:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                eager()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            eager()

        def replay():
            with record_function("decode.graph_replay"):
                graph.replay()
        return replay, model, {**applied, "cuda_graph": True}
    return eager, model, applied


def check_fits(cfg: ModelConfig, spec: RunSpec, device: torch.device) -> None:
    """Refuse, in one line, a run this machine's host RAM or the device's free memory cannot hold
    (executor/fits.py), before anything is allocated."""
    check_dense_decoder(cfg)
    check_host_memory(cfg, spec, spec.device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        check_device_memory(cfg, spec, torch.cuda.get_device_name(device), free, total)


def run(cfg: ModelConfig, spec: RunSpec, trace_path: str | None = None, result_path: str | None = None) -> dict:
    """Time the step, optionally trace it; returns (and writes) the result dict."""
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise RoofplanError("--device cuda: torch sees no CUDA device here (CPU build or no GPU); use --device cpu")
    if spec.device not in ("cpu", "cuda"):
        raise RoofplanError(f"--device {spec.device} is unknown; use cpu or cuda")
    device = torch.device(spec.device)
    check_fits(cfg, spec, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step, model, applied = build_step(cfg, spec, device)
    for _ in range(spec.warmup):
        step()
    _sync(device)
    times = []
    for _ in range(spec.steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    job = {k: v for k, v in asdict(spec).items() if k in ("phase", "batch", "seq", "context", "steps", "warmup",
                                                          "trace_steps", "seed")}
    result = {
        "model": cfg.name, **job, **applied, "time_s": statistics.median(times), "times_s": times,
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "params": getattr(model, "n_params", None) or sum(p.numel() for p in model.parameters()),
        "requested": asdict(spec),
    }
    if device.type == "cuda":
        result["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    if trace_path:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        # a schedule makes prof.step() label each step ProfilerStep#N (the segments of the trace)
        sched = torch.profiler.schedule(wait=0, warmup=1, active=spec.trace_steps, repeat=1)
        with profile(activities=acts, record_shapes=True, schedule=sched) as prof:
            for _ in range(spec.trace_steps + 1):
                step()
                _sync(device)
                prof.step()
        _export(prof, Path(trace_path))
        result["trace"] = str(trace_path)
    if result_path:
        Path(result_path).write_text(json.dumps(result, indent=2))
    return result


def _export(prof, path: Path) -> None:
    if path.suffix != ".gz":
        prof.export_chrome_trace(str(path))
        return
    fd, tmp = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(tmp)
        path.write_bytes(gzip.compress(Path(tmp).read_bytes()))
    finally:
        os.unlink(tmp)
