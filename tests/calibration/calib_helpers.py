"""Synthetic Kineto traces and the shared measurement paths for the calibration tests."""
import functools
import gzip
import json

from simulator.core.paths import REPO_ROOT

SHARED = REPO_ROOT.parent / "shared" / "measurements" / "h100-sxm"
INFER = SHARED / "trace_infer_llama-3.1-8b_B16_L512.json.gz"
TRAIN = SHARED / "trace_train_llama-3.2-1b_B4_S2048.json.gz"


def synthetic_events(old_spelling=False, device="NVIDIA H100 80GB HBM3", steps=True):
    """Two profiler steps: a linear (mm kernel) and an eager RMSNorm, linked by External id."""
    kcat, ocat = ("Kernel", "Operator") if old_spelling else ("kernel", "cpu_op")
    ev = []
    ext = 100
    for step in range(2):
        t0 = 1000.0 + step * 1000
        if steps:
            ev.append({"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{step}", "pid": 1, "tid": 1,
                       "ts": t0, "dur": 900})
        ev.append({"ph": "X", "cat": ocat, "name": "aten::linear", "pid": 1, "tid": 1, "ts": t0 + 10, "dur": 50,
                   "args": {"External id": ext, "Input Dims": [[8, 512, 1024], [4096, 1024], []],
                            "Input type": ["c10::BFloat16", "c10::BFloat16", ""]}})
        ev.append({"ph": "X", "cat": ocat, "name": "aten::mm", "pid": 1, "tid": 1, "ts": t0 + 20, "dur": 30,
                   "args": {"External id": ext + 1, "Input Dims": [[4096, 1024], [1024, 4096]],
                            "Input type": ["c10::BFloat16", "c10::BFloat16"]}})
        ev.append({"ph": "X", "cat": kcat, "name": "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT", "pid": 0,
                   "tid": 7, "ts": t0 + 100, "dur": 200.0, "args": {"External id": ext + 1, "correlation": ext + 1, "stream": 7}})
        for j, op in enumerate(("aten::pow", "aten::mean", "aten::add", "aten::rsqrt", "aten::mul", "aten::mul")):
            e = ext + 2 + j
            ev.append({"ph": "X", "cat": ocat, "name": op, "pid": 1, "tid": 1, "ts": t0 + 60 + 5 * j, "dur": 4,
                       "args": {"External id": e}})
            ev.append({"ph": "X", "cat": kcat, "name": f"void at::native::vectorized_elementwise_kernel<4, {op}>", "pid": 0,
                       "tid": 7, "ts": t0 + 310 + 20 * j, "dur": 10.0, "args": {"External id": e, "correlation": e, "stream": 7}})
        ext += 20
    d = {"traceEvents": ev}
    if device:
        d["deviceProperties"] = [{"id": 0, "name": device}]
    return d


def write_trace(path, d, gz=True):
    raw = json.dumps(d).encode()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@functools.lru_cache(maxsize=None)
def cached_trace(path):
    """Each shared trace parsed once per test session (Trace is frozen; tests only read it)."""
    from simulator.calibration.trace import load_trace
    return load_trace(path)
