"""Energy: roofplan's predicted GPU power, energy per output token and power-cap slowdowns against
published measurements (benchmarks/data/energy.yaml, sources there), point by point.

    python benchmarks/energy.py          # predicted vs published, fit points and held-out points
    python benchmarks/energy.py --fit    # refit the power model's constants (simulator/core/power.py H100_FIT)

ML.ENERGY v3.0 (vLLM 0.11.1): Llama-3.1-8B on 1 H100, 70B on 4 (TP); GPU power per GPU and GPU
energy per output token of the steady state (max_num_seqs requests in flight), against the mean of
the steps that steady state runs under the vllm-v1 engine profile (simulator.serving.engine_fit
steady_steps: the decode batch plus k ~ Poisson(B / E[out]) prompts prefilled in the same forward,
each step `roofplan predict --executor vllm-v1 --phase decode --chunk-tokens k x prompt`), on a
bare h100-sxm (GPUs only, like the measurement). vllm-v1's constants are fitted to the median
inter-token latencies of every other point of the same runs (benchmarks/data/serving_published.yaml,
the same points as role fit here), so the held-out points (role check) test the time and the
power model together.
Splitwise (ISCA 2024): a DGX-H100 capped at 70% power (490 W per GPU) runs Llama-2-70B prompts
x1.30 slower and tokens x1.00, against `roofplan predict --power-cap 490`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from simulator.core import power
from simulator.core.errors import RoofplanError
from simulator.core.models import load_model
from simulator.core.paths import REPO_ROOT
from simulator.core.predict import Prediction, predict
from simulator.core.schema import Name, NonNegInt, PosInt, Positive, Strict, Text, check, read_yaml
from simulator.core.specs import load_hardware
from simulator.core.workload import Job

DATA = REPO_ROOT / "benchmarks" / "data" / "energy.yaml"
PUBLISHED = REPO_ROOT / "benchmarks" / "data" / "serving_published.yaml"
ENGINE = "vllm-v1"       # the engine the ML.ENERGY runs used (vLLM 0.11.1)
Role = Literal["fit", "check", "report"]


class MlEnergyPoint(Strict):
    model: Name
    hardware: Name
    gpus: PosInt
    max_num_seqs: PosInt
    avg_batch: Positive
    power_W: Positive                 # all `gpus` GPUs
    energy_per_token_J: Positive
    output_tokens_per_s: Positive
    median_itl_ms: Positive
    role: Role


class CappedPoint(Strict):
    model: Name
    phase: Literal["prefill", "decode"]
    tp: PosInt
    batch: PosInt
    seq: NonNegInt = 0
    context: NonNegInt = 0
    time_ratio: Positive
    role: Role


class Splitwise(Strict):
    idle_W: dict[Name, Positive]
    prompt_power_W: dict[Name, Positive]
    token_power_W: dict[Name, Positive]
    node_cap_fraction: Positive
    per_gpu_cap_W: Positive
    capped: list[CappedPoint] = Field(min_length=1)


class EnergyData(Strict):
    sources: dict[Name, Text]
    assumptions: dict[Name, Text]
    mlenergy: list[MlEnergyPoint] = Field(min_length=1)
    splitwise: Splitwise


def load(path: Path = DATA) -> EnergyData:
    return check(EnergyData, read_yaml(path), path)


@dataclass(frozen=True)
class Row:
    """One ML.ENERGY point: the measurement and roofplan's prediction of its steady state (the
    means over `engine_fit.steady_steps` of predict()'s step time and energy)."""
    point: MlEnergyPoint
    batch: int
    time_s: float             # mean step time
    energy_j: float           # mean step energy, all GPUs
    act: power.Activity       # one GPU's mean step (what the power fit reads)

    @property
    def measured_w(self) -> float:          # per GPU
        return self.point.power_W / self.point.gpus

    @property
    def predicted_w(self) -> float:
        return self.energy_j / self.time_s / self.point.gpus

    @property
    def power_error(self) -> float:
        return self.predicted_w / self.measured_w - 1

    @property
    def energy_j_per_token(self) -> float:   # each step gives every sequence in flight one token
        return self.energy_j / self.batch

    @property
    def energy_error(self) -> float:
        return self.energy_j_per_token / self.point.energy_per_token_J - 1

    @property
    def time_error(self) -> float:           # predicted mean step vs the measured tokens/s at that batch
        return self.time_s / (self.batch / self.point.output_tokens_per_s) - 1


def activity(p: Prediction) -> power.Activity:
    stages = p.job.pp if p.job.phase != "train" else 1
    return power.Activity(time_s=p.time_s, compute_s=p.time_by_resource.get("compute", 0.0) / stages,
                          flops=p.gpu_flops, hbm_bytes=p.gpu_hbm_bytes)


def output_tokens(pt: MlEnergyPoint, published) -> float:
    """The point's mean output length: its run's steady-state point in serving_published.yaml (the
    same leaderboard rows), else -- another GPU -- the model's mean over its H100 runs (the
    outputs are the model's own, whatever the GPU)."""
    pts = [p for p in published.steady_state.points if p.run == pt.model]
    if not pts:
        raise RoofplanError(f"{PUBLISHED}: no steady-state run '{pt.model}' gives the output length of {pt.model}")
    same = [p for p in pts if p.max_num_seqs == pt.max_num_seqs
            and published.steady_state.runs[p.run].hardware == pt.hardware]
    return same[0].avg_output_tokens if same else sum(p.avg_output_tokens for p in pts) / len(pts)


def steady_state(pt: MlEnergyPoint, published, engine) -> Row:
    """The point's steady state under `engine`: predict() of each step, weighted by its share."""
    from simulator.serving.engine_fit import steady_steps
    model, system = load_model(pt.model), load_hardware(pt.hardware)
    steps = steady_steps(pt.avg_batch, output_tokens(pt, published), engine, published.prompt_tokens,
                         published.context_tokens, pt.gpus)
    preds = [(w, predict(model, system, job, executor=engine, check_memory=False)) for w, job in steps]
    mean = lambda f: sum(w * f(p) for w, p in preds)     # noqa: E731
    acts = [(w, activity(p)) for w, p in preds]
    act = power.Activity(*(sum(w * getattr(a, k) for w, a in acts) for k in ("time_s", "compute_s", "flops", "hbm_bytes")))
    return Row(pt, max(round(pt.avg_batch), 1), mean(lambda p: p.time_s), mean(lambda p: p.energy.energy_j), act)


def mlenergy_rows(data: EnergyData, roles=("fit", "check")) -> list[Row]:
    from simulator.core.profiles import load_executor_profile
    from simulator.serving.engine_fit import read_published
    published, engine = read_published(), load_executor_profile(ENGINE)
    return [steady_state(pt, published, engine) for pt in data.mlenergy if pt.role in roles]


def capped_job(c: CappedPoint, cap_w: float | None = None) -> Job:
    return Job(c.phase, batch=c.batch, seq=c.seq, context=c.context, tp=c.tp, power_cap_w=cap_w)


def uncapped(c: CappedPoint) -> Prediction:
    return predict(load_model(c.model), load_hardware("h100-sxm"), capped_job(c), check_memory=False)


def capped_ratio(c: CappedPoint, cap_w: float) -> tuple[float, Prediction, Prediction]:
    """(predicted time with the cap / without, the capped and the uncapped prediction)."""
    base = uncapped(c)
    capped = predict(load_model(c.model), load_hardware("h100-sxm"), capped_job(c, cap_w), check_memory=False)
    return capped.time_s / base.time_s, capped, base


def refit(data: EnergyData) -> power.PowerFit:
    """The constants of simulator/core/power.py H100_FIT, from the fit points alone."""
    h100 = load_hardware("h100-sxm").gpu
    measured = [(r.act, h100, "bf16", r.measured_w) for r in mlenergy_rows(data, ("fit",))]
    fit_caps = [(c, activity(uncapped(c))) for c in data.splitwise.capped if c.role == "fit"]
    # Splitwise's prompt phase draws the TDP (prompt_power_W): the fit keeps the fitted prefill there
    at_tdp = [(a, h100, "bf16") for c, a in fit_caps if c.phase == "prefill"]
    k = power.fit_constants(measured, at_tdp)
    cap = data.splitwise.per_gpu_cap_W
    gamma = power.fit_gamma([(a, h100, "bf16", cap, c.time_ratio) for c, a in fit_caps], k)
    return power.PowerFit(*k, gamma=gamma, source="refit")


def main(argv: list[str]) -> int:
    data = load()
    if "--fit" in argv:
        f = refit(data)
        print(f"k_compute={f.k_compute:.4f}, k_flop={f.k_flop:.4f}, k_byte={f.k_byte:.4f}, gamma={f.gamma:.4f}")
        return 0
    fit = power.H100_FIT
    print(f"power model constants (simulator/core/power.py H100_FIT): k_compute {fit.k_compute:.3f}, "
          f"k_flop {fit.k_flop:.3f}, k_byte {fit.k_byte:.3f}, gamma {fit.gamma:.3f}\n")
    print(f"ML.ENERGY v3.0, vLLM 0.11.1 steady state, engine profile {ENGINE} (W per GPU; J per output token, GPUs only)")
    print(f"{'model':14s} {'GPUs':>4s} {'batch':>5s} {'role':5s} {'W meas':>7s} {'W pred':>7s} {'error':>7s}   "
          f"{'J/tok meas':>10s} {'J/tok pred':>10s} {'error':>7s}   {'step time error':>15s}")
    groups: dict[str, list[Row]] = {}
    for r in mlenergy_rows(data, ("fit", "check", "report")):
        p = r.point
        print(f"{p.model:14s} {p.gpus:4d} {r.batch:5d} {p.role:5s} {r.measured_w:7.0f} {r.predicted_w:7.0f} "
              f"{100 * r.power_error:+6.1f}%   {p.energy_per_token_J:10.4f} {r.energy_j_per_token:10.4f} "
              f"{100 * r.energy_error:+6.1f}%   {100 * r.time_error:+14.1f}%" + ("" if p.hardware == "h100-sxm"
                                                                              else f"  ({p.hardware})"))
        groups.setdefault(f"{p.role} {p.hardware}", []).append(r)
    print()
    for name, rows in groups.items():
        pe = [abs(r.power_error) for r in rows]
        ee = [abs(r.energy_error) for r in rows]
        print(f"{name:18s} points {len(rows):2d}  power MAPE {100 * sum(pe) / len(pe):5.1f}% (worst {100 * max(pe):5.1f}%)"
              f"  J/token MAPE {100 * sum(ee) / len(ee):5.1f}% (worst {100 * max(ee):5.1f}%)")
    cap = data.splitwise.per_gpu_cap_W
    print(f"\nSplitwise: DGX-H100 capped at {data.splitwise.node_cap_fraction:.0%} power, {cap:g} W per GPU "
          f"(time with the cap / without)")
    print(f"{'case':40s} {'role':5s} {'published':>9s} {'predicted':>9s}  {'clock':>5s}  {'power W':>7s}")
    for c in data.splitwise.capped:
        what = f"{c.model} {c.phase} tp{c.tp} " + (f"seq {c.seq}" if c.phase == "prefill" else f"batch {c.batch} ctx {c.context}")
        try:
            ratio, capped, base = capped_ratio(c, cap)
        except RoofplanError as e:
            print(f"{what:40s} {c.role:5s} {c.time_ratio:9.2f}  refused: {str(e).split(': ', 1)[1].split(';')[0]}")
            continue
        print(f"{what:40s} {c.role:5s} {c.time_ratio:9.2f} {ratio:9.2f}  {capped.energy.clock_fraction:5.2f}  "
              f"{base.energy.power_w:4.0f}->{capped.energy.power_w:3.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
