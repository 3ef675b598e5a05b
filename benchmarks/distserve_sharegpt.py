"""DistServe's OPT-13B chatbot case on A100-80GB: measured per-request latencies replayed through
roofplan's serving simulation, and per-GPU goodput predicted vs measured.

Measured (benchmarks/data/distserve/*.csv): the DistServe authors' ground-truth runs
(LLMServe/DistServe, simdistserve/benchmarks/alignment/data-ground-truth/opt-13b-sharegpt/*.exp):
OPT-13B, ShareGPT prompts/outputs, Poisson arrivals, one A100-SXM4-80GB node.
  vllm-N-R.csv               vLLM (V0 scheduler, no chunked prefill) on 1 GPU, N requests at R req/s
  distserve-c21d11-N-R.csv   DistServe: a prefill instance at TP 2 + a decode instance at TP 1 (3 GPUs)
One row per request: issue time, prompt and output tokens, measured TTFT and TPOT (ms).
SLOs (the DistServe simulator's quick start for this case, "OPT-13B with ShareGPT in one node 4xA100"):
P90 TTFT <= 200 ms and P90 TPOT <= 100 ms; a request attains when it meets both; goodput is the
highest rate at which >= 90% of requests attain, per GPU.

Predicted: the same requests (same arrival times and lengths) through `serving.replay`, step times
from `predict` with the engines' executor profiles (hardware_specs/profiles/executors/{vllm-v0,
distserve}.yaml, fitted to the engines' published A100 step-time profiles by `roofplan calibrate
--step-times benchmarks/data/distserve/a100-step-times.yaml`: a different measurement from these
runs). Nothing here is fitted to the runs.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from simulator.serving import simulate as sv
from simulator.core.models import load_model
from simulator.core.profiles import load_executor_profile
from simulator.core.specs import load_hardware

DATA = Path(__file__).parent / "data" / "distserve"
SLO_TTFT_S, SLO_TPOT_S, ATTAIN = 0.2, 0.1, 0.9
GPUS = {"vllm": 1, "distserve-c21d11": 3}
VLLM_MAX_BATCHED_TOKENS = 2048     # vLLM V0: max(max_model_len, 2048), OPT max_model_len 2048
DISTSERVE_CONTEXT_TOKENS = 8192    # DistServe evaluation servers: --context-max-tokens-per-batch 8192


def load_run(path: Path) -> dict:
    with open(path) as f:
        rows = sorted((float(r["issue_time"]), int(r["prompt_len"]), int(r["output_len"]), float(r["ttft_ms"]),
                       float(r["tpot_ms"])) for r in csv.DictReader(f))
    a = np.array(rows)
    system, n, rate = path.stem.rsplit("-", 2)
    return {"system": system, "n": int(n), "rate": float(rate), "arrive": a[:, 0] - a[0, 0],
            "n_in": a[:, 1].astype(int), "n_out": a[:, 2].astype(int), "ttft_s": a[:, 3] / 1e3, "tpot_s": a[:, 4] / 1e3}


def runs() -> list[dict]:
    return sorted((load_run(p) for p in DATA.glob("*.csv")), key=lambda r: (r["system"], r["rate"]))


def tables() -> dict:
    model = load_model("opt-13b")
    a100 = load_hardware("a100-sxm-80gb")
    vllm, ds = load_executor_profile("vllm-v0"), load_executor_profile("distserve")
    return {"vllm": sv.step_tables(model, a100, tp=1, dtype="fp16", executor=vllm),
            "prefill": sv.step_tables(model, a100, tp=2, dtype="fp16", executor=ds),
            "decode": sv.step_tables(model, a100, tp=1, dtype="fp16", executor=ds),
            "link_Bps": a100.peer_link.bw_Bps}


def replay(run: dict, t: dict, arrive=None) -> sv.SimResult:
    arrive = run["arrive"] if arrive is None else arrive
    if run["system"] == "vllm":
        return sv.replay(t["vllm"], arrive, run["n_in"], run["n_out"], chunked_prefill=False,
                         chunk_tokens=VLLM_MAX_BATCHED_TOKENS)
    return sv.replay(t["prefill"], arrive, run["n_in"], run["n_out"], tables_decode=t["decode"],
                     link_Bps=t["link_Bps"], prefill_batch_tokens=DISTSERVE_CONTEXT_TOKENS)


def attainment(ttft_s, tpot_s, n_out) -> float:
    tpot_ok = (tpot_s <= SLO_TPOT_S) | (n_out <= 1)
    return float(np.mean((ttft_s <= SLO_TTFT_S) & tpot_ok))


def goodput(rates, attain) -> float:
    """Highest rate with attainment >= ATTAIN: the first crossing below it, interpolated linearly
    between the measured rates around it (the highest rate when it never drops below; 0 when even
    the lowest measured rate misses it: the SLO is out of reach at any load)."""
    rates, attain = np.asarray(rates, float), np.asarray(attain, float)
    if attain[0] < ATTAIN:
        return 0.0
    for k in range(1, len(rates)):
        if attain[k] < ATTAIN:
            f = (attain[k - 1] - ATTAIN) / (attain[k - 1] - attain[k])
            return float(rates[k - 1] + f * (rates[k] - rates[k - 1]))
    return float(rates[-1])


def placements(n_gpus: int = 4, tps=(1, 2, 4)) -> list[tuple[int, int, int, int]]:
    """(prefill TP, prefill instances, decode TP, decode instances) using at most n_gpus GPUs."""
    return [(tp_p, n_p, tp_d, n_d) for tp_p in tps for tp_d in tps for n_p in range(1, n_gpus + 1)
            for n_d in range(1, n_gpus + 1) if tp_p * n_p + tp_d * n_d <= n_gpus]


def search_placements(n_gpus: int = 4, n_requests: int = 600, seed: int = 0) -> list[dict]:
    """DistServe's placement search for this case (its simulator's quick start: OPT-13B, ShareGPT,
    one node of 4 A100-80GB, the SLOs above): for every disaggregated placement on <= n_gpus GPUs,
    the highest Poisson rate at which >= 90% of requests attain (`sv.bisect_rate`: bisection to
    0.02 req/s; requests drawn from the measured runs' prompt/output lengths, seeded), per GPU used.
    Best first."""
    model = load_model("opt-13b")
    a100 = load_hardware("a100-sxm-80gb")
    ex = load_executor_profile("distserve")
    tabs = {tp: sv.step_tables(model, a100, tp=tp, dtype="fp16", executor=ex) for tp in (1, 2, 4)}
    rs = runs()
    mix = sv.RequestMix.of(np.concatenate([r["n_in"] for r in rs]), np.concatenate([r["n_out"] for r in rs]))
    out = []
    for tp_p, n_p, tp_d, n_d in placements(n_gpus):
        def ok(rate):
            sim = sv.simulate(tabs[tp_p], mix, rate, n_requests=n_requests, seed=seed, tables_decode=tabs[tp_d],
                              n_prefill=n_p, n_decode=n_d, link_Bps=a100.peer_link.bw_Bps,
                              prefill_batch_tokens=DISTSERVE_CONTEXT_TOKENS)
            return attainment(sim.ttft_s, np.nan_to_num(sim.tpot_s), sim.out_tokens) >= ATTAIN
        lo = sv.bisect_rate(ok, 8.0 * n_gpus, xtol=0.02)   # attainment is a step function of the rate
        used = tp_p * n_p + tp_d * n_d
        out.append({"placement": f"c{tp_p}1d{tp_d}1" + (f" x{n_p}P{n_d}D" if (n_p, n_d) != (1, 1) else ""),
                    "gpus": used, "rate": lo, "per_gpu": lo / used})
    return sorted(out, key=lambda x: -x["per_gpu"])


def compare() -> dict:
    t = tables()
    out: dict = {"runs": [], "goodput_per_gpu": {}}
    for r in runs():
        sim = replay(r, t)
        p90 = lambda x: float(np.nanpercentile(x, 90))
        tpot_m = np.where(r["n_out"] > 1, r["tpot_s"], np.nan)
        out["runs"].append({
            "system": r["system"], "rate": r["rate"], "requests": len(r["arrive"]),
            "ttft_p90_ms": (p90(r["ttft_s"]) * 1e3, p90(sim.ttft_s) * 1e3),
            "tpot_p90_ms": (p90(tpot_m) * 1e3, p90(sim.tpot_s) * 1e3),
            "attainment": (attainment(r["ttft_s"], r["tpot_s"], r["n_out"]),
                           attainment(sim.ttft_s, np.nan_to_num(sim.tpot_s), r["n_out"]))})
    for system, n_gpu in GPUS.items():
        rows = [x for x in out["runs"] if x["system"] == system]
        if not rows:
            continue
        rates = [x["rate"] for x in rows]
        meas = goodput(rates, [x["attainment"][0] for x in rows]) / n_gpu
        pred = goodput(rates, [x["attainment"][1] for x in rows]) / n_gpu
        out["goodput_per_gpu"][system] = (meas, pred)
    return out


def main() -> dict:
    res = compare()
    print(f"OPT-13B, ShareGPT, A100-80GB; SLO P90 TTFT <= {SLO_TTFT_S * 1e3:.0f} ms, P90 TPOT <= {SLO_TPOT_S * 1e3:.0f} ms "
          f"(measured / predicted by replaying the same requests)")
    print(f"{'system':18s}{'rate':>6s}{'reqs':>6s}{'P90 TTFT ms':>18s}{'P90 TPOT ms':>16s}{'attainment':>16s}")
    for x in res["runs"]:
        (tm, tp), (om, op), (am, ap) = x["ttft_p90_ms"], x["tpot_p90_ms"], x["attainment"]
        print(f"{x['system']:18s}{x['rate']:6.1f}{x['requests']:6d}{tm:9.0f} /{tp:6.0f}{om:8.1f} /{op:6.1f}{am:9.2f} /{ap:5.2f}")
    print("\ngoodput per GPU (req/s at >= 90% attainment):   measured  predicted  error")
    for system, (m, p) in res["goodput_per_gpu"].items():
        err = f"{100 * (p / m - 1):+5.1f}%" if m else ("  both 0" if not p else "")
        print(f"  {system:18s} ({GPUS[system]} GPU{'s' if GPUS[system] > 1 else ''}){'':12s}{m:8.2f}  {p:9.2f}  {err}")
    best = {s_: max(x["attainment"][0] for x in res["runs"] if x["system"] == s_) for s_ in res["goodput_per_gpu"]}
    for s_, b in best.items():
        if b < ATTAIN:
            pb = max(x["attainment"][1] for x in res["runs"] if x["system"] == s_)
            print(f"  {s_}: no measured rate reaches {ATTAIN:.0%} attainment (best {b:.2f} measured, {pb:.2f} predicted):"
                  f" its longest prompts alone take longer than the TTFT SLO on one GPU")
    print("\nplacement search on one node of 4 x A100-80GB (DistServe engine; per GPU used):")
    best = search_placements()
    for x in best[:5]:
        print(f"  {x['placement']:14s} {x['gpus']} GPUs  {x['rate']:5.2f} req/s  {x['per_gpu']:5.2f} per GPU")
    print("  DistServe's simulator on the same case (simdistserve README): c21d11, 1.56 per GPU")
    res["placements"] = best
    return res


if __name__ == "__main__":
    main()
