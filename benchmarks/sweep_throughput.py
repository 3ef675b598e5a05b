"""Sweep throughput: configurations per second of the vectorised path (one core), with the
serving options (quantized weights and KV, prefix caching, chunked prefill: one predict_many call;
speculative decoding: three, simulator.sweep.speculative_many), and of an end-to-end
`roofplan sweep` (grid validation, estimate, process pool, shard files with their sha256
manifest, per-shard reductions, the output streamed from the shards), plain and with options.

    python benchmarks/sweep_throughput.py
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.core.models import load_model  # noqa: E402
from simulator.core.profiles import load_executor_profile, load_kernel_profile  # noqa: E402
from simulator.core.specs import load_hardware  # noqa: E402
from simulator.core.predict import predict_many  # noqa: E402
from simulator.core.workload import Job  # noqa: E402


def best_of(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def vectorised():
    model, system = load_model("llama-3.1-70b"), load_hardware("h100-sxm")
    ex, kp = load_executor_profile("default"), load_kernel_profile(system.gpu.name)
    rng = np.random.default_rng(0)
    for phase, tp in (("decode", 8), ("prefill", 8)):
        job = Job(phase=phase, tp=tp)
        # cartesian grid: ops evaluated on the axes they depend on, broadcast to the grid
        b = np.arange(1, 257)[:, None]
        s = np.arange(1, 4097)[None, :]
        kw = dict(context=s - 1) if phase == "decode" else dict(seq=s)
        n = b.size * s.size
        t = best_of(lambda: predict_many(model, system, job, b, executor=ex, kernels=kp, **kw))
        print(f"vectorised {phase:7s} llama-3.1-70b tp{tp}, cartesian {b.size}x{s.size} = {n:,} configs: "
              f"{n / t / 1e6:.1f} M configs/s")
        # scattered configurations (no shared axes): every op evaluated on every config
        n = 200_000
        bb = rng.integers(1, 257, n)
        ss = rng.integers(1, 4097, n)
        kw = dict(context=ss - 1) if phase == "decode" else dict(seq=ss)
        t = best_of(lambda: predict_many(model, system, job, bb, executor=ex, kernels=kp, **kw))
        print(f"vectorised {phase:7s} llama-3.1-70b tp{tp}, {n:,} random (batch, {'context' if phase == 'decode' else 'seq'}) "
              f"configs: {n / t / 1e6:.2f} M configs/s")


def vectorised_options():
    """The serving options on the same cartesian 256 x 4096 grid as `vectorised`."""
    from dataclasses import replace
    from simulator.sweep import speculative_many
    model, system = load_model("llama-3.1-70b"), load_hardware("h100-sxm")
    ex, kp = load_executor_profile("default"), load_kernel_profile(system.gpu.name)
    b = np.arange(1, 257)[:, None]
    s = np.arange(1, 4097)[None, :]
    n = b.size * s.size
    decode = Job(phase="decode", tp=8)
    cases = [
        ("decode int4 weights, fp8 KV", lambda: predict_many(model, system, replace(decode, weight_dtype="int4",
                                                                                    kv_dtype="fp8"),
                                                             b, context=s - 1, executor=ex, kernels=kp)),
        ("prefill prefix_hit 0.5", lambda: predict_many(model, system, Job(phase="prefill", tp=8, prefix_hit=0.5), b,
                                                        seq=s, executor=ex, kernels=kp)),
        ("decode + 512-token chunk", lambda: predict_many(model, system, replace(decode, chunk_tokens=512), b,
                                                          context=s - 1, executor=ex, kernels=kp)),
        ("decode speculative K=4 (head)", lambda: speculative_many(model, system, replace(decode, spec_tokens=4), 0.8,
                                                                  None, b, s - 1, ex, kp)),
        ("decode speculative K=4 (1B draft)", lambda: speculative_many(model, system, replace(decode, spec_tokens=4),
                                                                      0.8, load_model("llama-3.2-1b"), b, s - 1, ex,
                                                                      kp)),
    ]
    for name, fn in cases:
        t = best_of(fn)
        print(f"vectorised {name} llama-3.1-70b tp8, cartesian {b.size}x{s.size} = {n:,} configs: "
              f"{n / t / 1e6:.2f} M configs/s")


def end_to_end():
    """`roofplan sweep` on a 524,288-configuration grid: one file (CSV, or Parquet when pyarrow is
    installed: shards streamed into it) and a partitioned Parquet dataset (-o results/)."""
    import json
    import yaml
    from simulator.cli.main import main
    try:
        import pyarrow  # noqa: F401
        outputs = ["results.parquet", "results/"]
    except ImportError:
        outputs = ["results.csv"]
    plain = {"hardware": ["h100-sxm", "a100-sxm-80gb", "h200", "l40s"], "model": ["llama-3.1-8b", "llama-3.1-70b"],
             "phase": ["decode", "prefill"], "tp": [1, 2, 4, 8], "batch": list(range(1, 129)),
             "seq": list(range(128, 8193, 128)), "context": list(range(128, 8193, 128))}
    # the same size with serving options: 2 GPUs x 2 models x 4 tp x (3 weights x 2 KV x (plain + K=4)) decode
    options = dict(plain, hardware=["h100-sxm", "h200"], phase="decode", weight_dtype=["bf16", "fp8", "int4"],
                   kv_dtype=[None, "fp8"], spec_tokens=[0, 4], spec_acceptance=0.8)
    with tempfile.TemporaryDirectory() as d:
        runs = []
        for label, grid in (("", plain), (" options", options)):
            gpath = Path(d) / f"grid{label.strip()}.yaml"
            gpath.write_text(yaml.safe_dump(grid))
            runs += [(label, gpath, name) for name in (outputs if not label else outputs[:1])]
        for label, gpath, name in runs:
            for workers in (1, min(4, os.cpu_count() or 1)):
                out = Path(d) / f"w{workers}{label.strip()}-{name}"
                t0 = time.perf_counter()
                buf = io.StringIO()
                with contextlib.redirect_stdout(buf):   # the command's JSON summary
                    rc = main(["sweep", str(gpath), "-o", str(out) + ("/" if name.endswith("/") else ""),
                               "--workers", str(workers), "--shard-size", "65536", "--reduce", "pareto",
                               "--format", "json", "--quiet"])
                t = time.perf_counter() - t0
                n = json.loads(buf.getvalue())["configs"] if rc == 0 else 0
                print(f"end-to-end roofplan sweep{label} (-o {name}, --workers {workers}): {n:,} configs in {t:.2f} s "
                      f"= {n / t / 1e3:.0f} k configs/s (rc {rc})")


if __name__ == "__main__":
    vectorised()
    vectorised_options()
    end_to_end()
