"""Read PyTorch profiler (Kineto) Chrome traces: GPU kernels, the CPU ops that launched them,
op classes, FLOPs/bytes from recorded shapes, and forward-pass segments.

Format (torch.profiler `export_chrome_trace`, optionally gzip): `traceEvents` holds complete
events (ph 'X'). Category spellings differ by torch version: kernels are 'kernel' (>= 1.13) or
'Kernel'; CPU ops 'cpu_op' or 'Operator'; runtime calls 'cuda_runtime' or 'Runtime'. A kernel
links to the innermost CPU op that launched it through `args['External id']`; traces without it
link through the 'ac2g' flow events (id = correlation: the 's' end sits on the CPU thread at the
launch, the 'f' end on the kernel). `deviceProperties` names the GPU.

Op classes are those of simulator.core.ops.OP_CLASSES, so a trace and a prediction compare class by
class: kernel names decide GEMM, attention, optimizer, loss, communication and embedding kernels;
the launching aten op decides the rest (eager RMSNorm's pow/mean/rsqrt are `norm`, its muls and
casts `elementwise`, as ops.py counts them). `copy` is explicit memcpy/memset traffic.
"""
from __future__ import annotations

import gzip
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.core.errors import FieldError, RoofplanError
from simulator.core.schema import short

KERNEL_CATS = ("kernel", "Kernel")
CPU_OP_CATS = ("cpu_op", "Operator")
RUNTIME_CATS = ("cuda_runtime", "Runtime", "cuda_driver", "Driver")
COPY_CATS = ("gpu_memcpy", "gpu_memset", "Memcpy", "Memset")
STEP_RE = re.compile(r"^ProfilerStep#(\d+)$")

_TYPE_BYTES = {"c10::BFloat16": 2, "c10::Half": 2, "float": 4, "double": 8, "c10::Float8_e4m3fn": 1,
               "c10::Float8_e5m2": 1, "long int": 8, "int": 4, "signed char": 1, "unsigned char": 1, "bool": 1}

_DTYPE_NAMES = {"c10::BFloat16": "bf16", "c10::Half": "fp16", "float": "fp32", "c10::Float8_e4m3fn": "fp8"}

# (pattern in the lower-cased kernel name, class); first match wins
_KERNEL_RULES = (
    ("nccl", "communication"),
    ("multi_tensor_apply", "optimizer"), ("adam", "optimizer"),
    ("sdpa", "attention"), ("flash", "attention"), ("fmha", "attention"), ("attention", "attention"),
    ("softmax", "loss"), ("nll_loss", "loss"), ("cross_entropy", "loss"),
    ("splitkreduce", "gemm"), ("gemm", "gemm"), ("nvjet", "gemm"), ("cutlass", "gemm"),
    ("xmma", "gemm"), ("cublas", "gemm"), ("ampere_", "gemm"), ("sm90_", "gemm"),
    ("embedding", "embedding"), ("indexselect", "embedding"), ("gather_kernel", "embedding"),
    ("layer_norm", "norm"), ("rms_norm", "norm"), ("rmsnorm", "norm"), ("layernorm", "norm"),
)
# launching aten op -> class, for kernels whose name says nothing specific
_OP_RULES = {
    "aten::pow": "norm", "aten::mean": "norm", "aten::rsqrt": "norm",
    "aten::native_layer_norm": "norm", "aten::native_layer_norm_backward": "norm",
    "aten::_fused_rms_norm": "norm", "aten::rms_norm": "norm",
    "aten::embedding": "embedding", "aten::embedding_dense_backward": "embedding",
    "aten::index_select": "embedding",
    "aten::nll_loss_forward": "loss", "aten::nll_loss_backward": "loss",
    "aten::_log_softmax": "loss", "aten::_log_softmax_backward_data": "loss",
    "aten::_fused_adamw_": "optimizer", "aten::_fused_adam_": "optimizer",
    "aten::_foreach_add_": "optimizer", "aten::_foreach_mul_": "optimizer",
    "aten::mm": "gemm", "aten::addmm": "gemm", "aten::bmm": "gemm",
}


def classify_kernel(kernel_name: str, op_name: str = "") -> str:
    """Op class of one kernel from its name, else from the aten op that launched it."""
    k = kernel_name.lower()
    for pat, cls in _KERNEL_RULES:
        if pat in k:
            return cls
    if op_name in _OP_RULES:
        return _OP_RULES[op_name]
    if "memcpy" in k or "memset" in k:
        return "copy"
    return "elementwise"


def _numel(dims) -> int:
    return int(np.prod(dims)) if dims else 1


def op_flops_bytes(name: str, args: dict) -> tuple[float, float]:
    """FLOPs and ideal HBM bytes of a GEMM or SDPA CPU op from its recorded `Input Dims`
    (record_shapes=True): mm/addmm/bmm/matmul/linear 2 M N K; SDPA 4 B H S L D (x 1/2 causal,
    FlashAttention's count). Other ops: (0, 0)."""
    dims = args.get("Input Dims") or []
    types = args.get("Input type") or []
    el = _TYPE_BYTES.get(types[0], 2) if types else 2
    try:
        if name in ("aten::mm", "aten::bmm", "aten::matmul", "aten::addmm", "aten::linear"):
            if name == "aten::addmm":
                dims = dims[1:]
            a, b = dims[0], dims[1]
            if not a or not b:
                return 0.0, 0.0
            k = a[-1]
            if name == "aten::linear":          # weight [N, K]
                n = b[0]
            else:
                n = b[-1]
            m_rows = _numel(a[:-1])
            flops = 2.0 * m_rows * k * n
            byts = el * (_numel(a) + _numel(b) + m_rows * n)
            return flops, byts
        if name in ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention",
                    "aten::_scaled_dot_product_cudnn_attention", "aten::_scaled_dot_product_efficient_attention"):
            q, k = dims[0], dims[1]
            B, H, S, D = q[0], q[1], q[2], q[3]
            L = k[2]
            conc = [str(c) for c in args.get("Concrete Inputs", [])]
            causal = "True" in conc[4:7] if name == "aten::scaled_dot_product_attention" else "True" in conc[4:8]
            flops = 4.0 * B * H * S * L * D * (0.5 if causal and S > 1 else 1.0)
            byts = el * (2 * _numel(q) + _numel(dims[1]) + _numel(dims[2]))
            return flops, byts
    except (IndexError, TypeError):
        return 0.0, 0.0
    return 0.0, 0.0


@dataclass(frozen=True)
class Trace:
    """One profiler trace. `kernels`: name, cls, op (launching aten op), flop_op (index of the
    CPU op whose FLOPs the kernel computes, -1: none), ts_s, dur_s, stream, ext_id, segment.
    `cpu_ops`: name, ts_s, dur_s, tid, ext_id, flops, bytes, dtype (of the first input), depth,
    parent (row of the enclosing CPU op or annotation, -1: none), owner. `cpu_only`: no device
    kernels in the trace; the leaf aten ops stand in for them. `segments`: name, phase, t0_s,
    t1_s (CPU-side bounds of each step / forward pass). `runtime`: CUDA runtime and driver calls
    (name, ts_s, dur_s, tid): launches, synchronisations."""
    path: str
    device_name: str
    kernels: pd.DataFrame
    cpu_ops: pd.DataFrame
    segments: pd.DataFrame
    cpu_only: bool = False
    runtime: pd.DataFrame | None = None

    @property
    def kernel_time_s(self) -> float:
        return float(self.kernels["dur_s"].sum())

    @property
    def gpu_span_s(self) -> float:
        k = self.kernels
        return float((k["ts_s"] + k["dur_s"]).max() - k["ts_s"].min()) if len(k) else 0.0

    def by_class(self, segment: str | None = None) -> pd.DataFrame:
        """Kernel time and count per op class (optionally of one segment), largest first."""
        k = self.kernels if segment is None else self.kernels[self.kernels["segment"] == segment]
        g = k.groupby("cls").agg(time_s=("dur_s", "sum"), kernels=("dur_s", "size"))
        g["share"] = g["time_s"] / max(float(g["time_s"].sum()), 1e-30)
        return g.sort_values("time_s", ascending=False)

    def kernel_gaps(self, segment: str) -> np.ndarray:
        """The GPU's idle time before each kernel of `segment` but the first: its start less the
        latest end of the kernels before it (negative where kernels overlap)."""
        k = self.kernels[self.kernels["segment"] == segment].sort_values("ts_s")
        start, end = k["ts_s"].to_numpy(), (k["ts_s"] + k["dur_s"]).to_numpy()
        return start[1:] - np.maximum.accumulate(end)[:-1] if len(k) > 1 else np.array([])

    def gpu_busy(self, segment: str) -> float:
        """Kernel time over the GPU span (first kernel start to last kernel end) of `segment`;
        0 without kernels."""
        k = self.kernels[self.kernels["segment"] == segment]
        span = float((k["ts_s"] + k["dur_s"]).max() - k["ts_s"].min()) if len(k) else 0.0
        return float(k["dur_s"].sum()) / span if span > 0 else 0.0

    def segment_stats(self) -> pd.DataFrame:
        """Per segment: kernels, kernel time, GPU span (first kernel start to last kernel end),
        CPU span, FLOPs of GEMM/SDPA ops."""
        rows = []
        for s in self.segments.itertuples():
            k = self.kernels[self.kernels["segment"] == s.name]
            c = self.cpu_ops[(self.cpu_ops["ts_s"] >= s.t0_s) & (self.cpu_ops["ts_s"] < s.t1_s)]
            rows.append({
                "segment": s.name, "phase": s.phase, "kernels": len(k),
                "kernel_time_s": float(k["dur_s"].sum()),
                "gpu_span_s": float((k["ts_s"] + k["dur_s"]).max() - k["ts_s"].min()) if len(k) else 0.0,
                "cpu_span_s": float(s.t1_s - s.t0_s),
                "flops": float(c["flops"].sum()),
            })
        return pd.DataFrame(rows)


def _read_json(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RoofplanError(f"trace {path}: cannot read ({e.strerror}); pass a torch.profiler Chrome trace (.json or .json.gz)") from None
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        d = json.loads(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise RoofplanError(f"trace {path}: truncated or corrupt gzip ({e}); re-export it with prof.export_chrome_trace") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RoofplanError(f"trace {path}: not valid JSON ({getattr(e, 'msg', e)}); the file may be truncated — re-export it with prof.export_chrome_trace") from None
    if isinstance(d, list):
        d = {"traceEvents": d}
    if not isinstance(d, dict) or not isinstance(d.get("traceEvents"), list):
        raise RoofplanError(f"trace {path}: no 'traceEvents' list; expected a torch.profiler Chrome trace")
    return d


def device_name(d: dict) -> str:
    props = d.get("deviceProperties")
    if isinstance(props, list) and props and isinstance(props[0], dict):
        return str(props[0].get("name", ""))
    return ""


def _innermost_op(cpu: pd.DataFrame, tid, ts: float) -> int | None:
    """Index of the deepest CPU op on thread `tid` that encloses time `ts` (flow-event linking)."""
    c = cpu[(cpu["tid"] == tid) & (cpu["ts_s"] <= ts) & (cpu["ts_s"] + cpu["dur_s"] >= ts)]
    if not len(c):
        return None
    return int(c["depth"].idxmax())


def _nesting(ts: np.ndarray, end: np.ndarray, tids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nesting depth and enclosing op (-1: none) of each CPU op on its thread (ops sorted by
    start, ties: longer first)."""
    depth = np.zeros(len(ts), int)
    parent = np.full(len(ts), -1, int)
    stacks: dict = {}
    for i in range(len(ts)):
        st = stacks.setdefault(tids[i], [])
        while st and end[st[-1]] <= ts[i]:
            st.pop()
        depth[i] = len(st)
        parent[i] = st[-1] if st else -1
        st.append(i)
    return depth, parent


# categories of complete events this reader uses; their times must be sound (others are skipped)
READ_CATS = frozenset(CPU_OP_CATS + RUNTIME_CATS + KERNEL_CATS + COPY_CATS + ("user_annotation",))


def _number(v) -> float | None:
    """A JSON number as float; None for anything else (a string, a list, true/false)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _event_times(e: dict, i: int, p: Path) -> tuple[float, float]:
    """(ts, dur) in seconds of complete event #i of traceEvents. A missing, non-numeric,
    non-finite or negative duration is refused, naming the event: the shared torch 2.11 traces
    have none (every 'X' event carries dur >= 0; ops still running when the profiler stops are
    closed at the trace's end), so such an event is a truncated, hand-edited or broken export,
    and counting it would make the kernel time nan or negative (a '+nan%' or '-301%' error)."""
    name = short(e.get("name", "?"))
    where = f"trace {p}: event {i} {name} ({e.get('cat')})"
    fix = "re-export the trace with prof.export_chrome_trace after the profiled steps have finished (torch.cuda.synchronize())"
    ts = _number(e.get("ts"))
    if ts is None or not math.isfinite(ts):
        raise RoofplanError(f"{where} has no numeric 'ts' (got {short(e.get('ts'))}); {fix}")
    if "dur" not in e:
        raise RoofplanError(f"{where} has no 'dur': its time is unknown; {fix}")
    dur = _number(e["dur"])
    if dur is None or not math.isfinite(dur):
        raise RoofplanError(f"{where} has a 'dur' that is not a finite number (got {short(e['dur'])}); {fix}")
    if dur < 0:
        raise RoofplanError(f"{where} has a negative duration (dur {dur:g} us); {fix}")
    return ts * 1e-6, dur * 1e-6


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _dims(v) -> list | None:
    """Recorded `Input Dims` as written by record_shapes ([] for a scalar, [a, b, ..] for a tensor,
    [[..], [..]] for a tensor list), else None: shapes unknown, as without record_shapes."""
    if not isinstance(v, list):
        return None
    for entry in v:
        if not isinstance(entry, list) or not all(_is_int(x) or (isinstance(x, list) and all(map(_is_int, x)))
                                                  for x in entry):
            return None
    return v


def shape(dims, k: int) -> list[int]:
    """The shape of input k of an op's recorded `dims` ([] when absent or not one tensor)."""
    if not dims or k >= len(dims) or not all(_is_int(x) for x in dims[k]):
        return []
    return dims[k]


def _ident(v):
    """An External id, correlation or stream: an integer, else None (links nothing)."""
    return v if _is_int(v) else None


def load_trace(path: str | Path) -> Trace:
    """Parse a Kineto Chrome trace into kernels, CPU ops and segments. One-line RoofplanError
    for unreadable, truncated, empty or kernel-less traces, and for an event this reader uses
    whose time is missing, not a finite number or negative (see `_event_times`)."""
    p = Path(path)
    d = _read_json(p)
    cpu_rows, k_rows, rt_rows, flows = [], [], [], {}
    n_events = 0
    for i, e in enumerate(d["traceEvents"]):
        if not isinstance(e, dict):
            continue
        n_events += 1
        cat, ph = e.get("cat"), e.get("ph")
        if ph == "s" and cat == "ac2g":
            t = _number(e.get("ts"))
            if t is not None and math.isfinite(t) and _ident(e.get("id")) is not None:
                flows[e["id"]] = (e.get("tid"), t * 1e-6)
        if ph != "X" or not isinstance(cat, str) or cat not in READ_CATS:
            continue
        ts, dur = _event_times(e, i, p)
        args = e.get("args") if isinstance(e.get("args"), dict) else {}
        name = str(e.get("name", ""))
        tid = e.get("tid") if isinstance(e.get("tid"), (int, str)) else None
        if cat in CPU_OP_CATS or (cat == "user_annotation"):
            dims = _dims(args.get("Input Dims"))
            types = [t if isinstance(t, str) else "" for t in args.get("Input type") or []] \
                if isinstance(args.get("Input type"), list) else []
            conc = args.get("Concrete Inputs") if isinstance(args.get("Concrete Inputs"), list) else []
            first_type = types[0] if types else ""
            f, b = op_flops_bytes(name, {"Input Dims": dims, "Input type": types, "Concrete Inputs": conc}) if dims else (0.0, 0.0)
            cpu_rows.append({"name": name, "ts_s": ts, "dur_s": dur, "tid": tid,
                             "ext_id": _ident(args.get("External id")), "seq": _ident(args.get("Sequence number")),
                             "flops": f, "bytes": b,
                             "user": cat == "user_annotation", "dims": dims,
                             "dtype": _DTYPE_NAMES.get(first_type, "")})
        elif cat in RUNTIME_CATS:
            rt_rows.append((name, ts, dur, tid))
        elif cat in KERNEL_CATS or cat in COPY_CATS:
            k_rows.append({"name": name, "ts_s": ts, "dur_s": dur,
                           "stream": _ident(args.get("stream")), "ext_id": _ident(args.get("External id")),
                           "corr": _ident(args.get("correlation")), "memcpy": cat in COPY_CATS})
    if not k_rows and not cpu_rows:
        what = "no events" if not n_events else f"{n_events} events but no GPU kernels or CPU ops"
        raise RoofplanError(f"trace {p}: {what}; record with torch.profiler activities=[CPU, CUDA] around at least one step")
    cpu = pd.DataFrame(cpu_rows, columns=["name", "ts_s", "dur_s", "tid", "ext_id", "seq", "flops", "bytes", "user", "dims",
                                          "dtype"])
    cpu = cpu.sort_values(["ts_s", "dur_s"], ascending=[True, False], kind="stable").reset_index(drop=True)
    depth, parent = _nesting(cpu["ts_s"].to_numpy(), (cpu["ts_s"] + cpu["dur_s"]).to_numpy(), cpu["tid"].to_numpy())
    cpu["depth"], cpu["parent"] = depth, parent
    # count FLOPs once: at the outermost op that has them (linear > matmul > mm > kernel op)
    flops = cpu["flops"].to_numpy().copy()
    byts = cpu["bytes"].to_numpy().copy()
    owner = np.full(len(cpu), -1, int)    # the op that carries this op's FLOPs (itself or an ancestor)
    for i in range(len(cpu)):
        j = parent[i]
        if j >= 0 and owner[j] >= 0:
            owner[i] = owner[j]
            flops[i] = byts[i] = 0.0
        elif flops[i] > 0:
            owner[i] = i
    cpu["flops"], cpu["bytes"], cpu["owner"] = flops, byts, owner
    ops_only = cpu[~cpu["user"]]
    by_ext = {int(x): i for i, x in ops_only["ext_id"].dropna().items()}
    cpu_only = not k_rows
    if not k_rows:
        if device_name(d):
            raise RoofplanError(f"trace {p}: {n_events} events but no GPU kernels; record with torch.profiler "
                                "activities=[CPU, CUDA] around at least one step")
        k_rows = _cpu_kernels(ops_only, parent, cpu["name"].tolist())
        if not k_rows:
            raise RoofplanError(f"trace {p}: no GPU kernels and no aten ops; record with torch.profiler around at least one step")
    kern = pd.DataFrame(k_rows).sort_values("ts_s", kind="stable").reset_index(drop=True)
    op_idx = []
    for ext, corr in zip(kern["ext_id"].tolist(), kern["corr"].tolist()):
        i = by_ext.get(int(ext)) if ext is not None and not _isnan(ext) else None
        if i is None and corr in flows:
            tid, t = flows[corr]
            i = _innermost_op(ops_only, tid, t)
        op_idx.append(i)
    kern["op_index"] = op_idx
    names, owners = cpu["name"].tolist(), cpu["owner"].tolist()
    kern["op"] = [names[i] if i is not None else "" for i in op_idx]
    kern["flop_op"] = [int(owners[i]) if i is not None else -1 for i in op_idx]
    kern["cls"] = ["copy" if m else classify_kernel(n, o) for n, o, m in zip(kern["name"], kern["op"], kern["memcpy"])]
    kern["cls"] = _eager_rmsnorm(kern["op"].tolist(), kern["cls"].tolist())
    kern["cls"] = _backward_of_norm(kern, cpu)
    kern["cls"] = _in_optimizer_step(kern, cpu)
    segs = _segments(cpu, kern)
    kern["segment"] = _assign_segments(kern, cpu, segs)
    runtime = pd.DataFrame(rt_rows, columns=["name", "ts_s", "dur_s", "tid"])
    return Trace(str(p), device_name(d), kern, cpu, segs, cpu_only, runtime)


# aten ops that only make views or metadata: no work of their own on a CPU
_VIEW_OPS = frozenset(f"aten::{n}" for n in (
    "view", "reshape", "_reshape_alias", "transpose", "t", "slice", "select", "expand", "unsqueeze", "squeeze",
    "split", "split_with_sizes", "chunk", "permute", "as_strided", "alias", "detach", "detach_", "empty",
    "empty_like", "empty_strided", "_unsafe_view", "lift_fresh", "resolve_conj", "resolve_neg", "unbind",
    "narrow", "result_type", "is_nonzero", "item", "_local_scalar_dense", "set_", "requires_grad_"))


def _cpu_kernels(ops: pd.DataFrame, parent: np.ndarray, names: list[str]) -> list[dict]:
    """A CPU-only trace (no deviceProperties, no kernels): the leaf aten ops are the kernels --
    on a CPU the op itself does the work. Views and metadata ops are skipped, and do not make
    their parent a non-leaf (aten::mm calls resolve_conj). `names`: every CPU row's name."""
    has_child = np.zeros(len(parent), bool)
    real = np.array([n not in _VIEW_OPS for n in names]) & (parent >= 0)
    has_child[parent[real]] = True
    rows = []
    for i, name, ts, dur, ext in zip(ops.index, ops["name"], ops["ts_s"], ops["dur_s"], ops["ext_id"]):
        if has_child[i] or not name.startswith("aten::") or name in _VIEW_OPS:
            continue
        rows.append({"name": name, "ts_s": ts, "dur_s": dur, "stream": None, "ext_id": ext, "corr": None, "memcpy": False})
    return rows


def _in_optimizer_step(kern: pd.DataFrame, cpu: pd.DataFrame) -> list[str]:
    """Memory-bound kernels launched inside torch's `Optimizer.step#...` annotation belong to the
    optimizer (unfused AdamW runs as foreach add/mul/lerp/sqrt/addcdiv kernels)."""
    cls = kern["cls"].tolist()
    steps = cpu[cpu["user"] & cpu["name"].str.startswith("Optimizer.step#")]
    if not len(steps):
        return cls
    cpu_ts = cpu["ts_s"].tolist()
    spans = list(zip(steps["ts_s"], steps["ts_s"] + steps["dur_s"]))
    for j, i in enumerate(kern["op_index"].tolist()):
        if i is None or _isnan(i) or cls[j] in ("gemm", "communication"):
            continue
        t = cpu_ts[int(i)]
        if any(a <= t <= b for a, b in spans):
            cls[j] = "optimizer"
    return cls


AUTOGRAD_NODE = "autograd::engine::evaluate_function: "


def _backward_of_norm(kern: pd.DataFrame, cpu: pd.DataFrame) -> list[str]:
    """A backward kernel belongs to the class of the forward op whose autograd node launched it:
    the profiler gives both the same `Sequence number`. An eager RMSNorm's backward nodes (Pow,
    Mean, Rsqrt, Mul, ToCopy backward) launch generic elementwise kernels; ops.py counts them as
    the norm's backward, so they are `norm` here too."""
    cls = kern["cls"].tolist()
    if "seq" not in cpu or cpu["seq"].isna().all():
        return cls
    names, parent, seqs = cpu["name"].tolist(), cpu["parent"].tolist(), cpu["seq"].tolist()

    def node_seq(i):
        """(sequence number of the nearest ancestor carrying one, whether the op runs inside an
        autograd node, i.e. in the backward pass)."""
        seq, bwd = None, False
        while i is not None and i >= 0:
            if seq is None and seqs[i] is not None and not _isnan(seqs[i]):
                seq = int(seqs[i])
            bwd = bwd or names[i].startswith(AUTOGRAD_NODE)
            i = parent[i]
        return seq, bwd
    keyed = [node_seq(int(i)) if i is not None and not _isnan(i) else (None, False) for i in kern["op_index"].tolist()]
    norm_seqs = {s for (s, bwd), c in zip(keyed, cls) if s is not None and not bwd and c == "norm"}
    return ["norm" if bwd and s in norm_seqs and c in ("elementwise", "copy") else c
            for (s, bwd), c in zip(keyed, cls)]


def _eager_rmsnorm(ops: list[str], cls: list[str]) -> list[str]:
    """Mark the whole kernel sequence of an eager RMSNorm as `norm`, as ops.py counts it:
    [cast to fp32], pow, mean, add(eps), rsqrt, mul, [cast back], mul(weight) (HF LlamaRMSNorm;
    the casts are absent when the residual is already fp32)."""
    out = list(cls)
    n = len(ops)
    for i in range(n - 4):
        if ops[i:i + 4] != ["aten::pow", "aten::mean", "aten::add", "aten::rsqrt"]:
            continue
        if i and ops[i - 1] == "aten::copy_":
            out[i - 1] = "norm"
        j = i + 4
        tail = ["aten::mul", "aten::copy_", "aten::mul"] if j + 1 < n and ops[j + 1] == "aten::copy_" else ["aten::mul", "aten::mul"]
        for t in tail:
            if j < n and ops[j] == t:
                j += 1
        for m in range(i, j):
            out[m] = "norm"
    return out


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _segments(cpu: pd.DataFrame, kern: pd.DataFrame) -> pd.DataFrame:
    """ProfilerStep#N annotations when the trace has them; otherwise one segment per model
    forward, split at each top-level aten::embedding (inference: prefill when the token ids
    have more than one position, decode otherwise); otherwise the whole trace."""
    end = float(max((cpu["ts_s"] + cpu["dur_s"]).max() if len(cpu) else 0.0, (kern["ts_s"] + kern["dur_s"]).max()))
    start = float(min(cpu["ts_s"].min() if len(cpu) else np.inf, kern["ts_s"].min()))
    steps = cpu[cpu["name"].str.match(STEP_RE)]
    if len(steps):
        return pd.DataFrame({"name": steps["name"].tolist(), "phase": ["step"] * len(steps),
                             "t0_s": steps["ts_s"].tolist(), "t1_s": (steps["ts_s"] + steps["dur_s"]).tolist()})
    emb = cpu[(cpu["name"] == "aten::embedding") & (cpu["depth"] == 0)]
    if len(emb) >= 1 and not (cpu["name"].str.contains("Backward", regex=False)).any():
        t0 = emb["ts_s"].tolist()
        t1 = t0[1:] + [end]
        phases = []
        for dims in emb["dims"]:
            ids = shape(dims, 1)
            phases.append("prefill" if ids and ids[-1] > 1 else "decode")
        names = [f"{ph}#{i}" for i, ph in enumerate(phases)]
        t0[0] = min(t0[0], start)
        return pd.DataFrame({"name": names, "phase": phases, "t0_s": t0, "t1_s": t1})
    phase = "train" if cpu["name"].str.contains("Backward", regex=False).any() else "step"
    return pd.DataFrame({"name": [f"{phase}#0"], "phase": [phase], "t0_s": [start], "t1_s": [end]})


def _assign_segments(kern: pd.DataFrame, cpu: pd.DataFrame, segs: pd.DataFrame) -> list[str]:
    """A kernel belongs to the segment during which its launching op started (GPU time lags the
    CPU, so kernel timestamps alone would misplace the queue's tail)."""
    t0 = segs["t0_s"].to_numpy()
    names = segs["name"].tolist()
    cpu_ts = cpu["ts_s"].tolist()
    t = np.array([cpu_ts[int(i)] if i is not None and not _isnan(i) else ts
                  for i, ts in zip(kern["op_index"].tolist(), kern["ts_s"].tolist())])
    idx = np.maximum(np.searchsorted(t0, t, side="right") - 1, 0)
    return [names[i] for i in idx]


_GPU_WORDS = re.compile(r"[^a-z0-9]+")


def check_device(trace: Trace, gpu) -> None:
    """Raise when the trace's device is not `gpu` (a GPU spec): compare the spec's full name
    (e.g. 'NVIDIA H100 SXM5 80GB') with deviceProperties.name ('NVIDIA H100 80GB HBM3') by the
    model number and memory size, the tokens that tell GPUs apart."""
    check_recorded_device(trace.device_name, f"trace {trace.path}", gpu)


def check_recorded_device(device: str, what: str, gpu) -> None:
    """Raise a FieldError on `hardware` when the device a measurement file names (a trace's
    deviceProperties, a microbenchmark file's env record) is not `gpu`; the fix names the spec
    that matches it. An empty name (CPU-only traces, files without an env record) is not checked."""
    if not device:
        return
    from simulator.core.specs import list_names, load_gpu
    if _device_matches(device, gpu):
        return
    fix = "use the hardware it was recorded on (add a spec under hardware_specs/gpus/ if roofplan has none)"
    for name in list_names("gpu"):
        try:
            g = load_gpu(name)
        except RoofplanError:
            continue
        if _device_matches(device, g):
            fix = f"use {name}"
            break
    raise FieldError("hardware", gpu.name, f"{what} was recorded on {device}", fix)


def _tokens(s: str) -> set[str]:
    return {t for t in _GPU_WORDS.split(s.lower()) if t}


def _device_matches(dev: str, gpu) -> bool:
    """True when the model token (h100, a100, 4090, mi300x, ...) agrees and, where both name a
    memory size (40gb/80gb), the size agrees too. 'cpu' traces have no deviceProperties."""
    dt = _tokens(dev)
    gt = _tokens(gpu.full_name) | _tokens(gpu.name)
    model_re = re.compile(r"^([a-z]{0,4}\d{2,4}[a-z]?|mi\d+x?)$")
    dev_models = {t for t in dt if model_re.match(t) and not t.endswith("gb")}
    gpu_models = {t for t in gt if model_re.match(t) and not t.endswith("gb")}
    if not dev_models & gpu_models:
        return False
    dev_mem = {t for t in dt if re.match(r"^\d+gb$", t)}
    gpu_mem = {t for t in gt if re.match(r"^\d+gb$", t)}
    if dev_mem and gpu_mem and not dev_mem & gpu_mem:
        return False
    # SXM vs PCIe: a PCIe card says so in its device name ('NVIDIA H100 PCIe', 'NVIDIA A100 80GB
    # PCIe'); an SXM part may not say SXM ('NVIDIA H100 80GB HBM3')
    return ("pcie" in gt) == ("pcie" in dt)
