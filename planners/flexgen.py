"""FlexGen reference data and FlexGen's own cost model, to validate the offload planner.

Published numbers (Sheng et al., "FlexGen: High-Throughput Generative Inference of Large
Language Models with a Single GPU", ICML 2023, Table 2; repeated in
FMInference/FlexLLMGen benchmark/batch_size_table.md): GCP T4 16 GB, 208 GB DRAM, 1.5 TB SSD,
prompt 512, generate 32, fp16 without compression. Generation throughput (token/s) =
generated tokens / (prefill + decode time).

Published policies (FMInference/FlexLLMGen benchmark/flexgen/bench_suite.py, the `*_1x1`
suites for prompt 512): `--percent wg wc cg cc hg hc --gpu-batch-size --num-gpu-batches`,
`--cpu` = attention over the CPU-resident cache on the CPU.

FlexGen applies a weight percentage per tensor, not per byte (flex_opt.py `init_weight_list`):
each tensor of a sub-layer (FlexGen runs attention and MLP as separate layers) goes whole to the
device whose cumulative-percent interval holds the tensor's size midpoint. `effective_fractions`
reproduces that rule, so a published policy is scored with the placement FlexGen really ran.

`flexgen_cost_model` is FlexGen's analytical model (FMInference/FlexLLMGen
experimental/cost_model.py, `solve_lp` with the policy fixed, its T4 constants), evaluated
in closed form: with every fraction fixed, its LP reduces to the max() expressions below.
"""
from __future__ import annotations

from dataclasses import dataclass

from simulator.core.models import ModelConfig

GB = 2**30   # FlexGen's flexgen/utils.py: GB = 1 << 30
T = 1e12

SOURCE = ("Sheng et al., FlexGen, ICML 2023, Table 2 (T4 16GB, 208GB DRAM, 1.5TB SSD, prompt 512, "
          "gen 32, no compression); FMInference/FlexLLMGen benchmark/batch_size_table.md")


@dataclass(frozen=True)
class Published:
    model: str
    throughput_tok_s: float     # FlexGen, measured
    gpu_batch_size: int
    num_gpu_batches: int
    percent: tuple[int, int, int, int, int, int]   # wg wc cg cc hg hc
    cpu_attention: bool
    accelerate_tok_s: float     # HF Accelerate on the same box (Table 2)
    deepspeed_tok_s: float      # DeepSpeed ZeRO-Inference (Table 2)


PUBLISHED = {
    "opt-6.7b": Published("opt-6.7b", 25.26, 2, 1, (100, 0, 100, 0, 100, 0), False, 25.12, 9.28),
    "opt-30b": Published("opt-30b", 7.32, 48, 3, (20, 80, 0, 100, 0, 100), True, 0.62, 0.60),
    "opt-175b": Published("opt-175b", 0.69, 32, 8, (0, 50, 0, 0, 0, 100), True, 0.01, 0.01),
}


def _split(sizes: list[float], percent: tuple[float, float, float]) -> tuple[float, float, float]:
    """FlexGen's midpoint rule: bytes on (gpu, cpu, disk) for tensors of `sizes` under `percent`."""
    total = sum(sizes)
    out = [0.0, 0.0, 0.0]
    cum = 0.0
    bounds = (percent[0], percent[0] + percent[1])
    for size in sizes:
        mid = (cum + size / 2) / total * 100
        cum += size
        dev = 0 if mid < bounds[0] else 1 if mid < bounds[1] else 2
        out[dev] += size
    return tuple(x / total for x in out)


def effective_fractions(model: ModelConfig, percent) -> dict[str, dict[str, float]]:
    """Placement fractions FlexGen really runs for `percent` (weights split per tensor)."""
    wg, wc, cg, cc, hg, hc = percent
    h, f = model.hidden, model.ffn_dim
    attn = [h * h + h] * 4 + [2 * h]               # q, k, v, out (+ biases), layer norm
    mlp = [h * f + f, f * h + h, 2 * h]           # fc1, fc2, layer norm
    a = _split(attn, (wg, wc, 100 - wg - wc))
    m = _split(mlp, (wg, wc, 100 - wg - wc))
    sa, sm = sum(attn), sum(mlp)
    w = [(a[i] * sa + m[i] * sm) / (sa + sm) for i in range(3)]
    trip = lambda g, c: {"gpu": g / 100, "cpu": c / 100, "nvme": (100 - g - c) / 100}
    return {"weights": {"gpu": w[0], "cpu": w[1], "nvme": w[2]},
            "kv_cache": trip(cg, cc), "activations": trip(hg, hc)}


@dataclass(frozen=True)
class FlexGenT4Constants:
    """FlexGen's fitted T4 constants (experimental/cost_model.py CostModelConfig)."""
    ctog_bdw: float = 12.89 * GB
    gtoc_bdw_cache: float = 0.97 * GB
    gtoc_bdw_hidden: float = 4.82 * GB
    dtoc_bdw: float = 0.473 * GB
    ctod_bdw_cache_p: float = 0.746 * GB
    ctod_bdw_hidden_p: float = 2.015 * GB
    ctod_bdw_g: float = 2.015 * GB
    mm_flops_p: float = 21.24 * T
    mm_flops_g: float = 4.3 * T
    bmm_flops_p: float = 9.97 * T
    bmm_flops_g: float = 0.079 * T
    cpu_flops: float = 0.0123 * T
    c1: float = 0.0168
    c2: float = 0.0328
    c3: float = 0.0621


def flexgen_cost_model(model: ModelConfig, pub: Published, s: int = 512, n: int = 32,
                       k: FlexGenT4Constants = FlexGenT4Constants()) -> float:
    """Throughput (token/s) FlexGen's own cost model predicts for a fixed policy.

    Tpre = max(ctog + dtoc, gtoc + ctod, comp) and Tgen = ctog + max(gtoc, dtoc, ctod, comp)
    per layer; T = l (Tpre + (n - 1) Tgen); throughput = bls n / T (cost_model.py, `solve_lp`).
    The fractions are FlexGen's nominal --percent, as its cost model uses them."""
    import math
    l, h1, h2 = model.n_layers, model.hidden, model.ffn_dim
    gbs, bls = pub.gpu_batch_size, pub.gpu_batch_size * pub.num_gpu_batches
    wg, wc, cg, cc, hg, hc = (x / 100 for x in pub.percent)
    wn, cn, hn = 1 - wg - wc, 1 - cg - cc, 1 - hg - hc
    wi = 8 * h1 ** 2 + 4 * h1 * h2
    ctogp = (wi * (wc + wn) + 2 * s * h1 * bls * (hc + hn)) / k.ctog_bdw
    gtocp = 4 * (s + 1) * h1 * bls * (cc + cn) / k.gtoc_bdw_cache + 2 * s * h1 * bls * (hc + hn) / k.gtoc_bdw_hidden
    dtocp = (wi * wn + 2 * s * h1 * bls * hn) / k.dtoc_bdw
    ctodp = 4 * bls * (s + 1) * h1 * cn / k.ctod_bdw_cache_p + 2 * s * h1 * bls * hn / k.ctod_bdw_hidden_p
    compp = bls * (8 * s * h1 ** 2 + 4 * s * h1 * h2) / k.mm_flops_p + 4 * bls * s ** 2 * h1 / k.bmm_flops_p
    tpre = max(ctogp + dtocp, gtocp + ctodp, compp)
    ctogg = (wi * (wc + wn) + 2 * h1 * bls * (hc + hn)) / k.ctog_bdw
    gtocg = 2 * h1 * bls * (hc + hn) / k.gtoc_bdw_hidden
    dtocg = (4 * bls * (s + n / 2) * h1 * cn + 2 * h1 * bls * hn) / k.dtoc_bdw + wi * wn / (k.dtoc_bdw * 0.95)
    ctodg = (4 * bls * h1 * cn + 2 * h1 * bls * hn) / k.ctod_bdw_g
    lg = max(0.0, math.log2(64 / gbs))
    lh = max(0.0, math.log2(4096 / h1))
    cpu_flops = k.cpu_flops * max(0.1, 1 + k.c1 * lg * lh - k.c2 * lg - k.c3 * lh)
    compg = (bls * (8 * h1 ** 2 + 4 * h1 * h2) / k.mm_flops_g + 4 * bls * (s + n / 2) * h1 * cg / k.bmm_flops_g
             + 4 * bls * (s + n / 2) * h1 * (cc + cn) / cpu_flops)
    tgen = ctogg + max(gtocg, dtocg, ctodg, compg)
    return bls * n / (l * (tpre + (n - 1) * tgen))


def score_policy(model: ModelConfig, system, pub: Published, executor, kernels, s: int = 512, n: int = 32):
    """Our model's plan for FlexGen's published policy: placement, batch and attention pinned."""
    from .offload import OffloadRequest, plan_offload
    req = OffloadRequest(phase="decode", prompt_len=s, gen_len=n, dtype="fp16",
                         attention="cpu" if pub.cpu_attention else "gpu")
    eff = effective_fractions(model, pub.percent)
    fixed = {k: {d: v[d] for d in ("gpu", "cpu")} for k, v in eff.items()}
    return plan_offload(model, system, req, executor, kernels, fixed=fixed,
                        gbs=pub.gpu_batch_size, nb=pub.num_gpu_batches)
