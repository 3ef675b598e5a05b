"""`roofplan serve`: one serving instance (a model on --tp GPUs) under a request workload and an
engine (vLLM V1, SGLang, vLLM V0, ...): TTFT and TPOT percentiles, decode batch, KV capacity and
utilisation from the closed forms (simulator.serving.simulate.aggregated) and, with --simulate N,
from the iteration-level simulation of N Poisson requests side by side; with SLOs, the highest
rate that meets them (goodput)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from simulator.core.errors import FieldError
from simulator.core.models import load_model
from simulator.core.profiles import load_executor_profile, load_kernel_profile
from simulator.core.specs import load_hardware
from simulator.core.units import fmt_time
from simulator.cli.args import finite_float
from simulator.cli.predict import add_quant_args
from simulator.cli.speculative import add_spec_args
from simulator.report.tables import add_format_arg, emit, fmt_of
from simulator.serving import simulate as sv
from simulator.serving.workload import load_serving_workload

QUANTILES = (50, 90, 99)


def register(sub) -> None:
    p = sub.add_parser("serve", help="TTFT/TPOT of one serving instance under a workload and an engine")
    p.add_argument("--model", required=True, help="zoo name (roofplan models) or path/to/config.json")
    p.add_argument("--hardware", required=True, help="GPU or system name (roofplan hw list)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel GPUs of the instance")
    p.add_argument("--dtype", default="bf16", help="compute dtype (bf16, fp16)")
    p.add_argument("--workload", required=True, help="workloads/serving name (chat, mixed, ...) or a .yaml path")
    p.add_argument("--rate", type=finite_float, default=None, metavar="R",
                   help="arrival rate, requests/s (Poisson; default: the workload's request_rate_rps)")
    p.add_argument("--engine", default="vllm-v1", metavar="NAME",
                   help="executor profile of the engine: vllm-v1, sglang (chunked prefill, CUDA graphs, async "
                        "scheduling), vllm-v0, distserve, default, or a profile .yaml")
    add_quant_args(p, kv=True)   # --weight-dtype, --kv-dtype
    add_spec_args(p)             # --spec-tokens, --spec-acceptance, --draft-model, --prefix-hit
    p.add_argument("--max-num-batched-tokens", type=int, default=None, metavar="N",
                   help="token budget per step (default: the engine's; vllm-v0 and engines without chunked "
                        f"prefill: whole prompts up to {sv.V0_BATCHED_TOKENS} tokens per step)")
    p.add_argument("--simulate", type=int, default=0, metavar="N",
                   help="also run the iteration-level simulation of N Poisson requests (seeded)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated arrivals")
    p.add_argument("--slo-ttft-ms", type=finite_float, default=None, help="TTFT SLO (ms) at --percentile")
    p.add_argument("--slo-tpot-ms", type=finite_float, default=None, help="TPOT SLO (ms) at --percentile")
    p.add_argument("--percentile", type=int, default=90, choices=QUANTILES[1:], help="SLO percentile")
    add_format_arg(p)
    p.set_defaults(func=cmd_serve)


def engine_options(args) -> sv.EngineOptions:
    """EngineOptions from the flags (checked by EngineOptions.check: one line per bad value)."""
    draft = load_model(args.draft_model) if args.draft_model else None
    return sv.EngineOptions(weight_dtype=args.weight_dtype, kv_dtype=args.kv_dtype, prefix_hit=args.prefix_hit,
                            spec_tokens=args.spec_tokens, spec_acceptance=args.spec_acceptance, draft=draft).check()


def build(args):
    """(tables, mix, rate, scheduling keywords, executor) for the flags."""
    model = load_model(args.model)
    system = load_hardware(args.hardware)
    if args.tp < 1:
        raise FieldError("tp", args.tp, "must be >= 1")
    ex = load_executor_profile(args.engine)
    budget = args.max_num_batched_tokens
    if budget is not None and budget < 1:
        raise FieldError("max_num_batched_tokens", budget, "must be >= 1 token per step")
    if ex.max_num_batched_tokens and budget is not None:   # its profiling forward (KV budget) follows the budget
        ex = dataclasses.replace(ex, max_num_batched_tokens=budget)
    opts = engine_options(args)
    tables = sv.step_tables(model, system, tp=args.tp, dtype=args.dtype, executor=ex,
                            kernels=load_kernel_profile(system.gpu.name), options=opts)
    wl = load_serving_workload(args.workload)
    mix = wl.mix()
    rate = wl.rate_rps if args.rate is None else args.rate
    if rate <= 0:
        raise FieldError("rate", rate, "must be > 0 requests/s")
    need = tables.kv_tokens(mix.in_tokens, mix.out_tokens)
    room = tables.kv_budget_tokens - tables.shared_prefix_tokens(mix.in_tokens)
    if float(need.max()) > room:
        raise FieldError("tp", args.tp, f"the workload's largest request holds {need.max():.0f} KV tokens and "
                         f"{model.name} on {args.tp} x {system.gpu.name} ({ex.name}) has room for {max(room, 0):.0f}",
                         "use a larger --tp, a larger GPU, --kv-dtype fp8 or a quantized --weight-dtype")
    chunked, tokens = sv.scheduling(tables, None, budget)     # the engine's rule, as aggregated/replay apply it
    sched = {"chunked_prefill": chunked, "chunk_tokens": tokens}
    return model, system, ex, tables, wl, mix, rate, sched


def simulated(tables, mix, rate, n, seed, sched) -> dict:
    sim = sv.simulate(tables, mix, rate, n_requests=n, seed=seed, **sched)
    out = {"requests": n, "seed": seed, "truncated": sim.truncated, "iterations": sim.iterations,
           "ttft_mean_s": float(np.nanmean(sim.ttft_s)), "tpot_mean_s": float(np.nanmean(sim.tpot_s))}
    for q in QUANTILES:
        out[f"ttft_p{q}_s"] = sim.percentile("ttft_s", q)
        out[f"tpot_p{q}_s"] = sim.percentile("tpot_s", q)
    # mean decode batch by Little's law: time the requests spent decoding over the arrivals' span
    decoding = np.nansum(np.where(sim.out_tokens > 1, sim.tpot_s * (sim.out_tokens - 1), 0.0))
    out["decode_batch"] = float(decoding * rate / n)
    return out


def _ms(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt_time(x)


def cmd_serve(args) -> int:
    if args.simulate < 0:
        raise FieldError("simulate", args.simulate, "must be >= 0 requests")
    model, system, ex, tables, wl, mix, rate, sched = build(args)
    est = sv.aggregated(tables, mix, rate, chunk_tokens=sched["chunk_tokens"], chunked_prefill=sched["chunked_prefill"])
    sim = simulated(tables, mix, rate, args.simulate, args.seed, sched) if args.simulate else None
    kv_cap = float(tables.kv_budget_tokens)
    per_req = mix.mean(tables.kv_tokens(mix.in_tokens, mix.out_tokens))
    obj = {"model": model.name, "hardware": system.gpu.name, "tp": args.tp, "engine": ex.name,
           "options": tables.options.label if tables.options is not None else "", "workload": wl.name,
           "rate_rps": rate, "chunked_prefill": sched["chunked_prefill"],
           "max_num_batched_tokens": sched["chunk_tokens"],
           "kv_capacity_tokens": kv_cap, "kv_tokens_per_request": per_req,
           "kv_capacity_requests": kv_cap / per_req, "closed_form": est.as_dict()}
    if sim is not None:
        obj["simulation"] = sim
    slo = None
    if args.slo_ttft_ms is not None or args.slo_tpot_ms is not None:
        for f in ("slo_ttft_ms", "slo_tpot_ms"):
            v = getattr(args, f)
            if v is not None and v <= 0:
                raise FieldError(f, v, "must be > 0 ms")
        ttft = args.slo_ttft_ms / 1e3 if args.slo_ttft_ms is not None else math.inf
        tpot = args.slo_tpot_ms / 1e3 if args.slo_tpot_ms is not None else math.inf
        slo = {"ttft_s": ttft, "tpot_s": tpot, "percentile": args.percentile,
               "max_rate_rps": sv.max_rate(lambda r: sv.aggregated(tables, mix, r, chunk_tokens=sched["chunk_tokens"],
                                                                    chunked_prefill=sched["chunked_prefill"]),
                                           ttft, tpot, args.percentile)}
        if args.simulate:
            slo["max_rate_simulated_rps"] = sv.max_rate_simulated(
                tables, mix, ttft, tpot, args.percentile, n_requests=args.simulate, seed=args.seed,
                hi=max(4 * slo["max_rate_rps"], 1.0), **sched)
        obj["slo"] = slo
    rows = []
    for name, key in [("TTFT mean", "ttft_mean_s"), *[(f"TTFT p{q}", f"ttft_p{q}_s") for q in QUANTILES],
                      ("TPOT mean", "tpot_mean_s"), *[(f"TPOT p{q}", f"tpot_p{q}_s") for q in QUANTILES]]:
        rows.append([name, _ms(getattr(est, key)) if est.stable else "unstable"]
                    + ([_ms(sim[key])] if sim else []))
    rows.append(["decode batch", f"{est.decode_batch:.1f}" if est.stable else "-"]
                + ([f"{sim['decode_batch']:.1f}"] if sim else []))
    rows.append(["utilisation", f"{100 * est.utilisation:.0f}%" if est.stable else "-"] + (["-"] if sim else []))
    header = ["metric", "closed form"] + (["simulation"] if sim else [])
    opts = f", {obj['options']}" if obj["options"] else ""
    sched_note = (f"chunked prefill, {obj['max_num_batched_tokens']} tokens per step" if sched["chunked_prefill"]
                  else f"whole prompts first, up to {sched['chunk_tokens']} tokens per step")
    title = (f"{model.name} on {args.tp} x {system.gpu.name}, {ex.name} engine ({sched_note}{opts}), "
             f"workload {wl.name} at {rate:g} req/s")
    eng = tables.engine
    footer = (f"KV cache: {kv_cap:,.0f} tokens"
              + (f" in blocks of {eng.kv_block_tokens}" if eng is not None and eng.kv_block_tokens > 1 else "")
              + f" ({kv_cap / per_req:,.0f} requests of {per_req:,.0f} tokens on average"
              + (", the shared prefix held once" if args.prefix_hit else "") + ")")
    if eng is not None and eng.graph_sizes:
        footer += (f"\nCUDA graphs: decode batches padded up to {len(eng.graph_sizes)} captured sizes "
                   f"(largest {eng.graph_sizes[-1]}); host time per step "
                   + ("hidden under the GPU's (async scheduling)" if eng.async_scheduling else "added to the GPU's"))
    if not est.stable:
        footer += f"\nclosed form: unstable at this rate: {est.reason}"
    if sim is not None and sim["truncated"]:
        footer += "\nsimulation: stopped before every request finished (overloaded): its latencies are a lower bound"
    if slo is not None:
        what = " and ".join(f"{k} {args.percentile}th percentile <= {v * 1e3:g} ms"
                            for k, v in (("TTFT", slo["ttft_s"]), ("TPOT", slo["tpot_s"])) if v != math.inf)
        footer += f"\nmax rate meeting {what}: {slo['max_rate_rps']:.3g} req/s (closed form)"
        if "max_rate_simulated_rps" in slo:
            footer += f", {slo['max_rate_simulated_rps']:.3g} req/s (simulation)"
    emit(fmt_of(args), json_obj=obj, rows=rows, header=header, title=title, footer=footer)
    return 0
