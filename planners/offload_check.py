"""Predicted (an offload plan, schema roofplan.offload-plan/1) vs measured (`roofplan run --plan`
result, schema roofplan.plan-run/1): whole-block time, prefill and decode time, throughput.

error = measured / predicted - 1 (positive: the run was slower than predicted). The plan's
prediction counts a whole generation (prefill of the block + gen_len - 1 decode steps, plus the
embedding and LM head), which is what `roofplan run --plan` times. Pure: no torch.
"""
from __future__ import annotations

import json
from pathlib import Path

from simulator.core.errors import RoofplanError

PLAN_SCHEMA = "roofplan.offload-plan/1"
RUN_SCHEMA = "roofplan.plan-run/1"


def load_json(path: str, what: str, schema: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise RoofplanError(f"{what} {path} does not exist; give the file written by "
                            + ("roofplan plan offload --format json" if schema == PLAN_SCHEMA else "roofplan run --plan P --result R"))
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise RoofplanError(f"{what} {path} is not JSON ({e.msg} at line {e.lineno}); regenerate it") from None
    if not isinstance(d, dict) or d.get("schema") != schema:
        got = d.get("schema") if isinstance(d, dict) else type(d).__name__
        raise RoofplanError(f"{what} {path} has schema {got!r}, not {schema}; "
                            + ("write it with roofplan plan offload ... --format json" if schema == PLAN_SCHEMA
                               else "write it with roofplan run --plan P --result R"))
    return d


def compare(plan: dict, result: dict) -> dict:
    """Rows of predicted vs measured and the plan's binding resource."""
    if result.get("phase") != plan.get("phase") or result.get("schedule", {}).get("block_size") != plan["schedule"]["block_size"]:
        raise RoofplanError(f"the result ({result.get('phase')}, block {result.get('schedule', {}).get('block_size')}) "
                            f"is not a run of this plan ({plan['phase']}, block {plan['schedule']['block_size']}); "
                            f"run roofplan run --plan on the same plan file")
    pr = plan["predicted"]
    rows = [("time per block", pr["time_s"], result["time_s"], "s")]
    if plan["phase"] == "decode":
        # the plan's prefill_s / decode_s are layer steps only; the rest (embedding, LM head) is
        # split by the stages' share so the two parts add up to time_s
        layers = pr["prefill_s"] + pr["decode_s"]
        scale = pr["time_s"] / layers if layers else 1.0
        rows += [("prefill", pr["prefill_s"] * scale, result["prefill_s"], "s"),
                 ("decode", pr["decode_s"] * scale, result["decode_s"], "s")]
    rows.append(("throughput", pr["tokens_per_s"], result["tokens_per_s"], "tokens/s"))
    out = [{"quantity": q, "predicted": p, "measured": m, "unit": u, "error": m / p - 1 if p else None}
           for q, p, m, u in rows]
    stages = [{"stage": s["stage"], "binds": s["binds"], "layer_time_s": s["layer_time_s"],
               "utilisation": s["utilisation"]} for s in plan["stages"]]
    return {"model": plan["model"], "hardware": plan["hardware"], "device": result.get("device_name"),
            "rows": out, "binds": plan["binds"], "stages": stages,
            "placement": {"planned": plan["placement"], "executed": result.get("placement")}}
