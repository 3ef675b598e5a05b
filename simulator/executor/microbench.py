"""Microbenchmarks of this machine, written in the microbench.jsonl format that `roofplan
calibrate --microbench` fits (the format of measurements/h100-sxm/microbench.jsonl; one JSON
object per line, `kind` says which):

  env          the device, torch, threads, host CPU and memory, the budget
  gemm         y[M,N] = x[M,K] @ w[K,N] per dtype (bf16 at transformer-layer shapes; fp16, fp32,
               tf32 and fp8 (torch._scaled_mm) on cuda; fp32 at the same shapes on cpu)
  attn_prefill causal SDPA with GQA, forward (`time_s`) and forward + backward (`fwd_bwd_time_s`)
  attn_decode  one query token per sequence against L cached tokens (`kv_bytes`)
  elementwise  add, SiLU * mul, eager RMSNorm (`dtype`: bf16 on cuda, fp32 on cpu)
  launch       one tiny kernel (`tiny_add`), 100 tiny kernels issued eagerly (host launch rate)
  copy         device -> device; host -> device and back, pinned and pageable
  nvme         write then read of a file in the offload folder (`--nvme-dir`)
  cpu          host memcpy, fp32 GEMM, AdamW (foreach and for-loop), decode attention over a KV cache
  skip         what was not measured and why (`what`, `reason`): calibrate names it when a figure
               is missing

On cpu the "device" is host memory: a host <-> device copy is a host memcpy, which is what the
executor's copies are on cpu, so the copy rows measure exactly that and say so (`stand_in`).

Timing: on cuda, CUDA events around each repetition, L2 flushed before each (a buffer twice the
L2 is zeroed), the median; on cpu, wall time, the minimum over repetitions (other processes only
add time). Budgets: `quick` (< 3 minutes on a GPU, seconds on a CPU) and `full` (more shapes and
sizes, more repetitions).
"""
from __future__ import annotations

import datetime
import json
import mmap
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from simulator.core.errors import RoofplanError
from simulator.executor.model import RMSNorm

BUDGETS = ("quick", "full")
MiB = 2**20
GiB = 2**30
NVME_BLOCK = 16 * MiB          # dd-style 16 MiB blocks, as the shared measurements' disk figures
NVME_FILE = "roofplan-microbench-nvme.bin"

# transformer-layer GEMM shapes (N, K) of a fused-QKV, fused gate-up decoder, by model:
# qkv [hidden -> (heads + 2 kv_heads) x head_dim], o, gate+up [hidden -> 2 ffn], down
LAYER_SHAPES = {
    "llama-3.1-8b": {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)},
    "llama-3.2-1b": {"qkv": (3072, 2048), "o": (2048, 2048), "gate_up": (16384, 2048), "down": (2048, 8192)},
}
CPU_LAYER_SHAPES = {   # tests/data/tiny-llama.json and a model twice its width
    "tiny-llama": {"qkv": (512, 256), "o": (256, 256), "gate_up": (1024, 256), "down": (256, 512)},
    "small": {"qkv": (1024, 512), "o": (512, 512), "gate_up": (2048, 512), "down": (512, 1024)},
}


def _sizes(cuda: bool, quick: bool) -> dict:
    """What each section measures, by device and budget."""
    if cuda:
        return {
            "reps": 10 if quick else 30,
            "gemm_tokens": (1, 16, 128, 1024, 4096, 16384) if quick else (1, 8, 16, 64, 128, 512, 1024, 2048, 4096, 8192, 16384),
            "gemm_models": ("llama-3.1-8b",) if quick else tuple(LAYER_SHAPES),
            "gemm_squares": (1024, 4096, 8192) if quick else (256, 512, 1024, 2048, 4096, 8192, 16384),
            "gemm_other": ("fp16", "fp32", "tf32", "fp8"),
            "other_squares": (512, 2048, 8192) if quick else (256, 1024, 2048, 4096, 8192),
            "heads": (32, 8, 128), "attn_dtype": "bf16",
            "prefill": ((1, 1024), (1, 4096), (4, 2048), (16, 512), (1, 8192)) if quick else
                       ((1, 512), (1, 1024), (1, 2048), (1, 4096), (1, 8192), (4, 2048), (8, 1024), (16, 512), (32, 512)),
            "decode": ((1, 512), (16, 512), (16, 4096), (64, 2048), (128, 1024)) if quick else
                      tuple((b, l) for b in (1, 16, 64) for l in (512, 2048, 8192)) + ((128, 1024), (128, 4096)),
            "ew_dtype": "bf16", "ew_hidden": 4096, "ew_tokens": (16, 1024, 4096, 16384) if quick else (16, 256, 1024, 4096, 16384, 65536),
            "d2d": (256 * MiB,) if quick else (64 * MiB, 256 * MiB, GiB),
            "pinned": (MiB, 16 * MiB, 256 * MiB) if quick else (MiB, 16 * MiB, 256 * MiB, GiB),
            "pageable": (256 * MiB,) if quick else (256 * MiB, GiB),
            "nvme": 512 * MiB if quick else 4 * GiB,
            "cpu_copy": 256 * MiB if quick else GiB, "sgemm": (1024, 2048) if quick else (2048, 4096),
            "adam": 20_000_000 if quick else 100_000_000, "cpu_attn": ((4, 2048),) if quick else ((4, 2048), (16, 4096)),
            "cpu_heads": (32, 8, 128), "cpu_attn_dtype": "bf16",
        }
    return {
        "reps": 5 if quick else 15,
        "gemm_tokens": (1, 16, 64, 256, 1024) if quick else (1, 4, 16, 64, 128, 256, 512, 1024, 2048),
        "gemm_models": tuple(CPU_LAYER_SHAPES),
        "gemm_squares": (128, 256, 512) if quick else (64, 128, 256, 512, 1024),
        # bf16 (every profile needs its curve) at a few small shapes: a CPU has no bf16 matrix
        # units worth the name; fp32, what the executor runs on cpu, gets the layer shapes
        "gemm_other": ("bf16",), "other_squares": (64, 128, 256) if quick else (64, 128, 256, 512),
        "heads": (4, 2, 64), "attn_dtype": "fp32",
        "prefill": ((1, 64), (2, 128), (4, 128), (2, 256)) if quick else ((1, 64), (2, 128), (4, 128), (2, 256), (1, 512), (4, 512)),
        "decode": ((1, 128), (4, 256), (8, 512), (16, 1024)) if quick else ((1, 128), (4, 256), (8, 512), (16, 1024), (32, 2048)),
        "ew_dtype": "fp32", "ew_hidden": 1024, "ew_tokens": (16, 256, 2048, 16384) if quick else (16, 64, 256, 1024, 2048, 8192, 16384),
        "d2d": (MiB, 16 * MiB, 64 * MiB),
        "pinned": (MiB, 16 * MiB, 64 * MiB) if quick else (MiB, 16 * MiB, 64 * MiB, 256 * MiB),
        "pageable": (64 * MiB,) if quick else (64 * MiB, 256 * MiB),
        "nvme": 64 * MiB if quick else 512 * MiB,
        "cpu_copy": 64 * MiB if quick else 256 * MiB, "sgemm": (256, 512) if quick else (512, 1024),
        "adam": 2_000_000 if quick else 10_000_000, "cpu_attn": ((4, 512),) if quick else ((4, 512), (16, 2048)),
        "cpu_heads": (4, 2, 64), "cpu_attn_dtype": "fp32",
    }


TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}


CPU_MIN_TIME_S = 0.05          # cpu: keep repeating a cheap op until this much time was spent on it
CPU_MAX_REPS = 200


class Timer:
    """Times `fn` on the device: CUDA events with an L2 flush before each repetition (median),
    or wall time on cpu (minimum)."""

    def __init__(self, device: torch.device, reps: int):
        self.device, self.reps = device, reps
        self.cuda = device.type == "cuda"
        self.flush = None
        if self.cuda:
            l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 * MiB) or 64 * MiB
            self.flush = torch.empty(2 * l2, dtype=torch.uint8, device=device)

    def __call__(self, fn, reps: int | None = None, flush: bool = True) -> float:
        reps = reps or self.reps
        fn()
        if not self.cuda:
            return self._cpu_min(fn, reps)
        torch.cuda.synchronize(self.device)
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in ev:
            if flush:
                self.flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(self.device)
        return statistics.median(s.elapsed_time(e) for s, e in ev) / 1e3

    @staticmethod
    def _cpu_min(fn, reps: int) -> float:
        """The minimum of at least `reps` runs, repeated up to CPU_MIN_TIME_S of runs (at most
        CPU_MAX_REPS): on a shared machine a multithreaded op waits a scheduler quantum
        (milliseconds) whenever one of its threads is descheduled, so small ops need many tries
        to see one undisturbed run."""
        best, spent, n = float("inf"), 0.0, 0
        while n < reps or (spent < CPU_MIN_TIME_S and n < CPU_MAX_REPS):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            best, spent, n = min(best, dt), spent + dt, n + 1
        return best

    def wall(self, fn, reps: int | None = None) -> float:
        """Wall time of `fn` with the device synchronised (host-side costs: launch rates, CPU work)."""
        reps = reps or self.reps
        fn()
        if not self.cuda:
            return self._cpu_min(fn, reps)
        ts = []
        for _ in range(reps):
            if self.cuda:
                torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            fn()
            if self.cuda:
                torch.cuda.synchronize(self.device)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)


def _read_first(path: str, prefix: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return next((line.strip() for line in f if line.startswith(prefix)), "")
    except OSError:
        return ""


def env_record(dev: torch.device, budget: str) -> dict:
    """Where the measurements were taken: `gpu` is the CUDA device name (checked against
    `calibrate --hardware`), empty on cpu."""
    cuda = dev.type == "cuda"
    r = {"kind": "env", "gpu": torch.cuda.get_device_name(dev) if cuda else "", "device": dev.type, "budget": budget,
         "torch": torch.__version__, "threads": torch.get_num_threads(), "nproc": os.cpu_count(),
         "cpu": _read_first("/proc/cpuinfo", "model name").partition(":")[2].strip() or platform.processor(),
         "meminfo": _read_first("/proc/meminfo", "MemTotal"), "measured": datetime.date.today().isoformat(),
         "tool": "roofplan microbench"}
    if cuda:
        p = torch.cuda.get_device_properties(dev)
        r.update(cuda=torch.version.cuda, sms=p.multi_processor_count, mem_bytes=p.total_memory,
                 l2_bytes=getattr(p, "L2_cache_size", None), capability=f"{p.major}.{p.minor}")
    else:
        # the fp32 GEMMs (what the executor runs on cpu) get the full curve fit, bf16 is scaled from them
        r["gemm_base_dtype"] = "fp32"
        r.update(cpu_mhz=_cpu_mhz(), l2_bytes=_l2_bytes())
    return r


def _cpu_mhz() -> float | None:
    """The fastest core clock /proc/cpuinfo reports ("cpu MHz : 2596.120"), MHz; None when absent."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            mhz = [float(line.partition(":")[2]) for line in f if line.startswith("cpu MHz")]
    except (OSError, ValueError):
        return None
    return max(mhz) if mhz else None


def _l2_bytes() -> int | None:
    """CPU 0's level-2 cache from sysfs (/sys/devices/system/cpu/cpu0/cache/index*/{level,size}: "1024K"), bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (d / "level").read_text().strip() == "2":
                size = (d / "size").read_text().strip()
                return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        except (OSError, ValueError):
            continue
    return None


def _gemm_rows(dev, timer: Timer, sz: dict) -> list[dict]:
    cuda = dev.type == "cuda"
    rows: list[dict] = []
    base = "bf16" if cuda else "fp32"
    shapes = []
    for model in sz["gemm_models"]:
        for tag, (N, K) in (LAYER_SHAPES if cuda else CPU_LAYER_SHAPES)[model].items():
            shapes += [(M, N, K, f"{model}:{tag}") for M in sz["gemm_tokens"]]
    shapes += [(n, n, n, "square") for n in sz["gemm_squares"]]
    for M, N, K, tag in shapes:
        rows.append(_gemm(dev, timer, base, M, N, K, tag))
    for dt in sz["gemm_other"]:
        for n in sz["other_squares"]:
            try:
                rows.append(_gemm(dev, timer, dt, n, n, n, "square"))
            except (RuntimeError, TypeError) as e:       # fp8 needs compute capability >= 8.9
                rows.append({"kind": "skip", "what": f"gemm {dt}", "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"})
                break
    return rows


def _gemm(dev, timer: Timer, dt: str, M: int, N: int, K: int, tag: str) -> dict:
    if dt == "fp8":
        x = torch.randn(M, K, device=dev).to(torch.float8_e4m3fn)
        w = torch.randn(N, K, device=dev).to(torch.float8_e4m3fn).t()      # column-major, as _scaled_mm needs
        one = torch.ones((), device=dev)

        def fn():
            return torch._scaled_mm(x, w, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    else:
        x = torch.randn(M, K, dtype=TORCH_DTYPES[dt], device=dev)
        w = torch.randn(K, N, dtype=TORCH_DTYPES[dt], device=dev)

        def fn():
            return x @ w
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dt == "tf32"
    try:
        t = timer(fn)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return {"kind": "gemm", "M": M, "N": N, "K": K, "dtype": dt, "tag": tag, "time_s": t, "tflops": 2 * M * N * K / t / 1e12}


def _attention_rows(dev, timer: Timer, sz: dict) -> list[dict]:
    Hq, Hkv, D = sz["heads"]
    dt = TORCH_DTYPES[sz["attn_dtype"]]
    rows = []
    for B, S in sz["prefill"]:
        q, k, v = (torch.randn(B, h, S, D, dtype=dt, device=dev, requires_grad=True) for h in (Hq, Hkv, Hkv))
        g = torch.randn(B, Hq, S, D, dtype=dt, device=dev)

        def fwd():
            with torch.no_grad():
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hkv != Hq)

        def fwd_bwd():
            q.grad = k.grad = v.grad = None
            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hkv != Hq).backward(g)
        rows.append({"kind": "attn_prefill", "B": B, "Hq": Hq, "Hkv": Hkv, "S": S, "D": D, "causal": True,
                     "dtype": sz["attn_dtype"], "time_s": timer(fwd), "fwd_bwd_time_s": timer(fwd_bwd)})
    with torch.no_grad():
        for B, L in sz["decode"]:
            q = torch.randn(B, Hq, 1, D, dtype=dt, device=dev)
            k, v = (torch.randn(B, Hkv, L, D, dtype=dt, device=dev) for _ in range(2))
            t = timer(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=Hkv != Hq))
            rows.append({"kind": "attn_decode", "B": B, "Hq": Hq, "Hkv": Hkv, "L": L, "D": D, "dtype": sz["attn_dtype"],
                         "time_s": t, "kv_bytes": 2 * B * Hkv * L * D * k.element_size()})
    return rows


def _elementwise_rows(dev, timer: Timer, sz: dict) -> list[dict]:
    H, dt = sz["ew_hidden"], sz["ew_dtype"]
    norm = RMSNorm(H).to(dev, TORCH_DTYPES[dt])     # the weight in the model's dtype, as the executor casts it
    rows = []
    with torch.no_grad():
        for T in sz["ew_tokens"]:
            a = torch.randn(T, H, dtype=TORCH_DTYPES[dt], device=dev)
            b = torch.randn(T, H, dtype=TORCH_DTYPES[dt], device=dev)
            # outputs written into a buffer: the streaming rate, not the allocator (on cpu a fresh
            # large tensor is page-faulted in on every call; the GPU's caching allocator hides it)
            c = torch.empty_like(a)
            for op, fn in (("add", lambda: torch.add(a, b, out=c)), ("silu_mul", lambda: torch.mul(F.silu(a), b, out=c)),
                           ("rmsnorm_eager", lambda: norm(a))):
                rows.append({"kind": "elementwise", "op": op, "T": T, "H": H, "dtype": dt, "time_s": timer(fn)})
            del a, b, c
    tiny = torch.ones(1, device=dev)
    rows.append({"kind": "launch", "op": "tiny_add", "time_s": timer(lambda: tiny.add_(1), reps=10 * timer.reps, flush=False)})

    def hundred():
        for _ in range(100):
            tiny.add_(1)
    rows.append({"kind": "launch", "op": "100_tiny_adds_eager", "time_s": timer.wall(hundred)})
    return rows


def _copy_rows(dev, timer: Timer, sz: dict) -> list[dict]:
    cuda = dev.type == "cuda"
    rows = []
    for n in sz["d2d"]:
        src = torch.empty(n, dtype=torch.uint8, device=dev).random_()
        dst = torch.empty_like(src)
        t = timer(lambda: dst.copy_(src), flush=False)
        rows.append({"kind": "copy", "src": "gpu", "dst": "gpu", "bytes": n, "time_s": t, "GBps_rw": 2 * n / t / 1e9})
        del src, dst
    stand_in = None if cuda else ("host memcpy: on cpu the device is host memory, so the executor's host <-> device "
                                  "copies are memcpys (nothing is pinned)")
    for place, sizes in (("cpu_pinned", sz["pinned"]), ("cpu_pageable", sz["pageable"])):
        for n in sizes:
            host = torch.empty(n, dtype=torch.uint8, pin_memory=cuda and place == "cpu_pinned").random_()
            devbuf = torch.empty(n, dtype=torch.uint8, device=dev)
            for src, dst, fn in ((place, "gpu", lambda: devbuf.copy_(host, non_blocking=True)),
                                 ("gpu", place, lambda: host.copy_(devbuf, non_blocking=True))):
                # a pageable copy is staged by the host: its wall time (device synchronised) is
                # what a caller waits; a pinned one is a DMA on the stream (CUDA events)
                t = timer(fn, flush=False) if place == "cpu_pinned" else timer.wall(fn)
                r = {"kind": "copy", "src": src, "dst": dst, "bytes": n, "time_s": t, "GBps": n / t / 1e9}
                if stand_in:
                    r["stand_in"] = stand_in
                elif place == "cpu_pinned" and not host.is_pinned():
                    raise RoofplanError("pinned host memory could not be allocated; the pinned copies cannot be measured")
                rows.append(r)
            del host, devbuf
    return rows


def _fs_type(path: Path) -> str:
    """The file system the folder is on (/proc/mounts: the longest mount point that holds it)."""
    best, fs = "", ""
    try:
        real = str(path.resolve())
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")) and len(parts[1]) >= len(best):
                    best, fs = parts[1], parts[2]
    except OSError:
        pass
    return fs


def nvme_rows(nvme_dir: str | Path | None, nbytes: int) -> list[dict]:
    """Sequential write then read of `nbytes` in 16 MiB blocks in `nvme_dir` (the folder the
    offload executor streams NVMe-placed weights from). O_DIRECT where the file system takes it
    (the page cache bypassed, as dd oflag=direct); else buffered with fsync after the write and
    the file's pages dropped (posix_fadvise DONTNEED) before the read. `method` says which."""
    if nvme_dir is None:
        return [{"kind": "skip", "what": "nvme", "reason": "no --nvme-dir given (the folder offloaded weights live in)"}]
    d = Path(nvme_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RoofplanError(f"--nvme-dir {d}: cannot create it ({e.strerror}); give a writable folder") from None
    path = d / NVME_FILE
    blocks = max(1, nbytes // NVME_BLOCK)
    buf = mmap.mmap(-1, NVME_BLOCK)                     # page-aligned, as O_DIRECT needs
    buf.write(os.urandom(1 << 20) * (NVME_BLOCK >> 20))
    direct = getattr(os, "O_DIRECT", 0)
    rows = []
    try:
        for attempt in ((direct,) if direct else ()) + (0,):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | attempt, 0o600)
            except OSError:
                continue
            try:
                t0 = time.perf_counter()
                for _ in range(blocks):
                    os.write(fd, buf)
                os.fsync(fd)
                t_write = time.perf_counter() - t0
            except OSError:
                os.close(fd)
                if attempt:
                    continue                            # the file system refuses O_DIRECT writes
                raise
            os.close(fd)
            method = "O_DIRECT" if attempt else "buffered + fsync, page cache dropped before the read"
            if not attempt and hasattr(os, "posix_fadvise"):
                fd = os.open(path, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
            fd = os.open(path, os.O_RDONLY | attempt)
            try:
                t0 = time.perf_counter()
                for _ in range(blocks):
                    os.readv(fd, [buf])
                t_read = time.perf_counter() - t0
            finally:
                os.close(fd)
            n = blocks * NVME_BLOCK
            common = {"bytes": n, "block_bytes": NVME_BLOCK, "method": method, "dir": str(d), "fs": _fs_type(d)}
            rows = [{"kind": "nvme", "op": "write", "time_s": t_write, "GBps": n / t_write / 1e9, **common},
                    {"kind": "nvme", "op": "read", "time_s": t_read, "GBps": n / t_read / 1e9, **common}]
            break
    except OSError as e:
        raise RoofplanError(f"--nvme-dir {d}: {e.strerror} while measuring; give a folder with {nbytes / GiB:.2g} GiB free") from None
    finally:
        buf.close()
        path.unlink(missing_ok=True)
    return rows


def cpu_rows(sz: dict, reps: int) -> list[dict]:
    """The host CPU (torch on cpu, its threads): memcpy, fp32 GEMM, AdamW, decode attention."""
    cpu = torch.device("cpu")
    timer = Timer(cpu, reps)
    rows = []
    n = sz["cpu_copy"]
    a = torch.empty(n, dtype=torch.uint8).random_()
    b = torch.empty_like(a)
    t = timer(lambda: b.copy_(a))
    rows.append({"kind": "cpu", "op": "copy", "bytes": n, "time_s": t, "GBps_rw": 2 * n / t / 1e9})
    del a, b
    for m in sz["sgemm"]:
        x, w = torch.randn(m, m), torch.randn(m, m)
        t = timer(lambda: x @ w)
        rows.append({"kind": "cpu", "op": "sgemm", "n": m, "time_s": t, "tflops": 2 * m ** 3 / t / 1e12})
    P = sz["adam"]
    for op, foreach in (("adamw_foreach", True), ("adamw_for_loop", False)):
        params = [torch.nn.Parameter(torch.randn(P // 8)) for _ in range(8)]
        for p in params:
            p.grad = torch.randn_like(p)
        opt = torch.optim.AdamW(params, lr=1e-4, foreach=foreach)
        t = timer(opt.step, reps=max(2, reps // 2))
        rows.append({"kind": "cpu", "op": op, "params": P, "time_s": t, "params_per_s": P / t})
        del params, opt
    Hq, Hkv, D = sz["cpu_heads"]
    dt = TORCH_DTYPES[sz["cpu_attn_dtype"]]
    with torch.no_grad():
        for B, L in sz["cpu_attn"]:
            q = torch.randn(B, Hq, 1, D, dtype=dt)
            k, v = torch.randn(B, Hkv, L, D, dtype=dt), torch.randn(B, Hkv, L, D, dtype=dt)
            t = timer(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=Hkv != Hq))
            kv = 2 * B * Hkv * L * D * k.element_size()
            rows.append({"kind": "cpu", "op": "attention", "B": B, "Hq": Hq, "Hkv": Hkv, "L": L, "D": D,
                         "dtype": sz["cpu_attn_dtype"], "kv_bytes": kv, "time_s": t, "GBps": kv / t / 1e9})
    return rows


SECTIONS = ("gemm", "attention", "elementwise", "copy", "nvme", "cpu")


def run_microbench(device: str = "cpu", budget: str = "quick", nvme_dir: str | Path | None = None,
                   log=None) -> list[dict]:
    """Every section on `device` within `budget`, with torch's threads as they are set (the env
    record says how many); `log(section, seconds)` is told as each ends."""
    if budget not in BUDGETS:
        raise RoofplanError(f"budget {budget!r} is unknown; use one of {', '.join(BUDGETS)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RoofplanError("--device cuda: torch sees no CUDA device here (CPU build or no GPU); use --device cpu")
    if device not in ("cpu", "cuda"):
        raise RoofplanError(f"--device {device} is unknown; use cpu or cuda")
    dev = torch.device(device)
    quick = budget == "quick"
    sz = _sizes(dev.type == "cuda", quick)
    timer = Timer(dev, sz["reps"])
    rows = [env_record(dev, budget)]
    torch.manual_seed(0)
    sections = {"gemm": lambda: _gemm_rows(dev, timer, sz), "attention": lambda: _attention_rows(dev, timer, sz),
                "elementwise": lambda: _elementwise_rows(dev, timer, sz), "copy": lambda: _copy_rows(dev, timer, sz),
                "nvme": lambda: nvme_rows(nvme_dir, sz["nvme"]), "cpu": lambda: cpu_rows(sz, sz["reps"])}
    for name in SECTIONS:
        t0 = time.perf_counter()
        rows += sections[name]()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        if log:
            log(name, time.perf_counter() - t0)
    return rows


def write_microbench(path: str | Path, rows: list[dict]) -> None:
    try:
        Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    except OSError as e:
        raise RoofplanError(f"cannot write {path} ({e.strerror}); pass another -o") from None
