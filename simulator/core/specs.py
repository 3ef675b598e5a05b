"""Hardware specs: YAML files in hardware_specs/ -> validated, frozen dataclasses in SI units.

One file per item (gpus/, cpus/, links/, nvme/, systems/). YAML field names carry their unit
(`memory_GiB`, `memory_bandwidth_GBps`); the dataclasses hold SI base units (`mem_bytes`,
`hbm_bw_Bps`). Every file must carry a `source:`. Errors name the file, the field and the fix.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Mapping

from pydantic import Field, model_validator

from simulator.core.paths import data_dir
from simulator.core.errors import FieldError, RoofplanError, clip, did_you_mean
from simulator.core.schema import (Name, NonNegative, NonNegInt, PosInt, Positive, Strict, Text, check, is_file,
                                   read_yaml, to_si)
from simulator.core.units import GB, GiB, MiB, TFLOPS, US

SPEC_DIRS = {"gpu": "gpus", "cpu": "cpus", "link": "links", "nvme": "nvme", "system": "systems"}


def specs_root() -> Path:
    """The hardware_specs/ folder; ROOFPLAN_HW_DIR points elsewhere (tests, private specs)."""
    return data_dir("ROOFPLAN_HW_DIR", "hardware_specs")


# --------------------------------------------------------------------------------------------
# dataclasses (SI units)


@dataclass(frozen=True)
class Link:
    name: str
    type: str                 # pcie | nvlink | infinity-fabric | infiniband | ethernet
    bw_Bps: float             # theoretical, per direction
    latency_s: float
    source: str = ""


@dataclass(frozen=True)
class GPU:
    name: str
    vendor: str
    full_name: str
    architecture: str
    mem_bytes: float
    hbm_bw_Bps: float
    l2_bytes: float
    sm_count: int
    clock_hz: float
    tdp_w: float
    peak_flops_by_dtype: Mapping[str, float]   # dense, FLOP/s
    host_link: str
    gpu_link: str | None
    source: str = ""
    idle_w: float | None = None      # board power at idle (None: not in the spec; simulator.core.power estimates it)

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for `dtype` (tensor cores where the chip has them)."""
        try:
            return self.peak_flops_by_dtype[dtype]
        except KeyError:
            have = ", ".join(self.peak_flops_by_dtype)
            raise FieldError("dtype", dtype, f"{self.name} has no {dtype} support in its spec",
                             f"use one of {have}") from None


@dataclass(frozen=True)
class CPU:
    name: str
    vendor: str
    cores: int
    mem_bw_Bps: float
    peak_flops_fp32: float
    source: str = ""
    attention_Bps: float | None = None   # measured KV-cache rate of CPU attention (None: roofline)
    tdp_w: float | None = None           # per socket (None: not in the spec; host power leaves it out)
    idle_w: float | None = None          # per socket at OS idle


@dataclass(frozen=True)
class NVMe:
    name: str
    capacity_bytes: float
    read_Bps: float
    write_Bps: float
    source: str = ""
    idle_w: float | None = None     # per drive
    active_w: float | None = None   # per drive, reading or writing


@dataclass(frozen=True)
class System:
    """A node: GPUs x n + CPUs + host memory + links + NVMe (+ price when it is rented)."""
    name: str
    description: str
    gpu: GPU
    gpu_count: int
    host_link: Link
    gpu_link: Link | None = None   # intra-node GPU-GPU fabric; None = peers over host_link
    cpu: CPU | None = None
    cpu_count: int = 0
    host_mem_bytes: float | None = None   # None: not specified (a bare GPU); capacity unchecked
    network: Link | None = None
    network_count: int = 0
    nvme: NVMe | None = None
    nvme_count: int = 0
    price_usd_per_h: float | None = None
    provider: str | None = None
    source: str = ""
    max_power_w: float | None = None     # the vendor's maximum system power (documents the node; not read)
    other_power_w: float | None = None   # what the node draws beside GPUs, CPUs and NVMe (fans, NICs, switches, DRAM)

    @property
    def peer_link(self) -> Link:
        """Link GPUs of this node use to talk to each other."""
        return self.gpu_link or self.host_link

    @property
    def nvme_read_Bps(self) -> float:
        return self.nvme.read_Bps * self.nvme_count if self.nvme else 0.0

    @property
    def nvme_write_Bps(self) -> float:
        return self.nvme.write_Bps * self.nvme_count if self.nvme else 0.0

    @property
    def nvme_bytes(self) -> float:
        return self.nvme.capacity_bytes * self.nvme_count if self.nvme else 0.0

    @property
    def price_usd_per_gpu_h(self) -> float | None:
        return None if self.price_usd_per_h is None else self.price_usd_per_h / self.gpu_count


# --------------------------------------------------------------------------------------------
# file schemas: the YAML side, unit-suffixed names (simulator/core/schema.py says how they are checked)


class _SpecFile(Strict):
    kind: str | None = None
    source: Text                                       # every number needs its source
    sources: dict[str, Text] = {}                      # per-field sources, keyed by field name

    @model_validator(mode="after")
    def _sources_name_fields(self):
        fields = set(type(self).model_fields) - {"kind", "source", "sources"}
        for key in self.sources:
            if key not in fields:
                raise ValueError(f"'sources' names '{key}', which is not a field of this spec"
                                 f"{did_you_mean(key, fields)}")
        return self


LinkType = Literal["pcie", "nvlink", "infinity-fabric", "infiniband", "ethernet"]


class LinkFile(_SpecFile):
    name: Name
    type: LinkType
    bandwidth_GBps: Positive                           # theoretical, per direction
    latency_us: NonNegative


class GPUFile(_SpecFile):
    name: Name
    vendor: Name
    full_name: Name
    architecture: Name
    memory_GiB: Positive
    memory_bandwidth_GBps: Positive
    l2_cache_MiB: NonNegative
    sm_count: PosInt
    boost_clock_MHz: Positive
    tdp_W: NonNegative
    peak_dense_TFLOPS: dict[Name, Positive] = Field(min_length=1)   # dtype -> dense peak
    host_link: Name
    gpu_link: Name | None = None
    idle_W: NonNegative | None = None                  # board power at idle (simulator.core.power)

    @model_validator(mode="after")
    def _idle_below_tdp(self):
        if self.idle_W is not None and self.tdp_W and self.idle_W >= self.tdp_W:
            raise ValueError(f"idle_W {self.idle_W:g} must be below tdp_W {self.tdp_W:g}")
        return self


class CPUFile(_SpecFile):
    name: Name
    vendor: Name
    cores: PosInt
    memory_channels: PosInt | None = None              # documents the bandwidth figure; not read
    memory_bandwidth_GBps: Positive
    peak_fp32_TFLOPS: Positive
    attention_GBps: Positive | None = None             # measured CPU attention rate over the KV cache
    tdp_W: Positive | None = None                      # per socket (host power, simulator.core.power)
    idle_W: NonNegative | None = None                  # per socket at OS idle

    @model_validator(mode="after")
    def _idle_below_tdp(self):
        if self.idle_W is not None and self.tdp_W is not None and self.idle_W >= self.tdp_W:
            raise ValueError(f"idle_W {self.idle_W:g} must be below tdp_W {self.tdp_W:g}")
        return self


class NVMeFile(_SpecFile):
    name: Name
    capacity_GB: Positive
    read_GBps: Positive
    write_GBps: Positive
    interface: Name | None = None                      # documents the drive; not read
    idle_W: NonNegative | None = None                  # per drive (host power, simulator.core.power)
    active_W: NonNegative | None = None                # per drive, reading or writing


class SystemFile(_SpecFile):
    name: Name
    description: Text
    gpu: Name
    gpu_count: PosInt
    host_link: Name
    gpu_link: Name | None = None
    cpu: Name | None = None
    cpu_count: NonNegInt = 0
    host_memory_GiB: Positive | None = None
    network: Name | None = None
    network_count: NonNegInt = 0
    nvme: Name | None = None
    nvme_count: NonNegInt = 0
    price_usd_per_h: NonNegative | None = None
    provider: Name | None = None
    max_power_W: Positive | None = None                # vendor's maximum system power
    other_power_W: NonNegative | None = None           # fans, NICs, switches, DRAM (host power)


SCHEMAS: dict[str, type[_SpecFile]] = {"link": LinkFile, "gpu": GPUFile, "cpu": CPUFile, "nvme": NVMeFile,
                                       "system": SystemFile}


def _si(kind: str, f: _SpecFile, path) -> dict[str, Any]:
    """Dataclass kwargs in SI units from a checked file."""
    def si(field, scale):
        v = getattr(f, field)
        return None if v is None else to_si(v, scale, path, field)
    if kind == "link":
        return dict(name=f.name, type=f.type, bw_Bps=si("bandwidth_GBps", GB), latency_s=si("latency_us", US))
    if kind == "gpu":
        return dict(name=f.name, vendor=f.vendor, full_name=f.full_name, architecture=f.architecture,
                    mem_bytes=si("memory_GiB", GiB), hbm_bw_Bps=si("memory_bandwidth_GBps", GB),
                    l2_bytes=si("l2_cache_MiB", MiB), sm_count=f.sm_count, clock_hz=si("boost_clock_MHz", 1e6),
                    tdp_w=f.tdp_W, host_link=f.host_link, gpu_link=f.gpu_link, idle_w=f.idle_W,
                    peak_flops_by_dtype=MappingProxyType({k: to_si(v, TFLOPS, path, f"peak_dense_TFLOPS.{k}")
                                                          for k, v in f.peak_dense_TFLOPS.items()}))
    if kind == "cpu":
        return dict(name=f.name, vendor=f.vendor, cores=f.cores, mem_bw_Bps=si("memory_bandwidth_GBps", GB),
                    peak_flops_fp32=si("peak_fp32_TFLOPS", TFLOPS), attention_Bps=si("attention_GBps", GB),
                    tdp_w=f.tdp_W, idle_w=f.idle_W)
    if kind == "nvme":
        return dict(name=f.name, capacity_bytes=si("capacity_GB", GB), read_Bps=si("read_GBps", GB),
                    write_Bps=si("write_GBps", GB), idle_w=f.idle_W, active_w=f.active_W)
    return dict(name=f.name, description=f.description, gpu=f.gpu, gpu_count=f.gpu_count, host_link=f.host_link,
                gpu_link=f.gpu_link, cpu=f.cpu, cpu_count=f.cpu_count, host_mem_bytes=si("host_memory_GiB", GiB),
                network=f.network, network_count=f.network_count, nvme=f.nvme, nvme_count=f.nvme_count,
                price_usd_per_h=f.price_usd_per_h, provider=f.provider, max_power_w=f.max_power_W,
                other_power_w=f.other_power_W)


def parse_spec(kind: str, data: Any, path: Path) -> dict[str, Any]:
    """Validate one spec mapping against SCHEMAS[kind]; return dataclass kwargs (SI units)."""
    f = check(SCHEMAS[kind], data, path, fix=f"see another file in {SPEC_DIRS[kind]}/")
    if f.kind not in (None, kind):
        raise RoofplanError(f"{path}: field 'kind' is '{f.kind}' but the file is in {SPEC_DIRS[kind]}/; set kind: {kind}")
    if f.name != Path(path).stem:
        raise RoofplanError(f"{path}: field 'name' is '{f.name}' but the file is named {Path(path).stem}.yaml; make them equal")
    return {"source": f.source, **_si(kind, f, path)}


def spec_path(kind: str, name: str) -> Path:
    folder = specs_root() / SPEC_DIRS[kind]
    path = folder / f"{name}.yaml"
    if not is_file(path):
        raise RoofplanError(
            f"unknown {kind} '{clip(name)}'{did_you_mean(name, list_names(kind))}; "
            f"see `roofplan hw list` or add {folder.relative_to(specs_root().parent) if folder.is_relative_to(specs_root().parent) else folder}/{clip(name)}.yaml"
        )
    return path


def list_names(kind: str) -> list[str]:
    folder = specs_root() / SPEC_DIRS[kind]
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _load(kind: str, name: str) -> dict[str, Any]:
    path = spec_path(kind, name)
    return parse_spec(kind, read_yaml(path), path)


def load_link(name: str) -> Link:
    return Link(**_load("link", name))


def load_gpu(name: str) -> GPU:
    kw = _load("gpu", name)
    gpu = GPU(**kw)
    for ref in (gpu.host_link, gpu.gpu_link):
        if ref is not None:
            _ref(spec_path("gpu", name), "link", ref)
    return gpu


def load_cpu(name: str) -> CPU:
    return CPU(**_load("cpu", name))


def load_nvme(name: str) -> NVMe:
    return NVMe(**_load("nvme", name))


def _ref(path: Path, kind: str, name: str):
    """Resolve a reference from one spec to another, naming the referring file on failure."""
    loader = {"gpu": load_gpu, "cpu": load_cpu, "link": load_link, "nvme": load_nvme}[kind]
    try:
        return loader(name)
    except RoofplanError as e:
        raise RoofplanError(f"{path}: {e}") from None


def load_system(name: str) -> System:
    path = spec_path("system", name)
    kw = parse_spec("system", read_yaml(path), path)
    kw["gpu"] = _ref(path, "gpu", kw["gpu"])
    kw["host_link"] = _ref(path, "link", kw["host_link"])
    for key, kind in (("gpu_link", "link"), ("cpu", "cpu"), ("network", "link"), ("nvme", "nvme")):
        if kw.get(key) is not None:
            kw[key] = _ref(path, kind, kw[key])
    if kw.get("nvme") is not None and not kw.get("nvme_count"):
        kw["nvme_count"] = 1
    return System(**kw)


def system_from_gpu(gpu: GPU, count: int = 1) -> System:
    """A bare GPU as a node of `count` such GPUs, linked by the GPU's own peer link."""
    return System(
        name=gpu.name if count == 1 else f"{count}x{gpu.name}",
        description=f"{count} x {gpu.full_name}",
        gpu=gpu, gpu_count=count,
        host_link=load_link(gpu.host_link),
        gpu_link=load_link(gpu.gpu_link) if gpu.gpu_link else None,
        source=gpu.source,
    )


MAX_BARE_NODE_GPUS = 8   # an HGX/DGX baseboard: the largest node a bare GPU name can stand for


def load_hardware(name: str) -> System:
    """A system by name, or a GPU name (one GPU; `Nx<gpu>` for N of them)."""
    if name in list_names("system"):
        return load_system(name)
    count, _, gpu_name = name.partition("x") if name[:1].isdigit() and "x" in name else ("1", "", name)
    if gpu_name in list_names("gpu") and count.isdigit():
        if not 1 <= int(count) <= MAX_BARE_NODE_GPUS:
            raise FieldError("hardware", name, f"a node of bare GPUs holds 1 to {MAX_BARE_NODE_GPUS} of them (one "
                             f"baseboard on the GPU's own peer link)", "for more, use a system with a network "
                             "(roofplan hw list --kind system)")
        return system_from_gpu(load_gpu(gpu_name), int(count))
    known = list_names("system") + list_names("gpu")
    raise RoofplanError(
        f"unknown hardware '{clip(name)}'{did_you_mean(name, known)}; see `roofplan hw list` "
        f"or add hardware_specs/gpus/{clip(name)}.yaml"
    )


def load_any(name: str):
    """Any spec by name (for `roofplan hw show`): systems first, then GPUs, CPUs, links, NVMe."""
    for kind, loader in (("system", load_system), ("gpu", load_gpu), ("cpu", load_cpu),
                         ("link", load_link), ("nvme", load_nvme)):
        if name in list_names(kind):
            return loader(name)
    known = [n for k in SPEC_DIRS for n in list_names(k)]
    raise RoofplanError(f"unknown hardware '{clip(name)}'{did_you_mean(name, known)}; see `roofplan hw list`")


def validate_all() -> dict[str, list[str]]:
    """Load every spec file (raising on the first bad one); return names by kind."""
    loaders = {"link": load_link, "gpu": load_gpu, "cpu": load_cpu, "nvme": load_nvme, "system": load_system}
    out = {}
    for kind, loader in loaders.items():
        out[kind] = [loader(n).name for n in list_names(kind)]
    return out


def as_dict(spec) -> dict[str, Any]:
    """Flat dict of a spec for printing (nested specs by name)."""
    out = {}
    for f in dataclasses.fields(spec):
        v = getattr(spec, f.name)
        if dataclasses.is_dataclass(v):
            v = v.name
        elif isinstance(v, Mapping):
            v = dict(v)
        out[f.name] = v
    return out
