import gzip
import json
import shutil

import pytest
import yaml

from simulator.cli.main import main
from simulator.core.paths import REPO_ROOT
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile
from simulator.core.specs import load_hardware
from simulator.calibration.host_fit import (fit_step_time, host_bound_segment, host_step, predict_step_host, profile_fields,
                                            rounded, top_level_ops, trace_costs, train_host_step)
from simulator.core.errors import RoofplanError
from simulator.calibration.trace_fit import fit_gemm_scale, layer_structure
from simulator.core.profiles import load_kernel_profile
from simulator.core.workload import Job

from calib_helpers import INFER, SHARED, TRAIN, synthetic_events, write_trace, cached_trace

HF_DECODE_S = 0.10955614700000638   # end_to_end.yaml: hf-decode-llama-3.1-8b-b16-l512
E2E = SHARED / "end_to_end.yaml"
HOST_FIELDS = ("host_overhead_per_kernel_us", "host_per_layer_us", "host_overhead_per_step_us", "host_new_shape_us")
TRAIN_HOST_FIELDS = ("host_autograd_scale", "host_backward_per_kernel_us", "host_backward_per_layer_us", "host_optimizer_us")


def test_layer_structure_of_hf_traces(shared):
    s = layer_structure(cached_trace(INFER))
    assert (s["fused_qkv"], s["fused_gate_up"], s["repeat_kv"], s["kv_cache_concat"]) == (False, False, False, True)
    assert (s["hidden"], s["ffn"]) == (4096, 14336)
    t = layer_structure(cached_trace(TRAIN))
    assert (t["hidden"], t["ffn"], t["fused_qkv"]) == (2048, 8192, False)


def test_host_costs_from_decode_step(shared):
    t = cached_trace(INFER)
    seg, stats = host_bound_segment(t, 0.5)
    # 1301 launching ops (1461 kernels: cuBLAS split-K adds a reduction kernel to some GEMMs)
    assert seg == "decode#1" and stats["launches"] == 1301 and stats["kernels"] == 1461
    tops = top_level_ops(t)
    step = host_step(t, seg, tops)
    # 32 identical layers of 54 top-level ops; embedding + rotary tables before, final norm + LM head after
    assert step.layers == 32 and len(step.in_layers) == 32 * 54 and len(step.ops) == 1757
    # host time: first op to the trailing cudaDeviceSynchronize calls, which are waiting, not work
    assert step.host_s == pytest.approx(0.1804, rel=1e-3) and step.sync_s == pytest.approx(223.7e-6, rel=1e-2)
    c = trace_costs(step)
    us = {k: v * 1e6 for k, v in c.kind_s.items()}
    assert us == pytest.approx({"view": 7.6, "elementwise": 27.4, "norm": 32.9, "copy": 38.9, "gemm": 102.3,
                                "attention": 157.8}, abs=0.05)
    assert c.counts["attention"] == 32 and c.counts["gemm"] == 226
    assert c.python_layer_s * 1e6 == pytest.approx(730.8, abs=0.1)
    assert c.python_step_s * 1e6 == pytest.approx(1076.0, abs=0.1)
    # the first SDPA call of the decode step builds a cuDNN graph for the new KV length
    assert c.builds == 1 and c.build_s == pytest.approx(0.0916, rel=1e-3)
    # held out: the traced prefill from the decode step's costs, in profiled units; its first
    # layers carry the profiler's warm-up, its second half is within 2%
    pre = predict_step_host(host_step(t, "prefill#0", tops), c)
    assert pre["error"] == pytest.approx(-0.374, abs=0.002)
    assert abs(pre["late_layer_error"]) < 0.02


def test_step_time_deflates_a_step_without_graph_build(shared):
    """--step-time: k = the traced step's un-profiled time / its traced host time, for a step
    without a graph build; a decode step that builds one has two unknowns for one number."""
    t = cached_trace(INFER)
    tops = top_level_ops(t)
    kpo = {"gemm": 1.0, "attention": 1.0}
    pre = host_step(t, "prefill#0", tops)
    c = trace_costs(pre)
    assert c.builds == 0
    fields, ev = fit_step_time(c, pre, kpo, 0.5 * pre.host_s, "test")
    assert ev["k_prof"] == pytest.approx(0.5)
    assert fields == {**rounded(profile_fields(c, kpo, 0.5)), "host_new_shape_us": 0}
    dec = host_step(t, "decode#1", tops)
    with pytest.raises(RoofplanError, match="two unknowns"):
        fit_step_time(trace_costs(dec), dec, kpo, HF_DECODE_S, "test")


def test_gemm_scale_agrees_between_traces(shared):
    s = load_hardware("h100-sxm")
    kp = load_kernel_profile("h100-sxm")
    a, ea = fit_gemm_scale(cached_trace(INFER), s, kp)
    b, eb = fit_gemm_scale(cached_trace(TRAIN), s, kp)
    assert ea["measured_s"] == pytest.approx(0.1449, rel=1e-2)
    # the HF stack's GEMMs run 14-16% faster than the microbenchmark curves say, in both traces
    assert 1.10 < a < 1.22 and 1.10 < b < 1.22 and abs(a - b) < 0.05


def _calibrate(out, capsys, *extra):
    argv = ["calibrate", "--trace", str(INFER), "--hardware", "h100-sxm", "-o", str(out), "--format", "json", *extra]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_calibrate_cli_reproduces_shipped_hf_eager(shared, tmp_path, capsys):
    """Refitting the shipped profile in place with the shipped command (both traces) reproduces
    it: the host tables from the traces, the fields a trace cannot tell (workspace, description)
    kept."""
    shipped_path = REPO_ROOT / "hardware_specs" / "profiles" / "executors" / "hf-eager.yaml"
    shipped = yaml.safe_load(shipped_path.read_text())
    out = tmp_path / "hf-eager.yaml"
    shutil.copy(shipped_path, out)
    report = _calibrate(out, capsys, "--trace", str(TRAIN), "--end-to-end", str(E2E))
    fitted = yaml.safe_load(out.read_text())
    assert fitted["source"] == shipped["source"]
    for k in HOST_FIELDS + TRAIN_HOST_FIELDS[:1] + TRAIN_HOST_FIELDS[2:]:
        assert fitted[k] == pytest.approx(shipped[k], rel=1e-3), k
    assert fitted["host_per_op_us"] == pytest.approx(shipped["host_per_op_us"], rel=1e-3)
    assert fitted["host_backward_per_kernel_us"] == pytest.approx(shipped["host_backward_per_kernel_us"], rel=1e-3)
    assert fitted["gemm_efficiency_scale"] == pytest.approx(shipped["gemm_efficiency_scale"], rel=1e-3)
    fit = HOST_FIELDS + TRAIN_HOST_FIELDS + ("host_per_op_us", "gemm_efficiency_scale", "source")
    assert {k: v for k, v in fitted.items() if k not in fit} == {k: v for k, v in shipped.items() if k not in fit}
    for name in ("trace_infer_llama-3.1-8b_B16_L512.json.gz", "hf-prefill-llama-3.1-8b-b1-s512",
                 "hf-decode-llama-3.1-8b-b16-l512", "profiler factor"):
        assert name in fitted["source"]
    host = report["executor_profile"]["evidence"]["host"]
    assert host["launches"] == 1301 and host["segment"] == "decode#1"
    kinds = host["kinds"]
    assert kinds["gemm"]["count"] == 226 and kinds["gemm"]["mean_us_profiled"] == pytest.approx(102.3, abs=0.05)
    assert kinds["gemm"]["us_unprofiled"] == pytest.approx(102.28 * host["k_prof"], abs=0.01)
    # un-profiled dispatch: about 0.43 x the traced one
    assert 0.40 < host["k_prof"] < 0.46
    # the in-stream kernel fit never saw the training step: its memory-bound classes are held
    # out, printed with the host fit's held-out rows (gemm left out: it shares the GEMM scale)
    (train,) = host["held_out"]["trace_classes"]
    assert (train["segment"], train["model"], train["batch"], train["seq"]) == ("train#0", "llama-3.2-1b", 4, 2048)
    assert set(train["classes"]) == {"attention", "norm", "elementwise", "loss", "optimizer"}
    assert all(abs(e) < 0.15 for e in train["classes"].values()), train
    load_executor_profile(str(out))      # the written profile parses
    # a fresh profile (fields a trace cannot tell from default.yaml) gets the same host table
    fresh = tmp_path / "fresh" / "hf-eager.yaml"
    _calibrate(fresh, capsys, "--end-to-end", str(E2E))
    again = yaml.safe_load(fresh.read_text())
    assert {k: again[k] for k in HOST_FIELDS + ("host_per_op_us",)} == {k: fitted[k] for k in HOST_FIELDS + ("host_per_op_us",)}
    assert "Other fields from default.yaml." in again["source"]


def test_the_order_of_the_traces_does_not_matter(shared, tmp_path, capsys):
    """The training trace first: each fit identifies its own trace's model (the host fit the 8B
    decode step, the class scales the 8B prefill) and the KV-cache append comes from the trace
    that has decode steps. Before, the first trace's structure (the 1B) was used for all of them:
    the host fit refused the end-to-end file and the cache append read False."""
    shipped = yaml.safe_load((REPO_ROOT / "hardware_specs" / "profiles" / "executors" / "hf-eager.yaml").read_text())
    out = tmp_path / "hf-eager.yaml"
    shutil.copy(REPO_ROOT / "hardware_specs" / "profiles" / "executors" / "hf-eager.yaml", out)
    assert main(["calibrate", "--trace", str(TRAIN), "--trace", str(INFER), "--hardware", "h100-sxm",
                 "--end-to-end", str(E2E), "-o", str(out), "--format", "json"]) == 0
    capsys.readouterr()
    fitted = yaml.safe_load(out.read_text())
    assert {k: v for k, v in fitted.items() if k != "source"} == {k: v for k, v in shipped.items() if k != "source"}


def test_calibrate_held_out_report(shared, tmp_path, capsys):
    out = tmp_path / "hf-eager.yaml"
    report = _calibrate(out, capsys, "--end-to-end", str(E2E))
    host = report["executor_profile"]["evidence"]["host"]
    assert [x["id"] for x in host["k_fitted_on"]] == ["hf-prefill-llama-3.1-8b-b1-s512"]
    assert [x["id"] for x in host["new_shape_fitted_on"]] == ["hf-decode-llama-3.1-8b-b16-l512"]
    held = host["held_out"]
    # (a) the traced prefill step from the traced decode step's costs (profiled units)
    (pre,) = held["traced_steps"]
    assert pre["segment"] == "prefill#0" and pre["error"] == pytest.approx(-0.374, abs=0.002)
    # (b) the executor's cases on a model the fit never saw, predicted by predict() with the new profile
    other = held["other_models"]
    assert other["models"] == ["llama-3.2-1b"] and other["inference_cases"] == 12
    assert other["mape"] < 0.05 and -0.09 < other["min_error"] and other["max_error"] < 0.09
    rows = {r["id"]: r for r in held["end_to_end"]}
    for cid in ("hf-prefill-llama-3.1-8b-b1-s512", "hf-decode-llama-3.1-8b-b16-l512"):
        assert rows[cid]["role"] == "fitted" and abs(rows[cid]["error"]) < 0.005
    r = rows["hf-decode-llama-3.2-1b-b16-l512"]
    assert r["role"] == "held out: other model"
    p = predict(load_model("llama-3.2-1b"), load_hardware("h100-sxm"), Job("decode", batch=16, context=512),
                load_executor_profile(str(out)), check_memory=False)
    assert r["predicted_s"] == pytest.approx(p.time_s, rel=1e-9)
    # the table lists them too
    assert main(["calibrate", "--trace", str(INFER), "--hardware", "h100-sxm", "-o", str(out),
                 "--end-to-end", str(E2E), "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert "hf-decode-llama-3.2-1b-b16-l512" in table and "traced prefill#0 host (profiled)" in table


def test_training_host_fit_from_the_training_trace(shared, tmp_path, capsys):
    """The training host lane from the training trace's CPU timeline (host_fit.fit_train_host):
    the spans are the trace's own (profiled), each backward node class costs k x its traced mean,
    and the host lane of Llama-3.2-1B issues the forward and the backward in k x those spans; none
    of the training cases of end_to_end.yaml is fitted, and the host-bound batch 1 comes within 10%
    (2026-11-30: b1 -5.1%, b4 -2.4%, b8 with full recompute +0.3%; per-op costs before: -18.2%)."""
    th = train_host_step(cached_trace(TRAIN), "train#0")
    assert th.layers == 16
    assert th.forward_s == pytest.approx(0.08307, abs=5e-5)      # first op -> first autograd node
    assert th.backward_s == pytest.approx(0.10781, abs=5e-5)     # first node -> last, engine thread
    assert th.optimizer_s == pytest.approx(0.003162, abs=5e-6)   # Optimizer.step + zero_grad annotations
    assert th.node_count["gemm"] == 113 and th.node_count["attention"] == 16
    assert th.node_s["gemm"] == pytest.approx(166.6e-6, abs=0.1e-6)
    out = tmp_path / "hf-eager.yaml"        # refitted in place: the HF fields a trace cannot tell kept
    shutil.copy(REPO_ROOT / "hardware_specs" / "profiles" / "executors" / "hf-eager.yaml", out)
    report = _calibrate(out, capsys, "--trace", str(TRAIN), "--end-to-end", str(E2E))
    ev = report["executor_profile"]["evidence"]
    k, fields = ev["host"]["k_prof"], ev["train_host"]["fields"]
    assert fields["host_backward_per_kernel_us"]["gemm"] == pytest.approx(k * 166.6, abs=0.1)
    assert fields["host_optimizer_us"] == pytest.approx(k * 3162, abs=1)
    # the host lane issues the forward and the backward in k x their traced spans
    from simulator.core.step import stage_times
    ex = load_executor_profile(str(out))
    st = stage_times(load_model("llama-3.2-1b"), load_hardware("h100-sxm"), Job("train", batch=4, seq=2048), ex,
                     load_kernel_profile("h100-sxm"))
    lanes = dict(st.lanes)
    host = st.step_host_s + 16 * (lanes["layer_fwd"].H + lanes["layer_bwd"].H) + lanes["embed"].H + lanes["head"].H
    assert host == pytest.approx(k * (th.forward_s + th.backward_s), rel=2e-3)
    rows = {r["id"]: r for r in ev["host"]["held_out"]["end_to_end"] if r["phase"] == "train"}
    train = [r for cid, r in rows.items() if cid.startswith("train-")]
    assert len(train) == 3 and all(r["role"].startswith("held out") for r in train)
    assert max(abs(r["error"]) for r in train) < 0.10
    assert rows["train-llama-3.2-1b-b1-s2048-nockpt"]["error"] == pytest.approx(-0.051, abs=0.005)


def test_autograd_node_classes_and_a_step_without_backward(shared):
    """Backward nodes are charged per class of the forward kernel they differentiate; a segment
    with no autograd node (an inference step) is refused in one line."""
    from simulator.calibration.host_fit import node_class
    assert [node_class(f"autograd::engine::evaluate_function: {n}") for n in
            ("MmBackward0", "PowBackward0", "ScaledDotProductCudnnAttentionBackward0", "NllLossBackward0",
             "EmbeddingBackward0", "MulBackward0", "ToCopyBackward0")] == \
        ["gemm", "norm", "attention", "loss", "embedding", "elementwise", "elementwise"]
    with pytest.raises(RoofplanError, match="no autograd backward nodes"):
        train_host_step(cached_trace(INFER), "decode#1")


def test_training_trace_alone_keeps_the_training_host_costs(shared, tmp_path, capsys):
    """Without an inference host fit there is no profiler factor: the training trace alone leaves
    the training host fields as they were."""
    out = tmp_path / "hf-eager.yaml"
    shutil.copy(REPO_ROOT / "hardware_specs" / "profiles" / "executors" / "hf-eager.yaml", out)
    before = yaml.safe_load(out.read_text())
    assert main(["calibrate", "--trace", str(TRAIN), "--hardware", "h100-sxm", "-o", str(out), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    ev = report["executor_profile"]["evidence"]
    assert "train_host" not in ev and "inference trace" in ev["train_host_kept"]
    after = yaml.safe_load(out.read_text())
    assert {k: after[k] for k in TRAIN_HOST_FIELDS} == {k: before[k] for k in TRAIN_HOST_FIELDS}


@pytest.mark.parametrize("extra, msg", [
    ([], "pass --end-to-end E2E.yaml"),
    (["--step-time", str(HF_DECODE_S)], "--step-time is one number"),
    (["--step-time", str(HF_DECODE_S), "--end-to-end", "E2E"], "pass one"),
])
def test_calibrate_needs_unprofiled_times(shared, tmp_path, capsys, extra, msg):
    """A profiled host-bound step cannot be deflated without measurements taken without the
    profiler: one line says what to pass."""
    extra = [str(E2E) if x == "E2E" else x for x in extra]
    out = tmp_path / "hf-eager.yaml"
    assert main(["calibrate", "--trace", str(INFER), "--hardware", "h100-sxm", "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
    assert not out.exists()


def test_calibrate_microbench_and_trace(shared, tmp_path):
    k, e = tmp_path / "k.yaml", tmp_path / "e.yaml"
    assert main(["calibrate", "--microbench", str(SHARED / "microbench.jsonl"), "--trace", str(INFER),
                 "--hardware", "h100-sxm", "-o", str(e), "--kernels-out", str(k), "--end-to-end", str(E2E),
                 "--format", "json"]) == 0
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


# what the hf-eager profile fitted to each traced segment's kernel times (see kernel_fit and trace_fit)
SEGMENT_CLASSES = [
    # prefill: gemm_efficiency_scale and memory_efficiency_scale (norm, elementwise) fitted on it;
    # attention held out
    (INFER, "llama-3.1-8b", ["--phase", "prefill", "--batch", "16", "--seq", "512"],
     {"gemm", "attention", "norm", "elementwise"}),
    # decode: the per-kernel overheads and the in-stream GEMM and attention constants fitted on it;
    # the work of its norms and elementwise kernels (the prefill's scales) held out
    (INFER, "llama-3.1-8b", ["--phase", "decode", "--batch", "16", "--context", "512"],
     {"gemm", "attention", "norm", "elementwise"}),
    # training: its compute-bound GEMMs share gemm_efficiency_scale with the prefill's; every other
    # class held out (its host costs come from its CPU timeline, not its kernels)
    (TRAIN, "llama-3.2-1b", ["--phase", "train", "--batch", "4", "--seq", "2048"],
     {"gemm", "attention", "norm", "elementwise", "loss", "optimizer"}),
]


@pytest.mark.parametrize("trace, model, job, classes", SEGMENT_CLASSES, ids=["prefill", "decode", "train"])
def test_trace_kernel_classes(shared, capsys, trace, model, job, classes):
    """Per op class on each step of the two shared traces: every class above 1% of the kernel time
    within 15% of the trace (issue 12's bar), the kernel total within 3%. Before the in-stream
    kernel fit (2026-11-30) the decode step was off by gemm +21.6%, attention +64.5%, norm +76.1%,
    elementwise +105.7% and the prefill's norms by +26.2%: isolated-launch constants."""
    assert main(["validate", "--trace", str(trace), "--model", model, "--hardware", "h100-sxm", *job,
                 "--executor", "hf-eager", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    total = out["summary"]["measured_kernel_time_s"]
    big = {c["cls"]: c["error"] for c in out["classes"] if c["measured_s"] > 0.01 * total}
    assert set(big) == classes
    assert all(abs(e) < 0.15 for e in big.values()), big
    assert abs(out["summary"]["kernel_time_error"]) < 0.03


def test_profiler_host_stalls_explain_a_gpu_bound_steps_wall_time(shared, capsys):
    """A GPU-bound traced step waits for the profiled host in gaps the un-profiled step does not
    have: the training step's wall time less its gaps over 20 us is the same step measured without
    the profiler (end_to_end.yaml, train-llama-3.2-1b-b4-s2048-nockpt, 206.66 ms) to 1%, and the
    prediction is within 4% of both."""
    assert main(["validate", "--trace", str(TRAIN), "--model", "llama-3.2-1b", "--hardware", "h100-sxm",
                 "--phase", "train", "--batch", "4", "--seq", "2048", "--executor", "hf-eager", "--format", "json"]) == 0
    s = json.loads(capsys.readouterr().out)["summary"]
    stall_free = s["measured_wall_s"] - s["measured_host_stall_s"]
    assert s["host_stalls"] > 100 and s["measured_host_stall_s"] > 0.1 * s["measured_wall_s"]
    assert stall_free == pytest.approx(0.20666, rel=0.01)
    assert s["predicted_step_s"] == pytest.approx(stall_free, rel=0.04)


def test_validate_end_to_end(shared, capsys):
    assert main(["validate", "--end-to-end", str(SHARED / "end_to_end.yaml"), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["all"]["cases"] == 35
    assert out["groups"]["graph"]["time_mape"] < 0.08
    assert out["groups"]["offload"]["time_mape"] < 0.05
    assert out["groups"]["hf-eager"]["time_mape"] < 0.15      # 15 cases, 12 of them on a held-out model


def test_validate_end_to_end_framework_groups(shared, capsys):
    """Issue 12's bars on the framework-bound groups: hf-eager inference (12 of 15 cases on a
    held-out model), training and LoRA (none fitted). The accelerate case is the one its copy
    efficiency was fitted on: reproduced in sample (its held-out error is the expected error's,
    test_accelerate_copy_efficiency_is_fitted_on_its_one_case_and_stated_held_out)."""
    assert main(["validate", "--end-to-end", str(SHARED / "end_to_end.yaml"), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["groups"]["hf-eager"]["time_mape"] < 0.15
    assert out["groups"]["train"]["time_mape"] < 0.10
    assert out["groups"]["lora"]["time_mape"] < 0.10
    assert out["groups"]["offload-pageable"]["time_mape"] < 0.01
    assert out["in_sample"] == {"accelerate-offload-decode-llama-3.1-8b-b1-l512": {
        "fitted": "accelerate.copy_efficiency_scale", "held_out_time_error": pytest.approx(-0.2664, abs=1e-4)}}


def test_calibrate_end_to_end_alone_fits_the_copy_efficiency(shared, tmp_path, capsys):
    """`calibrate --end-to-end E2E -o accelerate.yaml` reproduces the shipped profile (the scale,
    its source sentence, every other field kept). With a second case, each case's held-out error
    is its prediction at the scale fitted on the other one."""
    shipped_path = REPO_ROOT / "hardware_specs" / "profiles" / "executors" / "accelerate.yaml"
    out = tmp_path / "accelerate.yaml"        # absent: the shipped profile of that name is refitted
    argv = ["calibrate", "--end-to-end", str(E2E), "--hardware", "h100-sxm", "-o", str(out), "--format", "json"]
    assert main(argv) == 0
    (row,) = json.loads(capsys.readouterr().out)["executor_profile"]["cases"]
    assert yaml.safe_load(out.read_text()) == yaml.safe_load(shipped_path.read_text())
    assert row["held_out_scale"] == 1.0 and row["held_out_error"] == pytest.approx(-0.2664, abs=1e-4)
    # a second case: the same decode at twice the measured time fits a scale of its own
    e2e = yaml.safe_load(E2E.read_text())
    (case,) = [c for c in e2e["cases"] if c.get("executor") == "accelerate"]
    e2e["cases"] = [case, {**case, "id": "slower", "time_s": 2 * case["time_s"]}]
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump(e2e))
    assert main([*argv[:2], str(two), *argv[3:]]) == 0
    a, b = json.loads(capsys.readouterr().out)["executor_profile"]["cases"]
    # one job measured twice: the joint fit predicts the geometric mean of the two times, and each
    # case held out is predicted at the other's time
    assert (a["fitted_error"], b["fitted_error"]) == (pytest.approx(2 ** 0.5 - 1, abs=1e-3), pytest.approx(2 ** -0.5 - 1, abs=1e-3))
    assert (a["held_out_error"], b["held_out_error"]) == (pytest.approx(1.0, abs=1e-3), pytest.approx(-0.5, abs=1e-3))


@pytest.mark.parametrize("name, msg", [
    ("missing.yaml", "-o missing.yaml: no executor profile 'missing' to refit"),
    ("hf-eager.yaml", "no case of the end-to-end file runs executor 'hf-eager' with offload: weights:cpu"),
])
def test_calibrate_end_to_end_alone_bad_input(shared, tmp_path, capsys, monkeypatch, name, msg):
    out = tmp_path / name
    if name == "hf-eager.yaml":
        shutil.copy(REPO_ROOT / "hardware_specs" / "profiles" / "executors" / name, out)
    before = out.read_text() if out.exists() else None
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", "--end-to-end", str(E2E), "--hardware", "h100-sxm", "-o", name]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
    assert (out.read_text() if out.exists() else None) == before


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
    capsys.readouterr()
    assert main(["calibrate", "--trace", str(TRAIN), "--hardware", "h100-sxm", "--end-to-end", str(E2E),
                 "-o", str(tmp_path / "y.yaml")]) == 2
    err = capsys.readouterr().err
    assert "--end-to-end" in err and "no trace has one" in err


@pytest.mark.parametrize("change, msg", [
    ({"time_s": 0.01}, "case fast: its copies would need more than 2 x the microbenchmarked rate; check its time_s"),
    ({"model": "nosuch"}, "case fast: unknown model 'nosuch'"),
])
def test_calibrate_copies_names_the_file_and_the_case(tmp_path, capsys, change, msg):
    case = {"id": "fast", "model": "llama-3.1-8b", "phase": "decode", "batch": 1, "context": 512, "offload": "weights:cpu",
            "host_memory": "pageable", "overlap": False, "executor": "accelerate", "time_s": 3.0}
    e2e = tmp_path / "e2e.yaml"
    e2e.write_text(yaml.safe_dump({"hardware": "h100-sxm", "cases": [case | change]}))
    assert main(["calibrate", "--end-to-end", str(e2e), "--hardware", "h100-sxm", "-o", str(tmp_path / "accelerate.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"roofplan: error: {e2e}: {msg}") and err.count("\n") == 1
    assert not (tmp_path / "accelerate.yaml").exists()
