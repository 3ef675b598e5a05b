"""Full parallelism search for GPT-3 175B on 1024 A100s (128 DGX A100 nodes), global batch 1536
x 2048 tokens, and the best plan against Megatron-LM's configuration.

Megatron-LM trained GPT-3 175B with t = 8, p = 12, micro-batch 1 and full recomputation
(Narayanan et al. 2021, Table 2: 384 / 768 / 1536 GPUs). 1024 GPUs is not a multiple of
t x p = 96, so the reference on 1024 GPUs is the nearest Megatron-style configuration,
t = 8, p = 8, d = 16, micro-batch 1, full recompute, plain 1F1B; the published t8 p12
configuration is scored on 1536 GPUs for comparison. Target: the search takes < 5 s on 2 cores.
Run: python benchmarks/plan_parallel.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planners.parallel import compare_with, search  # noqa: E402
from simulator.core.models import load_model  # noqa: E402
from simulator.core.parallel import ParallelPlan, train_step  # noqa: E402
from simulator.core.profiles import load_executor_profile  # noqa: E402
from simulator.core.specs import load_system  # noqa: E402

MEGATRON_1024 = ParallelPlan(tp=8, pp=8, dp=16, micro_batch=1, global_batch=1536, recompute="full")
MEGATRON_PUBLISHED_1536 = ParallelPlan(tp=8, pp=12, dp=16, micro_batch=1, global_batch=1536, recompute="full")


def main() -> None:
    model, system = load_model("gpt3-175b"), load_system("dgx-a100")
    ex = load_executor_profile("megatron")
    t0 = time.perf_counter()
    res = search(model, system, 1024, 1536, 2048, "throughput", ex)
    wall = time.perf_counter() - t0
    print(f"search: {res.evaluated} plans scored, {len(res.plans)} fit, {wall:.2f} s wall")
    b = res.plans.iloc[0]
    print(f"best: tp{b.tp} pp{b.pp} dp{b.dp} mb{b.micro_batch} v{b.vpp} zero{b.zero} {b.recompute}"
          f"{' sp' if b.sp else ''}: {b.time_s:.2f} s/step, {b.model_flops_per_gpu_s / 1e12:.0f} model TFLOP/s per GPU, "
          f"MFU {100 * b.mfu:.1f}%, {b.memory_bytes / 2**30:.1f} GiB")
    ref = train_step(model, system, MEGATRON_1024, 2048, ex)
    print(f"Megatron-style on 1024: {ref.time_s:.2f} s/step, {ref.model_flops_per_gpu_s / 1e12:.0f} model TFLOP/s per GPU, "
          f"{ref.hardware_flops_per_gpu_s / 1e12:.0f} hardware TFLOP/s per GPU")
    print(compare_with(res, model, system, MEGATRON_1024, 2048, ex))
    r01 = search(model, system, 1024, 1536, 2048, "throughput", ex, zeros=(0, 1))
    b1 = r01.plans.iloc[0]
    print(f"best without ZeRO-2/3 (Megatron-style): tp{b1.tp} pp{b1.pp} dp{b1.dp} mb{b1.micro_batch} v{b1.vpp} "
          f"zero{b1.zero} {b1.recompute}{' sp' if b1.sp else ''}: {b1.time_s:.2f} s/step, "
          f"{b1.model_flops_per_gpu_s / 1e12:.0f} model TFLOP/s per GPU")
    print(compare_with(r01, model, system, MEGATRON_1024, 2048, ex))
    pub = train_step(model, system, MEGATRON_PUBLISHED_1536, 2048, ex)
    print(f"published t8 p12 on 1536 GPUs: {pub.hardware_flops_per_gpu_s / 1e12:.0f} hardware TFLOP/s per GPU")


if __name__ == "__main__":
    main()
