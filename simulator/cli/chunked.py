"""`roofplan predict` flags for chunked prefill (--chunk-tokens, --chunk-context): a decode step
that also prefills a chunk of one more request's prompt (Job.chunk_tokens, Job.chunk_context;
the op list is simulator.core.ops.forward_ops / chunk_attention_ops)."""
from __future__ import annotations

from dataclasses import replace

from simulator.core.predict import Prediction, predict
from simulator.core.units import fmt_time


def add_chunk_args(p) -> None:
    p.add_argument("--chunk-tokens", type=int, default=0, metavar="N",
                   help="decode: chunked prefill, N prompt tokens of one more request in the same forward as the "
                        "batch's decode tokens (vLLM V1, SGLang)")
    p.add_argument("--chunk-context", type=int, default=0, metavar="M",
                   help="decode: that request's tokens prefilled by earlier chunks (the chunk attends to them)")


def chunk_job(args, job):
    """The job with --chunk-tokens and --chunk-context (validate_job checks them)."""
    return replace(job, chunk_tokens=getattr(args, "chunk_tokens", 0), chunk_context=getattr(args, "chunk_context", 0))


def chunk_note(job) -> str:
    """', prefill chunk N after M' for the title of a chunked step, else ''."""
    if not job.chunk_tokens:
        return ""
    return f" + prefill chunk {job.chunk_tokens}" + (f" after {job.chunk_context}" if job.chunk_context else "")


def decode_alone(model, system, job, ex, kp) -> Prediction | None:
    """The same decode step without its prefill chunk (None for a step without one)."""
    if not job.chunk_tokens:
        return None
    return predict(model, system, replace(job, chunk_tokens=0, chunk_context=0), ex, kp, check_memory=False,
                   with_ops=False)


def chunk_lines(job, pred: Prediction, alone: Prediction | None) -> str:
    """Footer line of a chunked step: what the step time means and what the chunk adds."""
    if alone is None:
        return ""
    return (f"\nchunked prefill: {job.chunk_tokens} prompt tokens of one more request"
            + (f" (after {job.chunk_context} prefilled)" if job.chunk_context else "")
            + f" share the forward with the {job.batch} decode tokens; the step is the inter-token latency of the "
              f"{job.batch} decoding requests and tokens/s counts their tokens only; decode alone "
              f"{fmt_time(alone.time_s)}, the chunk adds {fmt_time(pred.time_s - alone.time_s)} (no measured mixed "
              f"step checks this yet)")


def chunk_fields(job, pred: Prediction, alone: Prediction | None) -> dict:
    """JSON fields of a chunked step."""
    if alone is None:
        return {}
    return {"chunk_tokens": job.chunk_tokens, "chunk_context": job.chunk_context,
            "chunk_decode_alone_time_s": alone.time_s, "chunk_added_time_s": pred.time_s - alone.time_s}
