"""`roofplan predict`: one step of a workload on some hardware."""
from __future__ import annotations

from simulator.core.errors import RoofplanError, clip
from simulator.core import power
from simulator.core.models import load_model
from simulator.core.predict import Prediction, predict
from simulator.core.profiles import load_executor_profile, load_kernel_profile
from simulator.report.tables import add_format_arg, emit, fmt_of
from simulator.core.specs import load_hardware
from simulator.core.units import GiB, fmt_bytes, fmt_duration, fmt_energy, fmt_mass_g, fmt_rate, fmt_time
from simulator.core.workload import ALL_LINEAR, Job
from simulator.cli.args import finite_float, plot_path
from simulator.cli.speculative import add_spec_args, predict_spec, spec_fields, spec_job, spec_lines
from simulator.cli.chunked import add_chunk_args, chunk_fields, chunk_job, chunk_lines, chunk_note, decode_alone


def add_job_args(p) -> None:
    """Flags that describe a Job (shared by predict, run and validate)."""
    p.add_argument("--model", required=True, help="zoo name (roofplan models) or path/to/config.json")
    p.add_argument("--hardware", required=True, help="GPU or system name (roofplan hw list)")
    p.add_argument("--phase", required=True, choices=("prefill", "decode", "train"))
    p.add_argument("--batch", type=int, default=1, help="sequences per step (per data-parallel replica)")
    p.add_argument("--seq", type=int, default=0, help="prompt / training sequence length (tokens)")
    p.add_argument("--context", type=int, default=0, help="decode: tokens already in the KV cache")
    p.add_argument("--dtype", default="bf16", help="compute and weight dtype (bf16, fp16, fp8, fp32)")
    p.add_argument("--kv-dtype", default="", help="KV cache dtype (default: --dtype)")
    p.add_argument("--executor", default="default",
                   help="executor profile (default: kernel time only, as with CUDA graphs; hf-eager: HF transformers eager)")
    p.add_argument("--kernel-profile", default=None,
                   help="path to a kernel profile .yaml (default: the GPU's own, else the reference; "
                        "'datasheet': the uncalibrated roofline)")
    p.add_argument("--offload", default=None, metavar="weights=cpu", help="stream weights from host memory per layer")
    p.add_argument("--host-memory", default="pinned", choices=("pinned", "pageable"))
    p.add_argument("--no-overlap", action="store_true", help="do not overlap weight copies with compute")
    p.add_argument("--recompute", default="none", choices=("none", "selective", "full"))
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--lora-targets", default=ALL_LINEAR, metavar="all-linear|q,v,...",
                   help="linears LoRA adapts (PEFT's target_modules): all-linear, or a comma list of q, k, v, o, "
                        "gate, up, down (qkv, gate_up; or HF module names: q_proj, v_proj, ...)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--dp", type=int, default=1)
    p.add_argument("--micro-batch", type=int, default=0)
    p.add_argument("--zero", type=int, default=0)


def add_quant_args(p, kv: bool = False) -> None:
    """Quantization flags (Job.weight_dtype, Job.kv_dtype; simulator.core.quant), for predict and whatif."""
    p.add_argument("--weight-dtype", default="", choices=("bf16", "fp16", "fp8", "int8", "int4"),
                   help="layer weights: fp8 W8A8 (GPUs with fp8), int8/int4 weight-only with group-128 scales "
                        "(Marlin/AWQ/GPTQ kernels); default: --dtype")
    if kv:
        p.add_argument("--kv-dtype", default="", help="KV cache dtype, e.g. fp8 (default: --dtype)")


def quant_note(job: Job) -> str:
    """', weights int4, KV fp8' when a job quantizes its weights or KV cache, else ''."""
    parts = ([f"weights {job.weight_dtype}"] if job.weight_dtype and job.weight_dtype != job.dtype else []) + \
        ([f"KV {job.kv_dtype}"] if job.kv_dtype and job.kv_dtype != job.dtype else [])
    return "".join(", " + x for x in parts)


def add_parallel_train_args(p) -> None:
    """Parallelism flags beyond --tp/--pp/--dp (Job fields; one GPU is the plan tp = pp = dp = 1, so
    every training job goes through the same model)."""
    p.add_argument("--global-batch", type=int, default=0,
                   help="train: sequences per optimizer step over all replicas (default: --batch x --dp)")
    p.add_argument("--sp", action="store_true", help="train: Megatron sequence parallelism (with --tp)")
    p.add_argument("--ep", type=int, default=1,
                   help="expert-parallel degree (MoE): train: splits --dp; prefill/decode: inside the --tp group")
    p.add_argument("--cp", type=int, default=1, help="train: context-parallel degree (splits --seq)")
    p.add_argument("--vpp", type=int, default=1, help="train: virtual pipeline stages per GPU (interleaved 1F1B)")


def add_energy_args(p, tokens: bool = True) -> None:
    """Power and carbon flags (simulator.core.power), shared by predict and whatif."""
    p.add_argument("--power-cap", type=finite_float, default=None, metavar="W", dest="power_cap_w",
                   help="board power limit per GPU in watts: the clock drops until the step fits, compute-bound "
                        "time stretches (default: the GPU's TDP)")
    p.add_argument("--carbon-g-per-kwh", type=finite_float, default=power.DEFAULT_CARBON_G_PER_KWH, metavar="G",
                   help=f"grid carbon intensity (default {power.DEFAULT_CARBON_G_PER_KWH:g}: {power.CARBON_SOURCE})")
    if tokens:
        p.add_argument("--tokens", type=finite_float, default=None, metavar="N",
                       help="also report a whole run of N tokens (e.g. a training budget, 1e12): steps, time, energy, CO2")


def energy_lines(pred: Prediction, system) -> str:
    """The table footer's power, energy and carbon lines of one prediction."""
    e = pred.energy
    if e is None:
        return f"\npower: {system.gpu.name} has no TDP in its spec"
    per = f"{e.energy_j_per_token:.3g} J/token" + (f", {e.energy_j_per_sample:.3g} J/sample"
                                                    if e.energy_j_per_sample is not None else "")
    cap = f" (capped at {e.power_cap_w:g} W: clock x{e.clock_fraction:.2f})" if e.power_cap_w is not None else ""
    return (f"\npower {e.power_w:.0f} W per GPU{cap}, node {e.node_power_w:,.0f} W  |  energy {fmt_energy(e.energy_j)} "
            f"per step, {per}  |  {e.co2_g_per_1m_tokens:,.3g} g CO2e per 1M tokens at {e.carbon_g_per_kwh:g} g/kWh"
            + (f"\npower notes: {'; '.join(e.notes)}" if e.notes else ""))


def run_of(pred: Prediction, tokens: float | None) -> power.RunEnergy | None:
    """A run of `tokens` tokens of identical steps (None without --tokens)."""
    if tokens is None or pred.energy is None:
        return None
    return power.run_energy(pred.energy, pred.time_s, pred.tokens_per_s * pred.time_s, tokens)


def parse_offload(text: str | None) -> str:
    """`--offload weights=cpu` -> "cpu" (where the weights live); no flag -> "gpu"."""
    if not text:
        return "gpu"
    key, _, val = text.partition("=")
    if key != "weights" or val not in ("cpu", "gpu"):
        raise RoofplanError(f"--offload {clip(text)} is not understood; use --offload weights=cpu")
    return val


def job_from_args(args) -> Job:
    """The Job the flags describe. Training: --global-batch (all replicas) sets the per-replica
    --batch as global / dp."""
    offload = parse_offload(args.offload)
    batch = args.batch
    global_batch = getattr(args, "global_batch", 0)
    if global_batch:
        if args.phase != "train":
            raise RoofplanError("--global-batch applies to --phase train only")
        if global_batch % args.dp:
            raise RoofplanError(f"--global-batch {global_batch} is not a multiple of --dp {args.dp}")
        batch = global_batch // args.dp
    return Job(phase=args.phase, batch=batch, seq=args.seq, context=args.context, dtype=args.dtype,
               kv_dtype=args.kv_dtype, recompute=args.recompute, lora_rank=args.lora_rank,
               lora_targets=args.lora_targets, tp=args.tp,
               pp=args.pp, dp=args.dp, micro_batch=args.micro_batch, zero=args.zero, ep=getattr(args, "ep", 1),
               cp=getattr(args, "cp", 1), vpp=getattr(args, "vpp", 1), sp=getattr(args, "sp", False),
               offload_weights=offload, host_memory=args.host_memory, overlap=not args.no_overlap,
               power_cap_w=getattr(args, "power_cap_w", None),
               weight_dtype=getattr(args, "weight_dtype", ""))


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict time and memory of one step")
    add_job_args(p)
    add_parallel_train_args(p)
    add_quant_args(p)   # --weight-dtype
    p.add_argument("--plot", type=plot_path, default=None, metavar="FILE.png", help="write a roofline + memory figure")
    add_energy_args(p)
    add_spec_args(p)   # --spec-tokens, --spec-acceptance, --draft-model, --prefix-hit
    add_chunk_args(p)  # --chunk-tokens, --chunk-context
    add_format_arg(p)
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    model = load_model(args.model)
    system = load_hardware(args.hardware)
    ex = load_executor_profile(args.executor)
    kp = load_kernel_profile(system.gpu.name, args.kernel_profile)
    power.check_carbon(args.carbon_g_per_kwh)
    job = chunk_job(args, spec_job(args, job_from_args(args)))   # speculative decoding, prefix caching, chunks
    spec = predict_spec(args, model, system, job, ex, kp, args.carbon_g_per_kwh)
    pred = spec.verify if spec else predict(model, system, job, ex, kp, carbon_g_per_kwh=args.carbon_g_per_kwh)
    run = run_of(pred, args.tokens)
    by = pred.by_class()
    rows = [[cls, fmt_time(r.time_s), f"{100 * r.share:.1f}%", f"{r.flops / 1e12:.3g}", fmt_bytes(r.bytes)]
            for cls, r in by.iterrows()]
    j = pred.job
    what = f"{model.name} {j.phase} batch {j.batch}" + (f" seq {j.seq}" if j.seq else "") + \
        (f" context {j.context}" if j.phase == "decode" else "")
    par = f" tp{j.tp} pp{j.pp} dp{j.dp}" + (f" cp{j.cp}" if j.cp > 1 else "") + (f" ep{j.ep}" if j.ep > 1 else "") \
        if j.n_gpus > 1 or j.ep > 1 else ""
    if j.phase == "train":
        par += (f" mb{j.micro_batch} x {j.n_micro}" + (f" v{j.vpp}" if j.vpp > 1 else "") + f" zero{j.zero}"
                + f" recompute {j.recompute}" + (" sp" if j.sp else "") + (f" lora r{j.lora_rank}" if j.lora_rank else "")
                + (f" on {j.lora_targets}" if j.lora_rank and j.lora_targets != ALL_LINEAR else ""))
    mem = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in pred.memory.as_dict().items() if v)
    what += chunk_note(j) + quant_note(j)   # a prefill chunk; quantized weights / KV cache
    title = f"{what} on {system.name}{par} ({ex.name} executor, kernel profile {kp.fitted_on})"
    footer = (f"\nstep time {fmt_time(pred.time_s)}  |  {fmt_rate(pred.tokens_per_s)} tokens/s  |  bound: {pred.bound}\n"
              f"peak memory {pred.peak_memory_bytes / GiB:.2f} GiB per GPU of {system.gpu.mem_bytes / GiB:.0f} GiB ({mem})")
    if j.phase == "train":
        terms = ", ".join(f"{k} {fmt_time(v)}" for k, v in pred.time_terms.items() if v > 0)
        footer += (f"\nstep terms: {terms}"
                   f"\nmodel FLOP/s per GPU {pred.model_flops_per_gpu_s / 1e12:.0f} T, hardware FLOP/s per GPU "
                   f"{pred.hardware_flops_per_gpu_s / 1e12:.0f} T, MFU {100 * pred.mfu:.1f}%")
    if any(s["lane"] == "host" for s in pred.critical_path):
        footer += "\ncritical path: " + ", ".join(
            f"{s['segment']}{' x' + str(s['count']) if s['count'] > 1 else ''} {s['lane']}" for s in pred.critical_path)
    if pred.expected_error:
        e = pred.expected_error
        footer += (f"\nexpected error: {100 * e['time_mape']:.1f}% mean, {100 * e['time_worst']:.0f}% worst on "
                   f"{e['cases']} measured steps (kernels {e['kernels']}, framework {e['framework']}: {e['source']})")
    if pred.transfer_time_s:
        footer += f"\nhost->GPU weight transfer {fmt_time(pred.transfer_time_s)} per step ({j.host_memory}, overlap {'on' if j.overlap else 'off'})"
    footer += energy_lines(pred, system)
    obj = pred.as_dict()
    footer += spec_lines(spec, model, j, pred)   # the speculative step, or the prefix cache
    obj.update(spec_fields(spec, model, j))
    alone = decode_alone(model, system, job, ex, kp)   # a chunked step: the decode without its chunk
    footer += chunk_lines(j, pred, alone)
    obj.update(chunk_fields(j, pred, alone))
    if run is not None:
        footer += (f"\nrun of {run.tokens:.3g} tokens: {run.steps:,.0f} steps, {fmt_duration(run.time_s)}, "
                   f"{fmt_energy(run.energy_j)}, {fmt_mass_g(run.co2_g)} CO2e")
        obj["run"] = run.as_dict()
    if getattr(args, "plot", None):
        from simulator.report.plots import prediction_figure
        prediction_figure(pred, system, args.plot)
    emit(fmt_of(args), json_obj=obj, rows=rows, header=["op class", "time", "share", "TFLOP", "bytes"],
         title=title, footer=footer, csv_record=True)
    return 0
