"""Megatron-LM PTD-P weak scaling (Narayanan et al. 2021, "Efficient Large-Scale Language Model
Training on GPU Clusters Using Megatron-LM", arXiv:2104.04473, Table 1) against our prediction.

GPT models (vocabulary 51200, sequence 2048), DGX A100 80GB nodes with 8x HDR InfiniBand
(Selene), full activation recomputation, mixed precision; achieved teraFLOP/s per GPU by the
paper's eq. 3, 96 B s l h^2 (1 + s/6h + V/16lh), which `hardware_flops_per_gpu_s` reproduces.
The paper does not list micro-batch sizes; we use 1 (Megatron's default), and the 1F1B
schedule without interleaving (non-overlapped gradient all-reduce, as in the 2021 code).
Run: python benchmarks/megatron_weak_scaling.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.core.models import parse_hf_config  # noqa: E402
from simulator.core.profiles import load_executor_profile  # noqa: E402
from simulator.core.parallel import ParallelPlan, train_step  # noqa: E402
from simulator.core.specs import load_system  # noqa: E402

# (params B, heads, hidden, layers, tp, pp, GPUs, global batch, published TFLOP/s per GPU);
# the aggregate column (PFLOP/s = GPUs x per-GPU) checks the per-GPU values
TABLE1 = [
    (1.7, 24, 2304, 24, 1, 1, 32, 512, 137),
    (3.6, 32, 3072, 30, 2, 1, 64, 512, 138),
    (7.5, 32, 4096, 36, 4, 1, 128, 512, 142),
    (18.4, 48, 6144, 40, 8, 1, 256, 1024, 135),
    (39.1, 64, 8192, 48, 8, 2, 512, 1536, 138),
    (76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140),
    (145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148),
    (310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155),
    (529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163),
    (1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163),
]
SEQ, VOCAB = 2048, 51200
EXECUTOR = load_executor_profile("megatron")


def gpt_model(params_b: float, heads: int, hidden: int, layers: int):
    cfg = {"model_type": "gpt2", "n_embd": hidden, "n_head": heads, "n_layer": layers, "n_positions": SEQ,
           "vocab_size": VOCAB, "tie_word_embeddings": True}
    return parse_hf_config(cfg, f"gpt-{params_b}b", Path(f"gpt-{params_b}b.json"))


def rows():
    system = load_system("dgx-a100")
    out = []
    for params_b, heads, hidden, layers, tp, pp, gpus, batch, published in TABLE1:
        model = gpt_model(params_b, heads, hidden, layers)
        plan = ParallelPlan(tp=tp, pp=pp, dp=gpus // (tp * pp), micro_batch=1, global_batch=batch,
                            recompute="full", overlap_grad_reduce=False)
        step = train_step(model, system, plan, SEQ, executor=EXECUTOR)
        predicted = step.hardware_flops_per_gpu_s / 1e12
        out.append((f"{params_b}B t{tp} p{pp} d{plan.dp} B{batch}", published, predicted,
                    (predicted - published) / published, step, model.params_total()))
    return out


if __name__ == "__main__":
    print("TFLOP/s per GPU (paper eq. 3), published vs predicted, DGX A100 80GB + 8x HDR IB")
    print(f"{'case':28s} {'published':>9s} {'predicted':>9s} {'error':>7s} {'params':>8s}")
    for case, pub, pred, err, step, params in rows():
        print(f"{case:28s} {pub:9.0f} {pred:9.1f} {100 * err:+6.1f}% {params / 1e9:7.1f}B")
