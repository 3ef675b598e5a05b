"""`roofplan hw list|show|check` and `roofplan models`."""
from __future__ import annotations

from simulator.core import specs
from simulator.core.models import list_models, load_model
from simulator.report.tables import add_format_arg, emit, fmt_of
from simulator.core.units import GB, GiB, TFLOPS


def register(sub) -> None:
    hw = sub.add_parser("hw", help="hardware specs: list, show, check")
    hs = hw.add_subparsers(dest="hw_command", metavar="ACTION")
    p = hs.add_parser("list", help="every GPU, CPU, link, NVMe drive and system")
    p.add_argument("--kind", choices=list(specs.SPEC_DIRS), default=None)
    add_format_arg(p)
    p.set_defaults(func=cmd_hw_list)
    p = hs.add_parser("show", help="one spec, all fields (SI units)")
    p.add_argument("name")
    add_format_arg(p)
    p.set_defaults(func=cmd_hw_show)
    p = hs.add_parser("check", help="validate every file in hardware_specs/")
    p.set_defaults(func=cmd_hw_check)
    hw.set_defaults(func=lambda a: hw.print_help() or 2)

    m = sub.add_parser("models", help="the model zoo: parameters, layers, attention, experts")
    add_format_arg(m)
    m.set_defaults(func=cmd_models)


def cmd_hw_list(args) -> int:
    kinds = [args.kind] if args.kind else list(specs.SPEC_DIRS)
    rows = []
    for kind in kinds:
        for name in specs.list_names(kind):
            s = specs.load_any(name) if kind != "system" else specs.load_system(name)
            if kind == "gpu":
                s = specs.load_gpu(name)
                dt = "bf16" if "bf16" in s.peak_flops_by_dtype else "fp16"
                info = f"{s.mem_bytes / GiB:.0f} GiB, {s.hbm_bw_Bps / GB:.0f} GB/s, {dt} {s.peak_flops_by_dtype.get(dt, 0) / TFLOPS:.0f} TFLOPS dense"
            elif kind == "system":
                price = f", ${s.price_usd_per_h:.2f}/h" if s.price_usd_per_h else ""
                info = f"{s.gpu_count} x {s.gpu.name}{price}"
            elif kind == "link":
                s = specs.load_link(name)
                info = f"{s.type}, {s.bw_Bps / GB:.1f} GB/s per direction"
            elif kind == "cpu":
                s = specs.load_cpu(name)
                info = f"{s.cores} cores, {s.mem_bw_Bps / GB:.0f} GB/s"
            else:
                s = specs.load_nvme(name)
                info = f"{s.capacity_bytes / GB:.0f} GB, read {s.read_Bps / GB:.2f} GB/s, write {s.write_Bps / GB:.2f} GB/s"
            rows.append([kind, name, info])
    emit(fmt_of(args), json_obj=[{"kind": k, "name": n, "summary": i} for k, n, i in rows], rows=rows,
         header=["kind", "name", "summary"])
    return 0


def cmd_hw_show(args) -> int:
    s = specs.load_any(args.name)
    d = specs.as_dict(s)
    rows = [[k, v] for k, v in d.items() if k != "source"] + [["source", d.get("source", "")]]
    emit(fmt_of(args), json_obj=d, rows=rows, header=["field", "value"])
    return 0


def cmd_hw_check(args) -> int:
    """Every spec, kernel profile and executor profile parses and passes its checks."""
    from simulator.core.profiles import list_profiles, load_executor_profile, load_kernel_profile
    names = specs.validate_all()
    kernels = [load_kernel_profile(n, str(specs.specs_root() / "profiles" / "kernels" / f"{n}.yaml"))
               for n in list_profiles("kernels")]
    executors = [load_executor_profile(n) for n in list_profiles("executors")]
    print(", ".join(f"{len(v)} {k}s" for k, v in names.items())
          + f", {len(kernels)} kernel profiles, {len(executors)} executor profiles: all valid")
    return 0


def cmd_models(args) -> int:
    rows = []
    for name in list_models():
        m = load_model(name)
        rows.append([name, m.family, f"{m.params_total() / 1e9:.2f}", f"{m.params_active() / 1e9:.2f}",
                     m.n_layers, m.hidden, m.attention_kind, f"{m.n_experts}x top{m.top_k}" if m.is_moe else "-"])
    emit(fmt_of(args), json_obj=[dict(zip(["name", "family", "params_B", "active_B", "layers", "hidden", "attention", "experts"], r)) for r in rows],
         rows=rows, header=["model", "family", "params (B)", "active (B)", "layers", "hidden", "attention", "experts"])
    return 0
