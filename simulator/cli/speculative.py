"""`roofplan predict` flags for speculative decoding (--spec-tokens, --spec-acceptance,
--draft-model) and prefix caching (--prefix-hit); the library is simulator.core.speculative."""
from __future__ import annotations

from dataclasses import replace

from simulator.core.errors import FieldError, RoofplanError
from simulator.core.models import load_model
from simulator.core.speculative import SpeculativePrediction, predict_speculative, shared_prefix_kv_bytes
from simulator.core.units import fmt_bytes, fmt_energy, fmt_rate, fmt_time
from simulator.cli.args import finite_float


def add_spec_args(p) -> None:
    p.add_argument("--spec-tokens", type=int, default=0, metavar="K",
                   help="decode: speculative decoding with K drafted tokens per step (the step: K draft steps + "
                        "one target verification of K + 1 tokens)")
    p.add_argument("--spec-acceptance", type=finite_float, default=None, metavar="A",
                   help="per-token acceptance rate in (0, 1] (Leviathan et al. 2023): E = (1 - A^(K+1)) / (1 - A) "
                        "tokens per step")
    p.add_argument("--draft-model", default=None, metavar="M",
                   help="draft model (zoo name or config.json; same vocabulary, smaller); default: an EAGLE-style "
                        "one-layer head on the target")
    p.add_argument("--prefix-hit", type=finite_float, default=0.0, metavar="R",
                   help="prefill: share of each prompt already in the KV cache (prefix caching), in [0, 1)")


def spec_job(args, job):
    """The job with --spec-tokens and --prefix-hit; the flag combinations the Job cannot check."""
    k = getattr(args, "spec_tokens", 0)
    if (getattr(args, "spec_acceptance", None) is not None or getattr(args, "draft_model", None)) and not k:
        flag = "--spec-acceptance" if args.spec_acceptance is not None else "--draft-model"
        raise RoofplanError(f"{flag} needs --spec-tokens K (speculative decoding); add it or drop {flag}")
    if k and args.spec_acceptance is None and job.phase == "decode":
        raise RoofplanError("--spec-tokens needs --spec-acceptance A (the per-token acceptance rate in (0, 1])")
    return replace(job, spec_tokens=k, prefix_hit=getattr(args, "prefix_hit", 0.0))


def predict_spec(args, model, system, job, ex, kp, carbon_g_per_kwh) -> SpeculativePrediction | None:
    """The speculative step the flags ask for, or None without --spec-tokens."""
    if not job.spec_tokens:
        return None
    if job.phase != "decode":
        raise FieldError("spec_tokens", job.spec_tokens, f"applies to phase decode only (phase is {job.phase})",
                         "drop it, or use phase decode")
    draft = load_model(args.draft_model) if args.draft_model else None
    return predict_speculative(model, system, job, args.spec_acceptance, draft, ex, kp,
                               carbon_g_per_kwh=carbon_g_per_kwh)


def spec_lines(spec: SpeculativePrediction | None, model, job, pred) -> str:
    """Footer lines: the speculative step, or the prefix cache's effect on a prefill."""
    if spec is not None:
        k = spec.spec_tokens
        return (f"\nspeculative decoding: K = {k} drafted by {spec.draft_name}, acceptance {spec.acceptance:g} -> "
                f"{spec.tokens_per_step:.3g} tokens per sequence per step (the step above is the verification)"
                f"\nspeculative step {k} x {fmt_time(spec.draft.time_s)} draft + {fmt_time(spec.verify.time_s)} verify = "
                f"{fmt_time(spec.time_s)}  |  {fmt_rate(spec.tokens_per_s)} tokens/s vs {fmt_rate(spec.plain_tokens_per_s)} "
                f"without (x{spec.speedup:.2f}: {'pays' if spec.speedup > 1 else 'does not pay'} at batch {job.batch})"
                f"  |  peak memory with the draft {fmt_bytes(spec.peak_memory_bytes)}"
                + (f"\nspeculative step energy {fmt_energy(spec.energy['energy_j'])} ({spec.energy['power_w']:.0f} W per "
                   f"GPU), {spec.energy['energy_j_per_token']:.3g} J/token over the {spec.tokens_per_step:.3g} tokens "
                   f"per sequence (the power line above is the verification's alone)" if spec.energy else ""))
    if job.prefix_hit:
        shared = shared_prefix_kv_bytes(model, job)
        return (f"\nprefix cache: {int(job.cached_tokens)} of {job.seq} prompt tokens per sequence cached "
                f"(hit {job.prefix_hit:g}): the forward runs over {job.query_tokens} tokens, attention reads all "
                f"{job.seq}; KV {fmt_bytes(pred.memory.kv_cache)} per GPU, {fmt_bytes(shared)} if the batch shares "
                f"one prefix")
    return ""


def spec_fields(spec: SpeculativePrediction | None, model, job) -> dict:
    """JSON fields of the speculative step (they replace time_s, tokens_per_s and peak memory) or of
    the prefix cache."""
    if spec is not None:
        return spec.as_dict()
    if job.prefix_hit:
        return {"prefix_hit": job.prefix_hit, "prefix_cached_tokens": int(job.cached_tokens),
                "prefix_computed_tokens": int(job.query_tokens),
                "prefix_shared_kv_cache_bytes": shared_prefix_kv_bytes(model, job)}
    return {}
