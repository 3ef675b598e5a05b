"""An executor's copy efficiency, fitted on its measured end-to-end steps.

A stack that streams weights from host memory (accelerate's cpu_offload hooks: one synchronous
pageable copy per weight, each into memory the allocator has just handed back to the driver)
can copy slower than the kernel profile's microbenchmark (one large copy of one buffer, repeated).
Its executor profile's `copy_efficiency_scale` multiplies that rate (simulator.core.step.h2d_Bps).

`fit_copy_efficiency` chooses the scale that minimises the squared log errors of the executor's
weight-offload cases, predicted by the same `predict()` as every other number. Each case's
held-out error is the prediction with the scale fitted on the other cases (leave one out; with no
other case, the microbenchmarked rate, scale 1): that, not the fitted error, is what the
expected-error table reports for them (simulator.calibration.accuracy.validation_levels).
"""
from __future__ import annotations

import math
from dataclasses import replace

from scipy.optimize import minimize_scalar

from simulator.calibration.accuracy import job_from_case
from simulator.core.errors import RoofplanError
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import ExecutorProfile, KernelProfile
from simulator.core.specs import System

SCALE_BOUNDS = (0.05, 2.0)   # a copy 20x slower than the microbenchmark, or twice as fast: beyond, refuse


def copy_cases(cases: list[dict], executor: str) -> list[dict]:
    """The cases that time this executor's weight copies: its own, with weights offloaded."""
    return [c for c in cases if c.get("executor", "default") == executor and str(c.get("offload", "")).startswith("weights")]


def _predicted_s(case: dict, scale: float, system: System, kp: KernelProfile, ex: ExecutorProfile) -> float:
    try:
        return float(predict(load_model(case["model"]), system, job_from_case(case), replace(ex, copy_efficiency_scale=scale),
                             kp, check_memory=False, with_ops=False).time_s)
    except RoofplanError as e:
        raise RoofplanError(f"case {case.get('id') or case['model']}: {e}") from None


def _fit(cases: list[dict], system: System, kp: KernelProfile, ex: ExecutorProfile) -> float:
    """The scale minimising the squared log errors of `cases` (1.0 when there are none)."""
    if not cases:
        return 1.0

    def loss(scale):
        return sum(math.log(_predicted_s(c, scale, system, kp, ex) / c["time_s"]) ** 2 for c in cases)
    res = minimize_scalar(loss, bounds=SCALE_BOUNDS, method="bounded", options={"xatol": 1e-5})
    scale = float(res.x)
    lo, hi = SCALE_BOUNDS
    if min(scale - lo, hi - scale) < 1e-3:
        worst = max(cases, key=lambda c: abs(math.log(_predicted_s(c, 1.0, system, kp, ex) / c["time_s"])))
        need = f"more than {hi:g}" if scale > 1 else f"less than {lo:g}"
        raise RoofplanError(f"case {worst.get('id') or worst['model']}: its copies would need {need} x the microbenchmarked "
                            f"rate; check its time_s, offload and host_memory")
    return scale


def fit_copy_efficiency(cases: list[dict], executor: str, system: System, kp: KernelProfile,
                        ex: ExecutorProfile) -> tuple[float, list[dict]]:
    """(scale, one row per case: id, measured, predicted at scale 1 and at the fit, the fitted
    and the held-out error). `ex` is the executor profile whose other fields the predictions use."""
    mine = copy_cases(cases, executor)
    if not mine:
        raise RoofplanError(f"no case of the end-to-end file runs executor '{executor}' with offload: weights:cpu; "
                            f"add one (its measured time_s) or fit another executor (-o names it)")
    scale = _fit(mine, system, kp, ex)
    rows = []
    for c in mine:
        others = [o for o in mine if o is not c]
        held = _fit(others, system, kp, ex)
        rows.append({"id": c.get("id", ""), "measured_s": c["time_s"],
                     "unfitted_s": _predicted_s(c, 1.0, system, kp, ex), "fitted_s": _predicted_s(c, scale, system, kp, ex),
                     "held_out_scale": held, "held_out_s": _predicted_s(c, held, system, kp, ex)})
    for r in rows:
        r["fitted_error"] = r["fitted_s"] / r["measured_s"] - 1
        r["held_out_error"] = r["held_out_s"] / r["measured_s"] - 1
    return scale, rows


def held_out_errors(cases: list[dict], executor: str, system: System, kp: KernelProfile,
                    ex: ExecutorProfile) -> dict[str, float]:
    """{case id: held-out time error} of the cases a fitted copy_efficiency_scale was fitted on
    ({} when the profile's scale was not fitted, i.e. is 1)."""
    if ex.copy_efficiency_scale == 1.0 or not copy_cases(cases, executor):
        return {}
    return {r["id"]: r["held_out_error"] for r in fit_copy_efficiency(cases, executor, system, kp, ex)[1]}


def fitted_cases(hardware: str, cases: list[dict], kernel_profile: str | None = None) -> dict[str, tuple[str, float]]:
    """{case id: (executor, held-out time error)} of every case of the file some executor's copy
    efficiency was fitted on: `validate --end-to-end` names them, their in-sample error proving
    nothing."""
    from simulator.core.profiles import load_executor_profile, load_kernel_profile
    from simulator.core.specs import load_hardware
    system = load_hardware(hardware)
    kp = load_kernel_profile(system.gpu.name, kernel_profile)
    out = {}
    for exe in sorted({c.get("executor", "default") for c in cases}):
        try:
            ex = load_executor_profile(exe)
        except RoofplanError:
            continue      # compare_cases reports it per case
        out |= {i: (exe, e) for i, e in held_out_errors(cases, exe, system, kp, ex).items()}
    return out


def in_sample_lines(fitted: dict[str, tuple[str, float]]) -> list[str]:
    """One line per case of `fitted_cases`: what was fitted on it, and its held-out error."""
    return [f"in sample: {i} fitted {exe}'s copy efficiency; held out (predicted without it) {100 * e:+.1f}%"
            for i, (exe, e) in fitted.items()]
