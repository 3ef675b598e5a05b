"""Published serving measurements of today's engines vs roofplan's serving simulator (issue 16).

Data: benchmarks/data/serving_published.yaml (sources, assumptions and roles there).
  1. steady_state: vLLM V1 median inter-token latencies (ML.ENERGY Leaderboard v3.0, H100), the
     points the vllm-v1 engine profile is fitted to (role fit) and held out from it (role check);
     predicted as the median steady-state step (simulator.serving.engine_fit.steady_step_s).
  2. serving_runs: SGLang v0.3.0's own benchmark (ShareGPT at 4 and 8 req/s and offline, Llama-3.1-8B
     on A100, 70B on 4 H100), replayed through `roofplan serve`'s simulation with the sglang profile
     (simulator.serving.engine_fit.run_predictions): median ITL, TPOT and TTFT, output throughput;
     all held out (the profile's GPU constants are vllm-v1's, carried: sglang.yaml says why).
  3. reproductions: serving results with chunked prefill, prefix caching, speculative decoding
     and fp8 weights, predicted through the serving tables / simulation with the engine profiles,
     never fitted.
`python benchmarks/serving_published.py` prints all three; `--fit ENGINE` re-runs the profile fit
(its constants and errors are the ones in hardware_specs/profiles/executors/<ENGINE>.yaml).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.core.models import load_model  # noqa: E402
from simulator.core.profiles import load_executor_profile  # noqa: E402
from simulator.core.specs import load_hardware  # noqa: E402
from simulator.serving import simulate as sv  # noqa: E402
from simulator.core.errors import RoofplanError  # noqa: E402
from simulator.serving.engine_fit import (Reproduction, errors, fit_engine, read_published, run_errors,  # noqa: E402
                                          summary)


def eagle_acceptance() -> float:
    """The per-token acceptance benchmarks/speculative.py fits to EAGLE's LLaMA2-Chat 7B point."""
    from benchmarks import speculative
    return speculative.fit_acceptance(speculative.load())


def tables_of(r: Reproduction, prefix_hit: float | None = None, spec: bool = True) -> sv.StepTables:
    ex = load_executor_profile(r.engine)
    if r.max_num_batched_tokens and ex.max_num_batched_tokens:
        ex = dataclasses.replace(ex, max_num_batched_tokens=r.max_num_batched_tokens)
    opts = sv.EngineOptions(weight_dtype=r.weight_dtype, prefix_hit=r.prefix_hit if prefix_hit is None else prefix_hit,
                            spec_tokens=r.spec_tokens if spec else 0,
                            spec_acceptance=(r.spec_acceptance or eagle_acceptance()) if spec and r.spec_tokens
                            else None)
    return sv.step_tables(load_model(r.model), load_hardware(r.hardware), tp=r.tp, dtype=r.dtype, executor=ex,
                          options=opts)


def steady_throughput(t: sv.StepTables, batch: int, context: int, prompt: int, output: int) -> float:
    """Output tokens/s of `batch` requests kept in flight: B tokens per mean step, the step the
    decode batch plus the prompts that replace finished requests (B x prompt / output tokens per
    step on average) in one mixed step (StepTables.mixed_time)."""
    step = float(t.mixed_time(batch, context, batch * prompt / output))
    return batch / step


def completed_rate(t: sv.StepTables, r: Reproduction, seed: int = 0) -> float:
    """Requests/s the simulation completes of `r.requests` Poisson arrivals at `r.rate_rps`."""
    mix = sv.RequestMix.of([r.prompt_tokens], [r.output_tokens])
    arrive, n_in, n_out = sv.sample_requests(mix, r.rate_rps, r.requests, seed)
    chunked = bool(t.engine is not None and t.engine.max_num_batched_tokens)
    sim = sv.replay(t, arrive, n_in, n_out, chunked_prefill=chunked, chunk_tokens=r.max_num_batched_tokens or 2048)
    done = arrive + sim.ttft_s + np.nan_to_num(sim.tpot_s) * (n_out - 1)
    return r.requests / float(np.max(done))


def predict_reproduction(r: Reproduction) -> float:
    if r.metric == "output_tokens_per_s":
        return steady_throughput(tables_of(r), r.batch, r.context_tokens, r.prompt_tokens, r.output_tokens)
    if r.metric == "speedup":
        ctx = r.context_tokens
        return float(tables_of(r, spec=False).decode_time(r.batch, ctx) / tables_of(r).decode_time(r.batch, ctx))
    if r.metric == "requests_per_s":
        return completed_rate(tables_of(r), r)
    return completed_rate(tables_of(r), r) / completed_rate(tables_of(r, prefix_hit=0.0), r)


def reproduction_rows(f=None) -> list[dict]:
    f = f or read_published()
    out = []
    for r in f.reproductions:
        pred = predict_reproduction(r)
        out.append({"name": r.name, "feature": r.feature, "metric": r.metric, "published": r.published,
                    "predicted": pred, "error": pred / r.published - 1, "xfail_error_pct": r.xfail_error_pct})
    return out


UNITS = {"median_itl_ms": "ms", "median_tpot_ms": "ms", "median_ttft_ms": "ms", "output_tokens_per_s": "tok/s"}


def print_runs(f, engine: str) -> None:
    """The engine's serving runs, published vs predicted per metric, fit and held out apart."""
    rows = run_errors(f, load_executor_profile(engine), engine)
    for role, title in (("fit", "fitted"), ("check", "held out")):
        mine = [r for r in rows if r["role"] == role]
        if not mine:
            continue
        print(f"\n{engine} serving runs, {title} (engine profile {engine}):")
        run = None
        for r in mine:
            if r["run"] != run:
                run = r["run"]
                print(f"  {run}  (decode batch {r['decode_batch']:.1f} simulated)")
            miss = " (known miss, strict xfail)" if r["xfail_error_pct"] is not None else ""
            print(f"      {r['metric']:20s} published {r['published']:8.2f} {UNITS[r['metric']]:5s} predicted "
                  f"{r['predicted']:8.2f}  error {100 * r['error']:+6.1f}%{miss}")
    s = summary(rows)
    print("\n" + ";  ".join(f"{'fit' if k == 'fit' else 'held out'}: {v['points']} points, MAPE {v['mape_pct']}%, "
                            f"worst {v['worst_pct']:+}%" for k, v in s.items()))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", metavar="ENGINE", help="re-run the engine profile's fit and print its constants")
    args = ap.parse_args(argv)
    f = read_published()
    if args.fit:
        try:
            ex, rep = fit_engine(load_executor_profile(args.fit), args.fit, f)
        except RoofplanError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        print(f"{args.fit}: {rep}")
    ex = load_executor_profile("vllm-v1")
    rows = errors(f, ex, "vllm-v1")
    for role, title in (("fit", "fitted"), ("check", "held out")):
        print(f"\nvLLM V1 median ITL, {title} points (engine profile vllm-v1):")
        print(f"  {'run':22s}{'batch':>7s}{'published':>11s}{'predicted':>11s}{'error':>8s}")
        for r in rows:
            if r["role"] == role:
                print(f"  {r['run']:22s}{r['batch']:7.0f}{r['published_ms']:9.2f}ms{r['predicted_ms']:9.2f}ms"
                      f"{100 * r['error']:+7.1f}%")
    s = summary(rows)
    print(f"\nfit: {s['fit']['points']} points, MAPE {s['fit']['mape_pct']}%, worst {s['fit']['worst_pct']:+}%;  "
          f"held out: {s['check']['points']} points, MAPE {s['check']['mape_pct']}%, worst {s['check']['worst_pct']:+}%")
    print_runs(f, "sglang")
    print("\nServing reproductions (held out: nothing here is fitted):")
    for r in reproduction_rows(f):
        miss = " (known miss, strict xfail)" if r["xfail_error_pct"] is not None else ""
        print(f"  [{r['feature']}] {r['name']}\n      {r['metric']}: published {r['published']:.4g}, "
              f"predicted {r['predicted']:.4g}, error {100 * r['error']:+.1f}%{miss}")


if __name__ == "__main__":
    main()
