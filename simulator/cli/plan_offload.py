"""`roofplan plan offload`: GPU / CPU memory / NVMe placement for inference or fine-tuning."""
from __future__ import annotations

import math

from simulator.cli.plan import plan_subparsers
from simulator.core.errors import RoofplanError
from simulator.report.tables import add_format_arg, emit, fmt_of
from simulator.core.units import GiB, fmt_bytes, fmt_time
from simulator.cli.args import finite_float

RESOURCE_HEADERS = {"gpu": "GPU", "cpu": "CPU", "h2d": "PCIe h2d", "d2h": "PCIe d2h",
                    "disk_read": "NVMe read", "disk_write": "NVMe write", "cpu_mem": "CPU mem"}


def register(sub) -> None:
    p = plan_subparsers(sub).add_parser(
        "offload", help="place weights, KV cache, activations and optimizer states on GPU / CPU / NVMe")
    p.add_argument("--model", required=True, help="zoo name (roofplan models) or path/to/config.json")
    p.add_argument("--hardware", required=True, help="system with a CPU and host memory (roofplan hw list)")
    p.add_argument("--phase", required=True, choices=("decode", "prefill", "train"),
                   help="decode: a whole generation (prefill + gen-len steps); prefill: prompts only; train: fine-tuning")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--seq", type=int, default=1024, help="train: tokens per sequence")
    p.add_argument("--batch", type=int, default=None, help="sequences per block / step (default: search)")
    p.add_argument("--gpu-memory", type=finite_float, default=None, metavar="GiB", help="cap on GPU memory")
    p.add_argument("--host-memory", type=finite_float, default=None, metavar="GiB", help="cap on host memory")
    p.add_argument("--nvme", type=finite_float, default=None, metavar="GiB", help="cap on NVMe capacity")
    p.add_argument("--objective", default="throughput", choices=("throughput", "latency"))
    p.add_argument("--attention", default="auto", choices=("auto", "gpu", "cpu"),
                   help="where decode attention runs (auto: try both)")
    p.add_argument("--serial-optimizer", action="store_true",
                   help="train: CPU optimizer step after the backward (ZeRO-Infinity) instead of overlapped (Fuyou)")
    p.add_argument("--dtype", default=None, help="weights and compute dtype (default: bf16, fp16 on GPUs without bf16)")
    p.add_argument("--executor", default="default")
    p.add_argument("--kernel-profile", default=None)
    add_format_arg(p)
    p.set_defaults(func=cmd_plan_offload)


def _gib(v, flag):
    if v is None:
        return None
    if v <= 0:
        raise RoofplanError(f"{flag} must be > 0 GiB (got {v:g})")
    if not math.isfinite(v * GiB):
        raise RoofplanError(f"{flag} {v:g} GiB is more bytes than a float holds; give the capacity in GiB")
    return v * GiB


def cmd_plan_offload(args) -> int:
    from simulator.core.models import load_model
    from simulator.core.profiles import load_executor_profile, load_kernel_profile
    from simulator.core.specs import load_hardware

    from planners.offload import OffloadRequest, plan_offload

    model = load_model(args.model)
    system = load_hardware(args.hardware)
    dtype = args.dtype or ("bf16" if "bf16" in system.gpu.peak_flops_by_dtype else "fp16")
    req = OffloadRequest(phase=args.phase, prompt_len=args.prompt_len, gen_len=args.gen_len, seq=args.seq,
                         batch=args.batch, dtype=dtype, gpu_mem_bytes=_gib(args.gpu_memory, "--gpu-memory"),
                         host_mem_bytes=_gib(args.host_memory, "--host-memory"), nvme_bytes=_gib(args.nvme, "--nvme"),
                         objective=args.objective, attention=args.attention,
                         overlap_optimizer=not args.serial_optimizer)
    plan = plan_offload(model, system, req, load_executor_profile(args.executor),
                        load_kernel_profile(system.gpu.name, args.kernel_profile))
    d = plan.as_dict()
    rows = []
    for st in d["stages"]:
        row = [st["stage"], st["count"], fmt_time(st["layer_time_s"])]
        row += [f"{fmt_time(st['resources_s'][k])} {100 * st['utilisation'][k]:.0f}%" for k in RESOURCE_HEADERS]
        rows.append(row + [RESOURCE_HEADERS[st["binds"]]])
    header = ["layer step", "count", "time"] + list(RESOURCE_HEADERS.values()) + ["binds"]
    place = "; ".join(f"{k} " + "/".join(f"{100 * v[dev]:.0f}" for dev in ("gpu", "cpu", "nvme"))
                      for k, v in d["placement"].items())
    pr = d["predicted"]
    what = (f"prompt {req.prompt_len} + gen {req.gen_len}" if req.phase == "decode" else
            f"prompt {req.prompt_len}" if req.phase == "prefill" else f"seq {req.seq}")
    title = (f"{model.name} {req.phase} ({what}, {dtype}) on {system.name}: GPU batch {plan.gpu_batch_size} x "
             f"{plan.num_gpu_batches} = {plan.block_size} sequences, attention on {plan.attention}"
             + (f", optimizer step gpu/cpu {100 * d['optimizer_step']['gpu']:.0f}/{100 * d['optimizer_step']['cpu']:.0f}%"
                if d["optimizer_step"] else ""))
    mem = d["memory_bytes"]
    footer = (f"\nplacement % gpu/cpu/nvme: {place}\n"
              f"predicted: {pr['tokens_per_s']:,.2f} tokens/s, latency {fmt_time(pr['latency_s'])}"
              + (f" (prefill {fmt_time(pr['prefill_s'])}, decode {fmt_time(pr['decode_s'])})" if req.phase == "decode" else "")
              + f", {pr['model_tflops_per_s']:.1f} model TFLOP/s | binds: {RESOURCE_HEADERS[d['binds']]}\n"
              f"memory: GPU {fmt_bytes(mem['gpu'])}, host {fmt_bytes(mem['host'])} (pinned buffers "
              f"{fmt_bytes(d['pinned_buffer_bytes'])}), NVMe {fmt_bytes(mem['nvme'])}\n"
              f"solver: {d['solver']['name']} {d['solver']['status']}, gap {d['solver']['gap']:g}, "
              f"{d['solver']['lps_solved']} LPs in {fmt_time(d['solver']['time_s'])}")
    emit(fmt_of(args), json_obj=d, rows=rows, header=header, title=title, footer=footer)
    return 0
