"""Hardware specs: YAML files in hardware_specs/ -> validated, frozen dataclasses in SI units.

One file per item (gpus/, cpus/, links/, nvme/, systems/). YAML field names carry their unit
(`memory_GiB`, `memory_bandwidth_GBps`); the dataclasses hold SI base units (`mem_bytes`,
`hbm_bw_Bps`). Every file must carry a `source:`. Errors name the file, the field and the fix.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import yaml

from simulator.core.paths import data_dir
from simulator.core.errors import FieldError, RoofplanError, did_you_mean
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


@dataclass(frozen=True)
class NVMe:
    name: str
    capacity_bytes: float
    read_Bps: float
    write_Bps: float
    source: str = ""


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
# schema: (yaml field, dataclass field, converter, required)


def _num(scale: float, positive: bool = False) -> Callable[[Any], float]:
    """A finite number >= 0 (> 0 with `positive`: a bandwidth, a capacity, a peak), times `scale`."""
    def conv(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("must be a number")
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        if v < 0 or (positive and v == 0):
            raise ValueError("must be > 0" if positive else "must be >= 0")
        return float(v) * scale
    return conv


def _pos(scale: float) -> Callable[[Any], float]:
    return _num(scale, positive=True)


def _pos_int(v):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError("must be a positive integer")
    return v


def _nonneg_int(v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError("must be an integer >= 0")
    return v


def _str(v):
    if not isinstance(v, str) or not v:
        raise ValueError("must be a non-empty string")
    return v


def _opt_str(v):
    return None if v is None else _str(v)


def _opt_num(scale):
    conv = _num(scale)
    return lambda v: None if v is None else conv(v)


def _peaks(v):
    if not isinstance(v, dict) or not v:
        raise ValueError("must be a mapping dtype -> dense TFLOPS, e.g. {bf16: 989.4}")
    out = {}
    for k, x in v.items():
        try:
            out[str(k)] = _pos(TFLOPS)(x)
        except ValueError as e:
            raise ValueError(f"entry '{k}' {e}") from None
    return MappingProxyType(out)


# fields that document a spec without entering the model (kept, not read)
DOC_FIELDS = {"cpu": {"memory_channels"}, "nvme": {"interface"}}

_R, _O = True, False
SCHEMA: dict[str, list[tuple[str, str, Callable, bool]]] = {
    "link": [
        ("name", "name", _str, _R), ("type", "type", _str, _R),
        ("bandwidth_GBps", "bw_Bps", _pos(GB), _R), ("latency_us", "latency_s", _num(US), _R),
    ],
    "gpu": [
        ("name", "name", _str, _R), ("vendor", "vendor", _str, _R),
        ("full_name", "full_name", _str, _R), ("architecture", "architecture", _str, _R),
        ("memory_GiB", "mem_bytes", _pos(GiB), _R),
        ("memory_bandwidth_GBps", "hbm_bw_Bps", _pos(GB), _R),
        ("l2_cache_MiB", "l2_bytes", _num(MiB), _R), ("sm_count", "sm_count", _pos_int, _R),
        ("boost_clock_MHz", "clock_hz", _pos(1e6), _R), ("tdp_W", "tdp_w", _num(1.0), _R),
        ("peak_dense_TFLOPS", "peak_flops_by_dtype", _peaks, _R),
        ("host_link", "host_link", _str, _R), ("gpu_link", "gpu_link", _opt_str, _O),
    ],
    "cpu": [
        ("name", "name", _str, _R), ("vendor", "vendor", _str, _R), ("cores", "cores", _pos_int, _R),
        ("memory_bandwidth_GBps", "mem_bw_Bps", _pos(GB), _R),
        ("peak_fp32_TFLOPS", "peak_flops_fp32", _pos(TFLOPS), _R),
        ("attention_GBps", "attention_Bps", lambda v: None if v is None else _pos(GB)(v), _O),
    ],
    "nvme": [
        ("name", "name", _str, _R), ("capacity_GB", "capacity_bytes", _pos(GB), _R),
        ("read_GBps", "read_Bps", _pos(GB), _R), ("write_GBps", "write_Bps", _pos(GB), _R),
    ],
    "system": [
        ("name", "name", _str, _R), ("description", "description", _str, _R),
        ("gpu", "gpu", _str, _R), ("gpu_count", "gpu_count", _pos_int, _R),
        ("host_link", "host_link", _str, _R), ("gpu_link", "gpu_link", _opt_str, _O),
        ("cpu", "cpu", _opt_str, _O), ("cpu_count", "cpu_count", _nonneg_int, _O),
        ("host_memory_GiB", "host_mem_bytes", _opt_num(GiB), _O),
        ("network", "network", _opt_str, _O), ("network_count", "network_count", _nonneg_int, _O),
        ("nvme", "nvme", _opt_str, _O), ("nvme_count", "nvme_count", _nonneg_int, _O),
        ("price_usd_per_h", "price_usd_per_h", _opt_num(1.0), _O),
        ("provider", "provider", _opt_str, _O),
    ],
}


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """libyaml's C parser when PyYAML was built with it (10x faster, same documents), refusing a
    key given twice in one mapping (YAML would keep the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a syntax error, a duplicate key or a file that is not UTF-8 text becomes
    one line naming the file (and the line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise RoofplanError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise RoofplanError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RoofplanError(f"{path}:{where} malformed YAML ({problem}); fix the syntax") from None


def parse_spec(kind: str, data: Any, path: Path) -> dict[str, Any]:
    """Validate one spec mapping against SCHEMA[kind]; return dataclass kwargs (SI units)."""
    if not isinstance(data, dict):
        raise RoofplanError(f"{path}: expected a YAML mapping of fields, got {type(data).__name__}")
    if data.get("kind", kind) != kind:
        raise RoofplanError(f"{path}: field 'kind' is '{data.get('kind')}' but the file is in {SPEC_DIRS[kind]}/; set kind: {kind}")
    if not data.get("source"):
        raise RoofplanError(f"{path}: field 'source' is missing; every number needs its source (datasheet, paper or measurement)")
    out: dict[str, Any] = {"source": str(data["source"])}
    allowed = {k for k, *_ in SCHEMA[kind]} | DOC_FIELDS.get(kind, set()) | {"kind", "source", "sources"}
    for key in data:
        if key not in allowed:
            raise RoofplanError(f"{path}: unknown field '{key}'{did_you_mean(str(key), allowed)}; a typo would "
                                f"silently drop a number, so every field must be one of: {', '.join(sorted(allowed))}")
    for key, attr, conv, required in SCHEMA[kind]:
        if key not in data:
            if required:
                raise RoofplanError(f"{path}: field '{key}' is missing; add it (see another file in {SPEC_DIRS[kind]}/)")
            continue
        try:
            out[attr] = conv(data[key])
        except ValueError as e:
            raise RoofplanError(f"{path}: field '{key}' {e} (got {data[key]!r})") from None
    if out["name"] != Path(path).stem:
        raise RoofplanError(f"{path}: field 'name' is '{out['name']}' but the file is named {Path(path).stem}.yaml; make them equal")
    return out


def spec_path(kind: str, name: str) -> Path:
    folder = specs_root() / SPEC_DIRS[kind]
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise RoofplanError(
            f"unknown {kind} '{name}'{did_you_mean(name, list_names(kind))}; "
            f"see `roofplan hw list` or add {folder.relative_to(specs_root().parent) if folder.is_relative_to(specs_root().parent) else folder}/{name}.yaml"
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
        f"unknown hardware '{name}'{did_you_mean(name, known)}; see `roofplan hw list` "
        f"or add hardware_specs/gpus/{name}.yaml"
    )


def load_any(name: str):
    """Any spec by name (for `roofplan hw show`): systems first, then GPUs, CPUs, links, NVMe."""
    for kind, loader in (("system", load_system), ("gpu", load_gpu), ("cpu", load_cpu),
                         ("link", load_link), ("nvme", load_nvme)):
        if name in list_names(kind):
            return loader(name)
    known = [n for k in SPEC_DIRS for n in list_names(k)]
    raise RoofplanError(f"unknown hardware '{name}'{did_you_mean(name, known)}; see `roofplan hw list`")


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
