"""Offload planner benchmark: solve times (target < 1 s for an 80-layer model), FlexGen's T4 rows
(Table 2) against our model and FlexGen's own cost model, and Fuyou's 13B fine-tuning.

    python benchmarks/plan_offload.py
"""
from __future__ import annotations

import time

from planners.flexgen import PUBLISHED, SOURCE, flexgen_cost_model, score_policy
from planners.offload import OffloadRequest, plan_offload
from simulator.core.models import load_model
from simulator.core.profiles import load_executor_profile, load_kernel_profile
from simulator.report.tables import table
from simulator.core.specs import load_hardware

FUYOU_TFLOPS, ZERO_INFINITY_TFLOPS = 156.0, 45.0   # Liao et al. 2024 (arXiv 2403.06504), abstract


def _setup(name):
    system = load_hardware(name)
    return system, load_kernel_profile(system.gpu.name)


def solve_times(ex) -> None:
    rows = []
    for hw, model, phase in [("flexgen-t4", "llama-3.1-70b", "decode"), ("fuyou-rtx-4090", "llama-3.1-70b", "decode"),
                             ("fuyou-rtx-4090", "llama-3.1-70b", "train"), ("flexgen-t4", "opt-175b", "decode")]:
        system, kp = _setup(hw)
        m = load_model(model)
        dtype = "bf16" if "bf16" in system.gpu.peak_flops_by_dtype else "fp16"
        plan_offload(m, system, OffloadRequest(phase=phase, dtype=dtype), ex, kp)    # warm imports
        t0 = time.perf_counter()
        p = plan_offload(m, system, OffloadRequest(phase=phase, dtype=dtype), ex, kp)
        dt = time.perf_counter() - t0
        rows.append([model, m.n_layers, hw, phase, p.solver["lps_solved"], f"{dt * 1e3:.0f} ms",
                     "yes" if dt < 1.0 else "NO", f"{p.tokens_per_s:,.2f}", p.binds])
    print("Solve time (whole search: every GPU batch x block x attention choice, one LP each)")
    print(table(rows, ["model", "layers", "hardware", "phase", "LPs", "solve", "< 1 s", "tokens/s", "binds"]))


def flexgen_rows(ex) -> None:
    system, kp = _setup("flexgen-t4")
    rows = []
    for name, pub in PUBLISHED.items():
        m = load_model(name)
        ours = score_policy(m, system, pub, ex, kp)
        best = plan_offload(m, system, OffloadRequest(phase="decode", dtype="fp16"), ex, kp)
        cm = flexgen_cost_model(m, pub)
        same = plan_offload(m, system, OffloadRequest(phase="decode", dtype="fp16",
                                                      batch=pub.gpu_batch_size * pub.num_gpu_batches), ex, kp)
        rows.append([name, f"{pub.throughput_tok_s:.2f}", f"{ours.tokens_per_s:.2f}",
                     f"{ours.tokens_per_s / pub.throughput_tok_s - 1:+.0%}", ours.binds,
                     f"{cm:.2f}", f"{cm / pub.throughput_tok_s - 1:+.0%}",
                     f"{same.tokens_per_s:.2f} ({same.tokens_per_s / pub.throughput_tok_s - 1:+.0%})",
                     f"{best.tokens_per_s:.2f}", f"{best.gpu_batch_size}x{best.num_gpu_batches} attn {best.attention}",
                     best.binds])
    print(f"\nFlexGen, T4 box, prompt 512 + gen 32, fp16 ({SOURCE})")
    print(table(rows, ["model", "measured", "ours(policy)", "err", "binds", "FlexGen model", "err",
                       "planner @ same batch", "planner", "planner schedule", "binds"]))


def fuyou_rows(ex) -> None:
    system, kp = _setup("fuyou-rtx-4090")
    rows = []
    for model, label, req, fixed, pub in [
        ("opt-13b", "overlapped CPU Adam (Fuyou-like)", OffloadRequest(phase="train", dtype="bf16", seq=1024), None,
         FUYOU_TFLOPS),
        ("llama-2-13b", "overlapped CPU Adam (Fuyou-like)", OffloadRequest(phase="train", dtype="bf16", seq=1024), None,
         FUYOU_TFLOPS),
        ("opt-13b", "serial optimizer, states on NVMe (ZeRO-Infinity-like)",
         OffloadRequest(phase="train", dtype="bf16", seq=1024, overlap_optimizer=False),
         {"optimizer_states": {"gpu": 0.0, "cpu": 0.0}}, ZERO_INFINITY_TFLOPS),
    ]:
        p = plan_offload(load_model(model), system, req, ex, kp, fixed=fixed)
        d = p.as_dict()["predicted"]
        rows.append([model, label, p.gpu_batch_size, f"{d['model_tflops_per_s']:.0f}", f"{d['hardware_tflops_per_s']:.0f}",
                     f"{pub:.0f}", f"{d['hardware_tflops_per_s'] / pub - 1:+.0%}", p.binds])
    print("\nFine-tuning a 13B model (opt-13b has the GPT-3 13B shape Fuyou used) on fuyou-rtx-4090, seq 1024, bf16, "
          "full recompute")
    print(table(rows, ["model", "plan", "batch", "model TFLOP/s", "hardware TFLOP/s", "published", "err", "binds"]))


if __name__ == "__main__":
    ex = load_executor_profile("default")
    solve_times(ex)
    flexgen_rows(ex)
    fuyou_rows(ex)
