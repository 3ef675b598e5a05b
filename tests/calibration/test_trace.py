import gzip

import pandas as pd
import pytest

from simulator.core.errors import RoofplanError
from simulator.core.specs import load_gpu
from simulator.calibration.trace import check_device, classify_kernel, load_trace, op_flops_bytes

from calib_helpers import INFER, TRAIN, synthetic_events, write_trace, cached_trace


@pytest.mark.parametrize("old", [False, True])
def test_synthetic_trace_both_spellings(tmp_path, old):
    t = load_trace(write_trace(tmp_path / "t.json.gz", synthetic_events(old_spelling=old)))
    assert len(t.kernels) == 14
    assert list(t.segments["name"]) == ["ProfilerStep#0", "ProfilerStep#1"]
    by = t.by_class()
    assert by.loc["gemm", "kernels"] == 2 and by.loc["gemm", "time_s"] == pytest.approx(400e-6)
    assert by.loc["norm", "kernels"] == 12            # pow, mean, add, rsqrt, mul, mul per step
    stats = t.segment_stats()
    # 2 M N K of the linear counted once (not again for its inner aten::mm)
    assert stats["flops"].tolist() == [2.0 * 4096 * 1024 * 4096] * 2
    assert stats["kernel_time_s"].tolist() == pytest.approx([260e-6, 260e-6])


def test_flow_event_linking_without_external_id(tmp_path):
    d = synthetic_events()
    for e in d["traceEvents"]:
        if e.get("cat") == "kernel":
            corr = e["args"].pop("External id")
            launch = next(x for x in d["traceEvents"] if x.get("args", {}).get("External id") == corr and x["cat"] == "cpu_op")
            d["traceEvents"].append({"ph": "s", "cat": "ac2g", "id": corr, "tid": 1, "pid": 1, "ts": launch["ts"] + 1})
    t = load_trace(write_trace(tmp_path / "t.json", d, gz=False))
    assert list(t.kernels["op"][:2]) == ["aten::mm", "aten::pow"]
    assert t.by_class().loc["norm", "kernels"] == 12


def test_flops_from_shapes():
    f, b = op_flops_bytes("aten::addmm", {"Input Dims": [[4096], [16, 4096], [4096, 4096]], "Input type": ["float"] * 3})
    assert f == 2 * 16 * 4096 * 4096 and b == 4 * (16 * 4096 + 4096 * 4096 + 16 * 4096)
    f, _ = op_flops_bytes("aten::bmm", {"Input Dims": [[8, 64, 128], [8, 128, 32]]})
    assert f == 2 * 8 * 64 * 128 * 32
    sdpa = {"Input Dims": [[16, 32, 512, 128], [16, 8, 512, 128], [16, 8, 512, 128], []],
            "Concrete Inputs": ["", "", "", "", "0.", "True", "0.088", "True"]}
    assert op_flops_bytes("aten::scaled_dot_product_attention", sdpa)[0] == 2 * 16 * 32 * 512 * 512 * 128


def test_classify_kernels():
    assert classify_kernel("nvjet_sm90_tst_64x16_64x16_2x1_v_bz_TNT") == "gemm"
    assert classify_kernel("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16") == "attention"
    assert classify_kernel("ncclDevKernel_AllReduce_Sum_bf16_RING_LL") == "communication"
    assert classify_kernel("void at::native::multi_tensor_apply_kernel<...FusedAdamMathFunctor>") == "optimizer"
    assert classify_kernel("void at::native::cunn_SoftMaxForward<4, float>") == "loss"
    assert classify_kernel("void at::native::vectorized_elementwise_kernel<4, pow>", "aten::pow") == "norm"
    assert classify_kernel("void at::native::vectorized_elementwise_kernel<8, silu>", "aten::silu") == "elementwise"


def test_shared_inference_trace(shared):
    t = cached_trace(INFER)
    assert t.device_name == "NVIDIA H100 80GB HBM3"
    assert len(t.kernels) == 2954 and (t.kernels["op"] != "").all()
    st = t.segment_stats().set_index("segment")
    assert list(st.index) == ["prefill#0", "decode#1"]
    # prefill 16 x 512: 224 ms of kernels over a 238 ms GPU span; 2 x 8.03e9 params x 8192 tokens + attention
    assert st.at["prefill#0", "kernel_time_s"] == pytest.approx(0.2242, rel=1e-3)
    assert st.at["prefill#0", "gpu_span_s"] == pytest.approx(0.2379, rel=1e-3)
    assert st.at["prefill#0", "flops"] == pytest.approx(1.1547e14, rel=1e-3)
    assert st.at["decode#1", "kernels"] == 1461 and st.at["decode#1", "kernel_time_s"] == pytest.approx(0.01005, rel=1e-2)
    pre = t.by_class("prefill#0")
    assert pre.loc["gemm", "share"] == pytest.approx(0.648, abs=0.005)
    assert pre.loc["norm", "kernels"] == 32 * 2 * 8 + 8     # eager RMSNorm: 8 kernels, 2 per layer + final
    assert pre.loc["attention", "kernels"] == 32


def test_shared_training_trace(shared):
    t = cached_trace(TRAIN)
    assert list(t.segments["phase"]) == ["train"]
    assert t.kernel_time_s == pytest.approx(0.1992, rel=1e-3)
    by = t.by_class()
    assert by.loc["gemm", "time_s"] == pytest.approx(0.0764, rel=1e-2)
    assert by.loc["optimizer", "time_s"] == pytest.approx(0.0128, rel=1e-2)
    # 6 x params x tokens: fwd FLOPs from shapes of 1.236e9 params (plus attention) x 8192 tokens x 3
    assert t.segment_stats()["flops"][0] == pytest.approx(6.18e13, rel=1e-2)


def test_device_mismatch(shared):
    t = cached_trace(INFER)
    check_device(t, load_gpu("h100-sxm"))
    with pytest.raises(RoofplanError, match="hardware = a100-sxm-80gb: trace .* was recorded on NVIDIA H100 80GB HBM3; use h100-sxm"):
        check_device(t, load_gpu("a100-sxm-80gb"))
    with pytest.raises(RoofplanError, match="hardware = h100-pcie: "):
        check_device(t, load_gpu("h100-pcie"))


def test_device_names_of_other_gpus(tmp_path):
    d = synthetic_events(device="NVIDIA A100-SXM4-80GB")
    t = load_trace(write_trace(tmp_path / "a.json.gz", d))
    check_device(t, load_gpu("a100-sxm-80gb"))
    with pytest.raises(RoofplanError, match="use a100-sxm-80gb$"):
        check_device(t, load_gpu("h100-sxm"))
    with pytest.raises(RoofplanError, match="hardware = a100-sxm-40gb: "):
        check_device(t, load_gpu("a100-sxm-40gb"))


def test_bad_traces(tmp_path):
    full = gzip.compress(b'{"traceEvents": [' + b'{"ph": "X", "cat": "kernel", "name": "k", "ts": 1, "dur": 2},' * 500 + b"{}]}")
    (tmp_path / "trunc.json.gz").write_bytes(full[: len(full) // 2])
    (tmp_path / "trunc.json").write_text('{"traceEvents": [{"ph": "X", "cat": "kern')
    (tmp_path / "empty.json").write_text('{"traceEvents": []}')
    (tmp_path / "cpuonly.json").write_text('{"deviceProperties": [{"name": "NVIDIA H100 80GB HBM3"}], '
                                           '"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 1, "dur": 2}]}')
    (tmp_path / "notrace.json").write_text('{"foo": 1}')
    for name, msg in (("trunc.json.gz", "truncated or corrupt gzip"), ("trunc.json", "not valid JSON"),
                      ("empty.json", "no events"), ("cpuonly.json", "1 events but no GPU kernels"),
                      ("notrace.json", "no 'traceEvents' list"), ("missing.json", "cannot read")):
        with pytest.raises(RoofplanError, match=msg) as e:
            load_trace(tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value)


def test_pick_segment(tmp_path, shared):
    from simulator.calibration.validate import pick_segment
    t = load_trace(write_trace(tmp_path / "t.json.gz", synthetic_events()))
    assert pick_segment(t, "prefill") == "ProfilerStep#1"
    assert pick_segment(t, "decode", "ProfilerStep#0") == "ProfilerStep#0"
    with pytest.raises(RoofplanError, match="has no segment 'x'; it has ProfilerStep#0, ProfilerStep#1"):
        pick_segment(t, "decode", "x")
    hf = cached_trace(INFER)
    assert pick_segment(hf, "decode") == "decode#1" and pick_segment(hf, "prefill") == "prefill#0"
    with pytest.raises(RoofplanError, match="has no train segment"):
        pick_segment(hf, "train")


def test_norm_backward_kernels_are_norm(shared):
    """The eager RMSNorm's backward (Pow/Mean/Rsqrt/Mul/ToCopy backward nodes, linked to the
    forward ops by the profiler's sequence numbers) is `norm`, as ops.py counts it. Forward: 33
    norms (16 layers x 2 + final) of 6 kernels each with the fp32 residual of autocast training
    (no casts: pow, mean, add, rsqrt, mul, mul); backward: 16 more per norm (Pow 4, Mean 1,
    Rsqrt 3, Mul 8, read off the trace's autograd nodes)."""
    t = cached_trace(TRAIN)
    k = t.kernels
    names, parent = t.cpu_ops["name"].tolist(), t.cpu_ops["parent"].tolist()

    def in_backward(i):
        while i is not None and i >= 0:
            if names[i].startswith("autograd::engine::evaluate_function"):
                return True
            i = parent[i]
        return False
    bwd = [in_backward(int(i)) for i in k["op_index"]]
    norm = k["cls"] == "norm"
    assert int((norm & ~pd.Series(bwd)).sum()) == 33 * 6
    assert int((norm & pd.Series(bwd)).sum()) == 33 * 16 - 1     # one Rsqrt backward kernel is a fused mul


def test_stream_gap_from_gpu_bound_segments(shared):
    """Back-to-back kernels of HF's eager stream leave ~1.5 us between them in both traces (their
    GPU-bound segments: prefill 16 x 512 and the training step); the decode step waits for the
    host and is not used."""
    from simulator.calibration.trace_fit import fit_stream_gap
    gap_infer, ev = fit_stream_gap([cached_trace(INFER)])
    assert [s["segment"] for s in ev["segments"]] == ["prefill#0"]
    gap_train, _ = fit_stream_gap([cached_trace(TRAIN)])
    assert gap_infer == pytest.approx(1.50e-6, abs=0.02e-6) and gap_train == pytest.approx(1.54e-6, abs=0.02e-6)
