import gzip
import json

import pytest
import yaml

from simulator.cli.main import main
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile
from simulator.core.specs import load_hardware
from simulator.calibration.trace_fit import fit_gemm_scale, host_overhead_per_launch, layer_structure
from simulator.core.profiles import load_kernel_profile
from simulator.core.workload import Job

from calib_helpers import INFER, SHARED, TRAIN, synthetic_events, write_trace, cached_trace

HF_DECODE_S = 0.10955614700000638   # end_to_end.yaml: hf-decode-llama-3.1-8b-b16-l512


def test_layer_structure_of_hf_traces(shared):
    s = layer_structure(cached_trace(INFER))
    assert (s["fused_qkv"], s["fused_gate_up"], s["repeat_kv"], s["kv_cache_concat"]) == (False, False, False, True)
    assert (s["hidden"], s["ffn"]) == (4096, 14336)
    t = layer_structure(cached_trace(TRAIN))
    assert (t["hidden"], t["ffn"], t["fused_qkv"]) == (2048, 8192, False)


def test_host_overhead_from_decode_segment(shared):
    t = cached_trace(INFER)
    h, ev = host_overhead_per_launch(t, HF_DECODE_S)
    # 1301 launching ops (1461 kernels: cuBLAS split-K adds a reduction kernel to some GEMMs)
    assert ev["segment"] == "decode#1" and ev["launches"] == 1301
    assert h == pytest.approx(HF_DECODE_S / 1301)
    traced, _ = host_overhead_per_launch(t)        # profiler-inflated: 180.6 ms traced span
    assert traced == pytest.approx(0.1806 / 1301, rel=1e-3)


def test_gemm_scale_agrees_between_traces(shared):
    s = load_hardware("h100-sxm")
    kp = load_kernel_profile("h100-sxm")
    a, ea = fit_gemm_scale(cached_trace(INFER), s, kp)
    b, eb = fit_gemm_scale(cached_trace(TRAIN), s, kp)
    assert ea["measured_s"] == pytest.approx(0.1449, rel=1e-2)
    # the HF stack's GEMMs run 14-16% faster than the microbenchmark curves say, in both traces
    assert 1.10 < a < 1.22 and 1.10 < b < 1.22 and abs(a - b) < 0.05


def test_calibrate_cli_reproduces_shipped_hf_eager(shared, tmp_path, capsys):
    out = tmp_path / "hf.yaml"
    assert main(["calibrate", "--trace", str(INFER), "--hardware", "h100-sxm", "--step-time", str(HF_DECODE_S),
                 "-o", str(out), "--format", "json"]) == 0
    fitted = yaml.safe_load(out.read_text())
    shipped = load_executor_profile("hf-eager")
    assert fitted["host_overhead_per_kernel_us"] == pytest.approx(shipped.host_overhead_per_kernel_s * 1e6, rel=1e-3)
    assert fitted["gemm_efficiency_scale"] == pytest.approx(shipped.gemm_efficiency_scale, rel=1e-3)
    for k in ("fused_qkv", "fused_gate_up", "repeat_kv", "kv_cache_concat"):
        assert fitted[k] == getattr(shipped, k)
    assert "trace_infer_llama-3.1-8b_B16_L512.json.gz" in fitted["source"]
    report = json.loads(capsys.readouterr().out)
    assert report["executor_profile"]["evidence"]["host"]["launches"] == 1301
    load_executor_profile(str(out))      # the written profile parses


def test_calibrate_microbench_and_trace(shared, tmp_path):
    k, e = tmp_path / "k.yaml", tmp_path / "e.yaml"
    assert main(["calibrate", "--microbench", str(SHARED / "microbench.jsonl"), "--trace", str(INFER),
                 "--hardware", "h100-sxm", "-o", str(e), "--kernels-out", str(k), "--format", "json"]) == 0
    assert yaml.safe_load(k.read_text())["hardware"] == "h100-sxm"
    assert yaml.safe_load(e.read_text())["fused_qkv"] is False


def test_hf_eager_prediction_accuracy():
    """Shipped hf-eager: the HF decode case (measured 109.6 ms) and the traced HF prefill."""
    m, s = load_model("llama-3.1-8b"), load_hardware("h100-sxm")
    ex = load_executor_profile("hf-eager")
    dec = predict(m, s, Job("decode", batch=16, context=512), ex)
    assert dec.time_s == pytest.approx(HF_DECODE_S, rel=0.15) and dec.bound == "host"
    pre = predict(m, s, Job("prefill", batch=16, seq=512), ex)
    # traced prefill: 224.2 ms of kernels, 238.8 ms wall
    assert pre.ops["gpu_time_s"].sum() == pytest.approx(0.2242, rel=0.05)
    assert pre.time_s == pytest.approx(0.2388, rel=0.08)
    # HF appends the KV cache with torch.cat: the copy grows with the context
    short = predict(m, s, Job("decode", batch=64, context=512), ex).ops.set_index("name")
    long = predict(m, s, Job("decode", batch=64, context=4096), ex).ops.set_index("name")
    assert long.at["layer.kv_write", "bytes"] / short.at["layer.kv_write", "bytes"] == pytest.approx(8.0, rel=0.01)
    # an eager stack is never faster than the same kernels under a CUDA graph
    graph = predict(m, s, Job("decode", batch=16, context=512))
    assert dec.time_s > 5 * graph.time_s


def test_validate_trace_cli(shared, tmp_path, capsys):
    png, pred = tmp_path / "v.png", tmp_path / "pred.json.gz"
    assert main(["validate", "--trace", str(INFER), "--model", "llama-3.1-8b", "--hardware", "h100-sxm",
                 "--phase", "prefill", "--batch", "16", "--seq", "512", "--executor", "hf-eager",
                 "--plot", str(png), "--chrome-trace", str(pred), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    s = out["summary"]
    assert s["segment"] == "prefill#0"
    assert s["measured_kernel_time_s"] == pytest.approx(0.2242, rel=1e-3)
    assert abs(s["kernel_time_error"]) < 0.05 and abs(s["step_error"]) < 0.08
    gemm = next(c for c in out["classes"] if c["cls"] == "gemm")
    assert gemm["measured_kernels"] == 226 and abs(gemm["error"]) < 0.03
    assert png.read_bytes()[:4] == b"\x89PNG"
    ev = json.loads(gzip.decompress(pred.read_bytes()))["traceEvents"]
    gpu = [e for e in ev if e.get("ph") == "X" and e["tid"] == 1]
    host = [e for e in ev if e.get("ph") == "X" and e["tid"] == 2]
    # layers unrolled: 32 x (q, k, v, o, gate, up, down) + lm_head GEMM events
    assert sum(1 for e in gpu if e["cat"] == "gemm") == 32 * 7 + 1
    # the two lanes end where the step ends: the later of the last kernel and the last issue
    ends = max(e["ts"] + e["dur"] for e in gpu + host)
    assert ends == pytest.approx(s["predicted_step_s"] * 1e6, rel=1e-6)


def test_validate_end_to_end(shared, capsys):
    assert main(["validate", "--end-to-end", str(SHARED / "end_to_end.yaml"), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["all"]["cases"] == 35
    assert out["groups"]["graph"]["time_mape"] < 0.08
    assert out["groups"]["offload"]["time_mape"] < 0.05
    assert out["groups"]["hf-eager"]["time_mape"] < 0.15      # 15 cases, 12 of them on a held-out model


@pytest.mark.xfail(strict=True, reason=(
    "issue 12 'Model the software, not just the GPU': on 2026-11-30 `validate --end-to-end` gives "
    "train time MAPE 12.8% (3 cases), lora 61%, offload-pageable unpredicted (no accelerate profile); "
    "hf-eager inference is within the bar (3.8%, 15 cases)"))
def test_validate_end_to_end_framework_groups(shared, capsys):
    assert main(["validate", "--end-to-end", str(SHARED / "end_to_end.yaml"), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["groups"]["hf-eager"]["time_mape"] < 0.15
    assert out["groups"]["train"]["time_mape"] < 0.10
    assert out["groups"]["lora"]["time_mape"] < 0.10
    assert out["groups"]["offload-pageable"]["time_mape"] < 0.15


@pytest.mark.parametrize("argv, msg", [
    (["calibrate", "--hardware", "h100-sxm", "-o", "x.yaml"], "needs --microbench F"),
    (["calibrate", "--trace", "missing.json", "--hardware", "h100-sxm", "-o", "x.yaml"], "cannot read"),
    (["validate", "--hardware", "h100-sxm"], "exactly one of --trace"),
    (["validate", "--trace", "t.json", "--hardware", "h100-sxm", "--phase", "decode"], "needs --model"),
])
def test_bad_input_exit_2(argv, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_trace_from_other_gpu_exit_2(tmp_path, capsys):
    t = write_trace(tmp_path / "a100.json.gz", synthetic_events(device="NVIDIA A100-SXM4-80GB"))
    assert main(["calibrate", "--trace", str(t), "--hardware", "h100-sxm", "-o", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("roofplan: error: --hardware h100-sxm: trace ")     # the field, spelled as the flag
    assert "recorded on NVIDIA A100-SXM4-80GB; use a100-sxm-80gb" in err
    assert main(["validate", "--trace", str(t), "--model", "llama-3.2-1b", "--hardware", "h100-sxm",
                 "--phase", "prefill", "--seq", "512"]) == 2


def test_no_host_bound_segment(shared, tmp_path, capsys):
    # the training step keeps the GPU busy: host overhead cannot be measured from it
    assert main(["calibrate", "--trace", str(TRAIN), "--hardware", "h100-sxm", "--step-time", "0.1",
                 "-o", str(tmp_path / "x.yaml")]) == 2
    assert "no trace has one" in capsys.readouterr().err
    assert main(["calibrate", "--trace", str(TRAIN), "--hardware", "h100-sxm", "-o", str(tmp_path / "x.yaml"),
                 "--format", "json"]) == 0
    fitted = yaml.safe_load((tmp_path / "x.yaml").read_text())
    assert "host_overhead_per_kernel_us" in fitted and fitted["host_overhead_per_kernel_us"] == 0
