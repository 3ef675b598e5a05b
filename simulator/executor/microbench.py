"""Microbenchmarks on this machine's device, written in the microbench.jsonl format that
`roofplan calibrate --microbench` fits (the format of measurements/h100-sxm/microbench.jsonl):
GEMMs (bf16, and fp32 for CPU training), causal SDPA prefill, single-token SDPA decode, eager
add / SiLU*mul / RMSNorm, device copies and one tiny kernel. Each row is the minimum over
repetitions (contention from other processes only adds time).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from simulator.executor.model import RMSNorm


def _time(fn, device, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def run_microbench(device: str = "cpu", scale: int = 1, reps: int = 10) -> list[dict]:
    """`scale` multiplies the sizes (1: seconds on a laptop CPU; use 8-16 on a GPU)."""
    dev = torch.device(device)
    rows: list[dict] = []
    s = scale
    gemm_shapes = [(16, 256, 256), (64, 256, 768), (128, 256, 256), (128, 512, 256), (128, 256, 1024),
                   (256, 768, 256), (256, 1024, 256), (512, 256, 512), (512, 512, 512), (1024, 256, 768)]
    # a CPU has no bf16 matrix units worth the name: small bf16 shapes suffice for the curve that
    # every kernel profile needs; the fp32 rows carry a CPU's real work
    bf16_shapes = [(max(8, m // 4), max(8, n // 4), max(8, k // 4)) for m, n, k in gemm_shapes] if dev.type == "cpu" else gemm_shapes
    for dt, shapes in (("bf16", bf16_shapes), ("fp32", gemm_shapes)):
        tdt = {"bf16": torch.bfloat16, "fp32": torch.float32}[dt]
        for M, N, K in shapes:
            M, N, K = M * s, N * s, K * s
            x = torch.randn(M, K, dtype=tdt, device=dev)
            w = torch.randn(K, N, dtype=tdt, device=dev)
            t = _time(lambda: x @ w, dev, reps)
            rows.append({"kind": "gemm", "M": M, "N": N, "K": K, "dtype": dt, "time_s": t, "tflops": 2 * M * N * K / t / 1e12})
    for B, S in ((1, 64), (2, 128), (4, 128), (2, 256)):
        Hq, Hkv, D = 4, 2, 64
        q = torch.randn(B, Hq, S * s, D, device=dev)
        k = torch.randn(B, Hkv, S * s, D, device=dev)
        v = torch.randn(B, Hkv, S * s, D, device=dev)
        t = _time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), dev, reps)
        rows.append({"kind": "attn_prefill", "B": B, "Hq": Hq, "Hkv": Hkv, "S": S * s, "D": D, "causal": True,
                     "dtype": "fp32", "time_s": t})
    for B, L in ((1, 128), (4, 256), (8, 512), (16, 1024)):
        Hq, Hkv, D = 4, 2, 64
        q = torch.randn(B, Hq, 1, D, device=dev)
        k = torch.randn(B, Hkv, L * s, D, device=dev)
        v = torch.randn(B, Hkv, L * s, D, device=dev)
        t = _time(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), dev, reps)
        rows.append({"kind": "attn_decode", "B": B, "Hq": Hq, "Hkv": Hkv, "L": L * s, "D": D, "dtype": "fp32",
                     "time_s": t, "kv_bytes": 2 * B * Hkv * L * s * D * 4})
    norm = RMSNorm(1024).to(dev)
    for T in (16, 256, 2048):
        H = 1024
        a = torch.randn(T * s, H, dtype=torch.bfloat16, device=dev)
        b = torch.randn(T * s, H, dtype=torch.bfloat16, device=dev)
        rows.append({"kind": "elementwise", "op": "add", "T": T * s, "H": H, "time_s": _time(lambda: a + b, dev, reps)})
        rows.append({"kind": "elementwise", "op": "silu_mul", "T": T * s, "H": H,
                     "time_s": _time(lambda: F.silu(a) * b, dev, reps)})
        with torch.no_grad():
            rows.append({"kind": "elementwise", "op": "rmsnorm_eager", "T": T * s, "H": H,
                         "time_s": _time(lambda: norm(a), dev, reps)})
    for n in (2**20, 2**24):
        src = torch.empty(n * s, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        rows.append({"kind": "copy", "src": "gpu", "dst": "gpu", "bytes": n * s, "time_s": _time(lambda: dst.copy_(src), dev, reps)})
    tiny = torch.ones(1, device=dev)
    rows.append({"kind": "launch", "op": "tiny_add", "time_s": _time(lambda: tiny + 1, dev, reps * 10)})
    return rows


def write_microbench(path: str | Path, rows: list[dict]) -> None:
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))


def device_spec(rows: list[dict], name: str = "cpu-host") -> dict:
    """A GPU-format spec (hardware_specs/gpus/*.yaml fields) for a device that has no datasheet
    here -- this machine's CPU: peaks are 2x the best measured GEMM rate per dtype and 2x the best
    measured copy bandwidth, so they bound what the kernel profile's efficiencies (<= 1) scale.
    Drop it into $ROOFPLAN_HW_DIR/gpus/ to calibrate and predict against it."""
    import os
    peaks = {}
    for dt in ("bf16", "fp32"):
        r = [x["tflops"] for x in rows if x["kind"] == "gemm" and x["dtype"] == dt]
        if r:
            peaks[dt] = round(2 * max(r), 4)
    peaks.setdefault("fp32", peaks.get("bf16", 1.0))
    peaks.setdefault("bf16", peaks["fp32"])
    peaks["fp16"] = peaks["bf16"]
    copies = [2 * x["bytes"] / x["time_s"] / 1e9 for x in rows if x["kind"] == "copy"]
    bw = round(2 * max(copies), 1) if copies else 50.0
    return {
        "name": name, "kind": "gpu", "vendor": "host", "full_name": f"host CPU ({os.cpu_count()} cores) via torch",
        "architecture": "cpu", "memory_GiB": 16, "memory_bandwidth_GBps": bw, "l2_cache_MiB": 1, "sm_count": 1,
        "boost_clock_MHz": 1000, "tdp_W": 100, "peak_dense_TFLOPS": peaks, "host_link": "pcie-gen4-x16", "gpu_link": None,
        "source": "roofplan microbench on this machine: peaks = 2 x best measured GEMM rate, bandwidth = 2 x best measured copy",
    }
