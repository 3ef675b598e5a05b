"""Speculative decoding: roofplan's predicted speedup of EAGLE-style drafting against the EAGLE
paper's measurements (benchmarks/data/speculative.yaml, sources there).

    python benchmarks/speculative.py               # published vs predicted
    python benchmarks/speculative.py --crossover   # speedup vs batch, and where it stops paying

One acceptance rate A is fitted, to the `fit` point (bisection on the predicted speedup, which
grows with A); the `check` points are predicted with that A, never fitted. The draft is an
EAGLE-style one-layer head (simulator.core.speculative.eagle_head), K = the tree's depth, batch 1,
the default (CUDA-graph, kernel-time) executor.
"""
from __future__ import annotations

from dataclasses import dataclass

import yaml

from simulator.core.models import load_model
from simulator.core.paths import REPO_ROOT
from simulator.core.specs import load_hardware
from simulator.core.speculative import predict_speculative
from simulator.core.workload import Job

DATA = REPO_ROOT / "benchmarks" / "data" / "speculative.yaml"


@dataclass(frozen=True)
class Row:
    name: str
    role: str
    published: float
    predicted: float

    @property
    def error(self) -> float:
        return self.predicted / self.published - 1.0


def load() -> dict:
    return yaml.safe_load(DATA.read_text())


def speedup(point: dict, defaults: dict, acceptance: float) -> float:
    job = Job("decode", batch=defaults["batch"], context=defaults["context"], tp=point["tp"],
              spec_tokens=defaults["spec_tokens"])
    return predict_speculative(load_model(point["model"]), load_hardware(point["hardware"]), job, acceptance).speedup


def fit_acceptance(data: dict) -> float:
    """The acceptance A at which the fit point's predicted speedup equals the published one."""
    (point,) = [p for p in data["points"] if p["role"] == "fit"]
    lo, hi = 0.01, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if speedup(point, data["defaults"], mid) < point["speedup"] else (lo, mid)
    return (lo + hi) / 2


def rows(data: dict | None = None) -> tuple[float, list[Row]]:
    data = data or load()
    a = fit_acceptance(data)
    return a, [Row(p["name"], p["role"], p["speedup"], speedup(p, data["defaults"], a)) for p in data["points"]]


CROSSOVER_CASES = [   # (target, draft or None for an EAGLE-style head, hardware, tp, context)
    ("llama-3.1-70b", "llama-3.2-1b", "h100-sxm", 4, 1024),
    ("llama-3.1-8b", None, "h100-sxm", 1, 128),
    ("llama-3.1-8b", None, "h100-sxm", 1, 1024),
]


def crossover_table(acceptance: float = 0.8, k: int = 4, batches=(1, 4, 16, 64, 256, 1024)) -> None:
    from simulator.core.speculative import crossover_batch
    for target, draft, hw, tp, context in CROSSOVER_CASES:
        m, d, system = load_model(target), load_model(draft) if draft else None, load_hardware(hw)
        job = Job("decode", batch=1, context=context, tp=tp, spec_tokens=k)
        cells = [predict_speculative(m, system, Job("decode", batch=b, context=context, tp=tp, spec_tokens=k),
                                     acceptance, d, check_memory=False).speedup for b in batches]
        print(f"{target} tp{tp} on {hw}, draft {draft or 'EAGLE-style head'}, K={k}, A={acceptance}, context {context}: "
              f"stops paying at batch {crossover_batch(m, system, job, acceptance, d)}")
        print("  " + "  ".join(f"b{b}: x{c:.2f}" for b, c in zip(batches, cells)))


if __name__ == "__main__":
    import sys
    if "--crossover" in sys.argv:
        crossover_table()
        sys.exit(0)
    a, out = rows()
    print(f"fitted per-token acceptance A = {a:.3f} (K = {load()['defaults']['spec_tokens']})")
    print(f"{'point':<18} {'role':<6} {'published':>9} {'predicted':>9} {'error':>7}")
    for r in out:
        print(f"{r.name:<18} {r.role:<6} {r.published:>8.2f}x {r.predicted:>8.2f}x {100 * r.error:>+6.1f}%")
