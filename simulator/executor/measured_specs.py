"""Hardware specs of this machine from its microbenchmarks (the rows microbench.py writes), in the
YAML formats of hardware_specs/ (gpus/, links/, cpus/, nvme/, systems/), for a device or host
part that has no datasheet here. No torch: these are pure functions of the rows.

* `device_spec`: a GPU-format spec of a CPU used as the device (`--device cpu`): peaks are 2x the
  best measured GEMM rate per dtype and bandwidth 2x the best measured device copy, so they bound
  what the kernel profile's efficiencies (<= 1) scale; memory is the host's RAM.
* `memcpy_link`: the "host link" of that device: host <-> device copies on cpu are memcpys, so its
  bandwidth is 2x the best measured one (the kernel profile's copy efficiencies scale it).
* `host_cpu_spec`: the host CPU as the offload planner reads it: memory bandwidth = the measured
  memcpy rate (read + write), fp32 peak = the best measured fp32 GEMM, attention = the measured
  decode-attention rate over the KV cache. These are achieved rates, not datasheet peaks: the
  planner uses them as rates.
* `nvme_spec`: the measured sequential read and write rates of the offload folder; capacity = its
  free space.
* `system_spec`: the node: the device, that CPU, its RAM (MemTotal), that NVMe, the device's host link.
"""
from __future__ import annotations

import os
import re

GB = 1e9
GiB = 2**30


def _best(rows, kind, key, **eq) -> float | None:
    vals = [r[key] for r in rows if r["kind"] == kind and all(r.get(k) == v for k, v in eq.items()) and key in r]
    return max(vals) if vals else None


def host_mem_GiB(rows: list[dict]) -> float | None:
    """MemTotal of the env record ('MemTotal:  131981020 kB'), GiB."""
    env = next((r for r in rows if r["kind"] == "env"), {})
    m = re.search(r"(\d+)\s*kB", str(env.get("meminfo", "")))
    return round(int(m.group(1)) * 1024 / GiB, 2) if m else None


def memcpy_link(rows: list[dict], name: str) -> dict:
    """links/<name>.yaml for a cpu device (see the module docstring)."""
    copies = [r for r in rows if r["kind"] == "copy" and "cpu" in r["src"] + r["dst"]]
    if not copies:
        raise ValueError("no host <-> device copy rows to derive the memcpy link from")
    bw = max(r["bytes"] / r["time_s"] for r in copies)
    return {"name": name, "kind": "link", "type": "pcie", "bandwidth_GBps": round(2 * bw / GB, 2), "latency_us": 0.0,
            "source": "roofplan microbench on this machine: host <-> device copies on a cpu device are memcpys; "
                      "bandwidth = 2 x the best measured one (the kernel profile's copy efficiencies scale it), "
                      "latency in the kernel profile (copy.latency_us)"}


def device_spec(rows: list[dict], name: str = "cpu-host", host_link: str = "pcie-gen4-x16") -> dict:
    """gpus/<name>.yaml for this machine's CPU as the device (see the module docstring)."""
    peaks = {}
    for dt in ("bf16", "fp32"):
        r = [x["tflops"] for x in rows if x["kind"] == "gemm" and x["dtype"] == dt]
        if r:
            peaks[dt] = round(2 * max(r), 4)
    if not peaks:
        raise ValueError("no GEMM rows to bound the device's peaks")
    peaks.setdefault("fp32", peaks.get("bf16"))
    peaks.setdefault("bf16", peaks["fp32"])
    peaks["fp16"] = peaks["bf16"]
    copies = [2 * x["bytes"] / x["time_s"] / GB for x in rows if x["kind"] == "copy" and x["src"] == x["dst"] == "gpu"]
    if not copies:
        raise ValueError("no device copy rows (copy gpu->gpu) to bound the device's bandwidth")
    env = next((r for r in rows if r["kind"] == "env"), {})
    read = {"memory_GiB": host_mem_GiB(rows), "cores": env.get("nproc"), "boost_clock_MHz": env.get("cpu_mhz"),
            "l2": env.get("l2_bytes")}
    missing = [k for k, v in read.items() if not v]
    if missing:
        raise ValueError(f"the env record has no {', '.join(missing)} of this machine (/proc/meminfo, /proc/cpuinfo, "
                         f"/sys/devices/system/cpu/cpu0/cache); re-run roofplan microbench on it")
    return {
        "name": name, "kind": "gpu", "vendor": "host", "full_name": f"host CPU ({read['cores']} cores) via torch",
        "architecture": "cpu", "memory_GiB": read["memory_GiB"], "memory_bandwidth_GBps": round(2 * max(copies), 1),
        "l2_cache_MiB": round(read["l2"] / 2**20, 3), "sm_count": int(read["cores"]),
        "boost_clock_MHz": round(float(read["boost_clock_MHz"]), 1), "tdp_W": 0, "peak_dense_TFLOPS": peaks,
        "host_link": host_link, "gpu_link": None,
        "source": "roofplan microbench on this machine: peaks = 2 x best measured GEMM rate, bandwidth = 2 x best "
                  "measured device copy, memory = the host's MemTotal, cores as SMs, the fastest core clock of "
                  "/proc/cpuinfo, CPU 0's L2 from sysfs",
        "sources": {"tdp_W": "unknown: the OS does not report a CPU's board power; 0 is the specs' 'not in the spec', "
                             "so predictions on this device report no power or energy"},
    }


def _vendor(cpu_model: str) -> str:
    m = cpu_model.lower()
    return next((v for v in ("intel", "amd", "arm", "apple") if v in m), "unknown")


def host_cpu_spec(rows: list[dict], name: str) -> dict:
    """cpus/<name>.yaml of the host CPU (see the module docstring)."""
    env = next((r for r in rows if r["kind"] == "env"), {})
    copy = _best(rows, "cpu", "GBps_rw", op="copy")
    sgemm = _best(rows, "cpu", "tflops", op="sgemm")
    if copy is None or sgemm is None:
        raise ValueError("no cpu copy and sgemm rows to describe the host CPU")
    spec = {"name": name, "kind": "cpu", "vendor": _vendor(str(env.get("cpu", ""))),
            "cores": int(env.get("nproc") or os.cpu_count() or 1),
            "memory_bandwidth_GBps": round(copy, 2), "peak_fp32_TFLOPS": round(sgemm, 4)}
    attn = _best(rows, "cpu", "GBps", op="attention")
    if attn:
        spec["attention_GBps"] = round(attn, 2)
    spec["source"] = (f"roofplan microbench on this machine ({env.get('cpu') or 'CPU model not reported'}, "
                      f"{env.get('threads', '?')} torch threads): achieved rates, not datasheet peaks -- memory bandwidth = "
                      "host memcpy (read + write), fp32 = best fp32 GEMM, attention = decode attention over the KV cache; "
                      "cores = logical CPUs")
    return spec


def nvme_spec(rows: list[dict], name: str, free_bytes: float) -> dict | None:
    """nvme/<name>.yaml of the offload folder's disk, None when it was not measured."""
    rd = [r for r in rows if r["kind"] == "nvme" and r["op"] == "read"]
    wr = [r for r in rows if r["kind"] == "nvme" and r["op"] == "write"]
    if not rd or not wr:
        return None
    r, w = rd[-1], wr[-1]
    return {"name": name, "kind": "nvme", "capacity_GB": round(max(free_bytes, GiB) / GB, 2),
            "read_GBps": round(r["bytes"] / r["time_s"] / GB, 3), "write_GBps": round(w["bytes"] / w["time_s"] / GB, 3),
            "interface": r.get("fs") or "unknown",
            "source": f"roofplan microbench on this machine: sequential {r['bytes'] / GiB:.2g} GiB write then read in "
                      f"{r.get('block_bytes', 0) // 2**20} MiB blocks of {r.get('dir', 'the offload folder')} "
                      f"({r.get('method', '')}); capacity = its free space"}


def system_spec(rows: list[dict], name: str, gpu: str, host_link: str, cpu: str | None, nvme: str | None) -> dict:
    """systems/<name>.yaml: one device of `gpu` with this host."""
    spec = {"name": name, "kind": "system", "description": f"this machine: 1 x {gpu}, its host CPU, RAM and offload disk "
                                                          "as measured by roofplan selfcheck",
            "gpu": gpu, "gpu_count": 1, "host_link": host_link, "gpu_link": None}
    if cpu:
        spec.update(cpu=cpu, cpu_count=1)
    mem = host_mem_GiB(rows)
    if mem:
        spec["host_memory_GiB"] = mem
    if nvme:
        spec.update(nvme=nvme, nvme_count=1)
    spec["source"] = "roofplan selfcheck: the device's spec, and the host CPU, RAM (MemTotal) and offload disk microbenchmarked here"
    return spec
