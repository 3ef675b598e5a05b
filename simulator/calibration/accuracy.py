"""Predicted vs measured for end-to-end cases (the end_to_end.yaml format of measurements/).

A case names model, phase, sizes and executor; `compare_cases` predicts each with the same
`predict()` the CLI uses and returns one row per case with the relative errors.

End-to-end file (YAML), checked by EndToEndFile:
  hardware: h100-sxm            # the spec the cases ran on (else pass --hardware)
  device: ..., dtype: bf16, measured: '2026-11-22'     # descriptive
  cases:
    - {id: decode-llama-3.1-8b-b1-l512, group: graph, model: llama-3.1-8b, phase: decode, batch: 1,
       context: 512, executor: default, time_s: 0.00802, peak_memory_bytes: 16463836160, source: ...}
  (a case may also give seq, dtype, recompute, lora_rank, lora_targets, tp, pp, dp, offload: weights:cpu,
   host_memory: pinned|pageable, overlap, precision)
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd
from pydantic import Field

from simulator.core.errors import RoofplanError
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile, load_kernel_profile
from simulator.core.schema import Name, NonNegInt, PosInt, Positive, Strict, Text, check, read_yaml
from simulator.core.specs import load_hardware
from simulator.core.workload import ALL_LINEAR, Job


class Case(Strict):
    """One measured step: the job as `job_from_case` builds it, the executor, what was measured."""
    id: Name | None = None
    group: Name | None = None
    model: Name
    phase: Literal["prefill", "decode", "train"]
    batch: PosInt
    seq: NonNegInt = 0
    context: NonNegInt = 0
    dtype: Name = "bf16"
    recompute: Name = "none"
    lora_rank: NonNegInt = 0
    lora_targets: Text = ALL_LINEAR              # PEFT's target_modules (Job.lora_targets)
    tp: PosInt = 1
    pp: PosInt = 1
    dp: PosInt = 1
    offload: Name | None = None                  # weights:cpu streams the weights from host memory
    host_memory: Literal["pinned", "pageable"] = "pinned"
    overlap: bool = True
    executor: Name = "default"
    time_s: Positive
    peak_memory_bytes: Positive | None = None
    precision: Text | None = None
    source: Text | None = None


class EndToEndFile(Strict):
    hardware: Name | None = None
    device: Text | None = None
    dtype: Name | None = None
    measured: Text | datetime.date | None = None
    source: Text | None = None
    cases: Annotated[list[Case], Field(min_length=1)]


def job_from_case(case: dict) -> Job:
    offload = case.get("offload", "")
    return Job(phase=case["phase"], batch=int(case["batch"]), seq=int(case.get("seq", 0)),
               context=int(case.get("context", 0)), dtype=case.get("dtype", "bf16"),
               recompute=case.get("recompute", "none"), lora_rank=int(case.get("lora_rank", 0)),
               lora_targets=case.get("lora_targets", ALL_LINEAR),
               tp=int(case.get("tp", 1)), pp=int(case.get("pp", 1)), dp=int(case.get("dp", 1)),
               offload_weights="cpu" if str(offload).startswith("weights") else "gpu",
               host_memory=case.get("host_memory", "pinned"), overlap=bool(case.get("overlap", True)))


def load_cases(path: str | Path) -> tuple[str, list[dict]]:
    """(hardware, cases) of an end-to-end file, checked by EndToEndFile (unknown fields, types,
    finite numbers, required fields) and with unique case ids."""
    d = read_yaml(Path(path), "end-to-end file")
    f = check(EndToEndFile, d, path, fix="see the end-to-end file format in simulator/calibration/accuracy.py")
    ids = [c.id for c in f.cases if c.id]
    dup = next((x for x in ids if ids.count(x) > 1), None)
    if dup:
        raise RoofplanError(f"{path}: case id '{dup}' is given twice; each case needs its own id")
    return f.hardware or "", d["cases"]


def compare_cases(hardware: str, cases: list[dict], kernel_profile: str | None = None) -> pd.DataFrame:
    system = load_hardware(hardware)
    kp = load_kernel_profile(system.gpu.name, kernel_profile)
    rows = []
    for c in cases:
        row = {"id": c.get("id", ""), "group": c.get("group", ""), "measured_time_s": c["time_s"]}
        try:
            ex = load_executor_profile(c.get("executor", "default"))
            p = predict(load_model(c["model"]), system, job_from_case(c), ex, kp)
        except RoofplanError as e:   # reported per case, not fatal for the table
            rows.append({**row, "error": str(e)})
            continue
        row.update(predicted_time_s=p.time_s, time_error=p.time_s / c["time_s"] - 1)
        if "peak_memory_bytes" in c:
            row.update(measured_memory_bytes=c["peak_memory_bytes"], predicted_memory_bytes=p.peak_memory_bytes,
                       memory_error=p.peak_memory_bytes / c["peak_memory_bytes"] - 1)
        rows.append(row)
    return pd.DataFrame(rows)


def mape(errors) -> float:
    s = pd.Series(errors).dropna().abs()
    return float(s.mean()) if len(s) else float("nan")


def validation_levels(end_to_end: str | Path, step_times: str | Path | None = None,
                      megatron_rows=None) -> dict[str, dict]:
    """The expected-error table (simulator.core.expected_error) from measurements:
    kernels/framework[/executor] -> {time_mape, time_worst, cases, source}.
      measured/measured/<executor>  H100 end-to-end cases of that executor (its own profile)
      datasheet/measured            the same GPU-bound H100 cases with `--kernel-profile datasheet`
      carried/measured/<engine>     serving engines on A100 with H100-carried kernel curves, held-out
                                    models of `calibrate --step-times` (DistServe's published profiles)
      carried/code/megatron         Megatron-LM's weak-scaling table on A100 (step time from
                                    the published TFLOP/s per GPU)"""
    from simulator.core.profiles import DATASHEET
    hardware, cases = load_cases(end_to_end)
    levels: dict[str, dict] = {}

    def row(errors, source):
        e = pd.Series(errors).dropna().abs()
        return {"time_mape": round(float(e.mean()), 4), "time_worst": round(float(e.max()), 4), "cases": int(len(e)),
                "source": source}
    df = compare_cases(hardware, cases)
    ok = df[df["time_error"].notna()] if "time_error" in df else df.iloc[0:0]
    name = Path(end_to_end).name
    from simulator.core.expected_error import calibration_level
    system = load_hardware(hardware)
    kp = load_kernel_profile(system.gpu.name)
    from simulator.calibration.copy_fit import fitted_cases
    # a case an executor's copy efficiency was fitted on counts with its held-out error
    held = {i: e for i, (_, e) in fitted_cases(hardware, cases).items()}
    for exe in sorted({c.get("executor", "default") for c in cases}):
        try:
            level = "/".join(calibration_level(system, kp, load_executor_profile(exe)))
        except RoofplanError:
            continue
        for kind in ("inference", "train"):
            ids = {c.get("id", "") for c in cases if c.get("executor", "default") == exe
                   and (c["phase"] == "train") == (kind == "train")}
            mine = ok[ok["id"].isin(ids)]
            errs = [held.get(i, e) for i, e in zip(mine["id"], mine["time_error"])]
            if errs:
                n_held = sum(i in held for i in mine["id"])
                levels[f"{level}/{exe}/{kind}"] = row(
                    errs, f"{len(errs)} {exe} {kind} cases of {name} ({hardware})"
                    + (f", {n_held} of them at the copy efficiency fitted without them (leave one out)" if n_held else ""))
    gpu_bound = [c for c in cases if c.get("executor", "default") == "default"]
    ds = compare_cases(hardware, gpu_bound, kernel_profile=DATASHEET)
    levels["datasheet/measured"] = row(ds["time_error"], f"the {len(ds)} default-executor cases of {name} "
                                                         f"({hardware}) with --kernel-profile datasheet")
    if step_times is not None:
        from simulator.calibration.step_fit import fit_step_times
        from simulator.core.specs import load_gpu
        hw = read_yaml(Path(step_times), "step-times file").get("hardware", "a100-sxm-80gb")
        gpu = load_gpu(hw)
        kp = load_kernel_profile(gpu.name)
        for engine in ("distserve", "vllm-v0"):
            _, rep = fit_step_times(step_times, engine, gpu, kp)
            levels[f"carried/measured/{engine}"] = {
                "time_mape": round(rep["check_mape_pct"] / 100, 4), "time_worst": round(abs(rep["check_worst_pct"]) / 100, 4),
                "cases": int(rep["check_points"]),
                "source": f"{engine} step times on {hw} of held-out models ({', '.join(rep['check_models'])}), "
                          f"{Path(step_times).name}"}
    if megatron_rows:
        errs = [pub / pred - 1 for _, pub, pred, *_ in megatron_rows]
        levels["carried/code/megatron"] = row(errs, f"Megatron-LM weak scaling, {len(errs)} rows on dgx-a100 "
                                                    "(Narayanan et al. 2021, Table 1)")
    # pooled per kernels level, for executors or frameworks never measured at that level
    for k in ("measured", "carried", "datasheet"):
        parts = [(key, r) for key, r in levels.items() if key.startswith(k + "/")]
        if parts:
            n = sum(r["cases"] for _, r in parts)
            levels[f"{k}/*"] = {"time_mape": round(sum(r["time_mape"] * r["cases"] for _, r in parts) / n, 4),
                                "time_worst": max(r["time_worst"] for _, r in parts), "cases": n,
                                "source": "pooled: " + ", ".join(key for key, _ in parts)}
    return levels
