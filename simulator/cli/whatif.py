"""`roofplan whatif`: one workload across GPU types and counts -- latency, throughput, memory, $.

The flagship question before renting anything: "Llama-3.1-70B decode on 1/2/4/8 H100 vs A100?"
Each GPU count uses tensor parallelism inside one node (the Megatron split the core models);
configurations that do not fit in memory are listed as such, not dropped.
"""
from __future__ import annotations

from dataclasses import replace

from simulator.core.errors import FieldError, RoofplanError, clip
from simulator.core import power
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.pricing import cheapest_price_per_gpu_h
from simulator.core.profiles import load_executor_profile, load_kernel_profile
from simulator.report.tables import add_format_arg, emit, fmt_of
from simulator.core.specs import load_hardware
from simulator.core.units import GiB, fmt_rate, fmt_time
from simulator.core.workload import ALL_LINEAR
from simulator.cli.predict import add_energy_args, add_quant_args, job_from_args, quant_note
from simulator.cli.speculative import add_spec_args, spec_job
from simulator.cli.chunked import add_chunk_args, chunk_job, chunk_note
from simulator.core.speculative import check_acceptance, check_draft, predict_speculative


def register(sub) -> None:
    p = sub.add_parser("whatif", help="compare one workload across GPUs and GPU counts (latency, tokens/s, memory, $/1M tokens)")
    p.add_argument("--model", required=True)
    p.add_argument("--hardware", required=True, help="comma-separated GPU names, e.g. h100-sxm,a100-sxm-80gb")
    p.add_argument("--gpus", default="1,2,4,8", help="comma-separated GPU counts (tensor parallel degree)")
    p.add_argument("--phase", default="decode", choices=("prefill", "decode", "train"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=0)
    p.add_argument("--context", type=int, default=0)
    p.add_argument("--dtype", default="bf16")
    add_quant_args(p, kv=True)   # --weight-dtype, --kv-dtype
    add_spec_args(p)             # --spec-tokens, --spec-acceptance, --draft-model, --prefix-hit
    add_chunk_args(p)            # --chunk-tokens, --chunk-context
    p.add_argument("--executor", default="default")
    add_energy_args(p, tokens=False)
    add_format_arg(p)
    p.set_defaults(func=cmd_whatif)


def _ints(text: str, flag: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RoofplanError(f"{flag} '{clip(text)}' must be comma-separated integers, e.g. 1,2,4,8") from None
    if not vals or min(vals) < 1:
        raise RoofplanError(f"{flag} '{clip(text)}' must list positive integers")
    return vals


def cmd_whatif(args) -> int:
    model = load_model(args.model)
    ex = load_executor_profile(args.executor)
    power.check_carbon(args.carbon_g_per_kwh)
    base = chunk_job(args, spec_job(args, job_from_args(_with_defaults(args))))   # as predict builds it
    power.check_cap(base.power_cap_w)
    draft = None
    if base.spec_tokens:    # what no GPU choice changes: one line before the table
        check_acceptance(args.spec_acceptance)
        draft = load_model(args.draft_model) if args.draft_model else None
        if draft is not None:
            check_draft(draft, model)
    rows, objs = [], []
    for hw in [h.strip() for h in args.hardware.split(",") if h.strip()]:
        system = load_hardware(hw)
        kp = load_kernel_profile(system.gpu.name)
        price, instance = cheapest_price_per_gpu_h(system.gpu.name)
        for n in _ints(args.gpus, "--gpus"):
            job = replace(base, tp=n)
            try:
                if job.spec_tokens and job.phase == "decode":   # predict --spec-tokens: the same function
                    spec = predict_speculative(model, system, job, args.spec_acceptance, draft, ex, kp,
                                               check_memory=False, carbon_g_per_kwh=args.carbon_g_per_kwh)
                    p = spec.verify
                else:
                    spec = None
                    p = predict(model, system, job, ex, kp, check_memory=False, carbon_g_per_kwh=args.carbon_g_per_kwh)
            except RoofplanError as e:
                if isinstance(e, FieldError):     # a row's message spells the field as its flag
                    from simulator.cli.main import flag_of
                    e = RoofplanError(e.for_flags(flag_of))
                rows.append([hw, n, "-", "-", "-", "-", "-", "-", "-", str(e).split(";")[0]])
                objs.append({"hardware": hw, "gpus": n, "error": str(e)})
                continue
            # a speculative step: K draft steps + the verification, E tokens per sequence, and the
            # energy of the whole step (predict_speculative's)
            time_s, tokens_per_s, peak = (spec.time_s, spec.tokens_per_s, spec.peak_memory_bytes) if spec else \
                (p.time_s, p.tokens_per_s, p.peak_memory_bytes)
            usd = price * n / 3600 / tokens_per_s * 1e6 if price else None
            fits = peak <= system.gpu.mem_bytes if spec else p.fits
            e = (spec.energy if spec else (p.energy.as_dict() if p.energy is not None else None))
            rows.append([hw, n, fmt_time(time_s) if fits else "-", fmt_rate(tokens_per_s) if fits else "-",
                         f"{peak / GiB:.1f} / {system.gpu.mem_bytes / GiB:.0f}",
                         f"{usd:.3f}" if usd is not None and fits else "-",
                         f"{e['power_w']:.0f}" if e and fits else "-",
                         f"{e['energy_j_per_token']:.3g}" if e and fits else "-",
                         p.bound, ("ok" if fits else "does not fit") + (f", x{spec.speedup:.2f} vs plain decode"
                                                                        if spec and fits else "")])
            energy = {k: (float(v) if fits and v is not None else None) for k, v in e.items()} if e else {}
            extra = {"spec_tokens_per_step": spec.tokens_per_step, "spec_speedup": spec.speedup,
                     "spec_plain_tokens_per_s": spec.plain_tokens_per_s, "spec_draft": spec.draft_name} if spec else {}
            objs.append({"hardware": hw, "gpus": n, "time_s": time_s, "tokens_per_s": tokens_per_s,
                         "peak_memory_bytes": peak, "gpu_memory_bytes": system.gpu.mem_bytes,
                         "fits": fits, "bound": p.bound, "usd_per_gpu_h": price, "price_instance": instance,
                         "usd_per_1m_tokens": usd if fits else None, **energy, **extra})
    j = base
    what = f"{model.name} {j.phase}, batch {j.batch}" + (f", seq {j.seq}" if j.seq else "") + \
        (f", context {j.context}" if j.phase == "decode" else "") + chunk_note(j) + f", {j.dtype}{quant_note(j)}" + \
        (f", prefix hit {j.prefix_hit:g}" if j.prefix_hit else "") + \
        (f", speculative K = {j.spec_tokens} at acceptance {args.spec_acceptance:g} by "
         f"{args.draft_model or 'an EAGLE-style head'}" if j.spec_tokens else "") + ", tensor parallel over N GPUs"
    emit(fmt_of(args), json_obj={"workload": what, "results": objs}, rows=rows,
         header=["GPU", "N", "step time", "tokens/s", "memory GiB/GPU", "$/1M tok", "W/GPU", "J/tok", "bound", "status"],
         title=what, footer="\n$/1M tokens at the cheapest on-demand instance price per GPU-hour in hardware_specs/systems.\n"
                            "W/GPU: average board power per GPU" + (f" (capped at {base.power_cap_w:g} W)" if base.power_cap_w
                                                                    is not None else "")
                            + "; J/tok: energy per token of the GPUs and their share of the host (docs/energy.md).")
    return 0


def _with_defaults(args):
    for name, default in (("kv_dtype", ""), ("offload", None), ("host_memory", "pinned"), ("no_overlap", False),
                          ("recompute", "none"), ("lora_rank", 0), ("lora_targets", ALL_LINEAR), ("tp", 1),
                          ("pp", 1), ("dp", 1), ("micro_batch", 0), ("zero", 0)):
        if not hasattr(args, name):
            setattr(args, name, default)
    return args
