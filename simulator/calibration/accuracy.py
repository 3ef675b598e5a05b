"""Predicted vs measured for end-to-end cases (the end_to_end.yaml format of measurements/).

A case names model, phase, sizes and executor; `compare_cases` predicts each with the same
`predict()` the CLI uses and returns one row per case with the relative errors.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from simulator.core.errors import RoofplanError
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile, load_kernel_profile
from simulator.core.specs import load_hardware, read_yaml
from simulator.core.workload import Job


def job_from_case(case: dict) -> Job:
    offload = case.get("offload", "")
    return Job(phase=case["phase"], batch=int(case["batch"]), seq=int(case.get("seq", 0)),
               context=int(case.get("context", 0)), dtype=case.get("dtype", "bf16"),
               recompute=case.get("recompute", "none"), lora_rank=int(case.get("lora_rank", 0)),
               tp=int(case.get("tp", 1)), pp=int(case.get("pp", 1)), dp=int(case.get("dp", 1)),
               offload_weights="cpu" if str(offload).startswith("weights") else "gpu",
               host_memory=case.get("host_memory", "pinned"), overlap=bool(case.get("overlap", True)))


def load_cases(path: str | Path) -> tuple[str, list[dict]]:
    d = read_yaml(Path(path))
    if not isinstance(d, dict) or not isinstance(d.get("cases"), list) or not d["cases"]:
        raise RoofplanError(f"{path}: expected 'hardware:' and a non-empty 'cases:' list (the end_to_end.yaml format)")
    for i, c in enumerate(d["cases"]):
        for key in ("model", "phase", "batch", "time_s"):
            if key not in c:
                raise RoofplanError(f"{path}: case {c.get('id', i)} has no '{key}' field")
    return str(d.get("hardware", "")), d["cases"]


def compare_cases(hardware: str, cases: list[dict]) -> pd.DataFrame:
    system = load_hardware(hardware)
    kp = load_kernel_profile(system.gpu.name)
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
