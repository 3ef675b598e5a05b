"""The in-stream kernel fit (simulator.calibration.kernel_fit) on the shared H100 traces: each
constant against the traced kernels it comes from, and what it says about the microbenchmarks."""
import numpy as np
import pytest

from calib_helpers import INFER, TRAIN, cached_trace
from simulator.calibration import kernel_fit as kf
from simulator.core.profiles import load_executor_profile, load_kernel_profile
from simulator.core.specs import load_hardware

H100 = load_hardware("h100-sxm")
KP = load_kernel_profile("h100-sxm")


def test_floors_come_from_the_decode_step_where_every_small_kernel_is_tiny(shared):
    infer, train = cached_trace(INFER), cached_trace(TRAIN)
    floors, ev = kf.fit_kernel_floors([infer, train])
    assert ev["segments"] == ["decode#1 of trace_infer_llama-3.1-8b_B16_L512.json.gz"]
    # the decode step's norms are [16, 1, 4096]: all 520 kernels tiny, so the floor is their mean
    k = infer.kernels[(infer.kernels["segment"] == "decode#1") & (infer.kernels["cls"] == "norm")]
    assert len(k) == 520 and floors["norm"] == pytest.approx(k["dur_s"].mean(), rel=1e-9)
    assert floors["norm"] * 1e6 == pytest.approx(2.88, abs=0.01)
    # its elementwise kernels but the 64 KV-cache cats ([16, 8, 513, 128]: not tiny)
    assert ev["classes"]["elementwise"]["kernels"] == 522 - 64
    # an isolated, event-timed launch of one tiny kernel costs 4.9 us: more than either
    assert KP.kernel_overhead_s > 1.6 * max(floors.values())


def test_memory_bound_gemms_stream_flat_at_87_percent_of_hbm(shared):
    (overhead, eff), ev = kf.fit_gemm_in_stream([cached_trace(INFER), cached_trace(TRAIN)], H100, KP, 1.1571)
    assert ev["traces"] == ["trace_infer_llama-3.1-8b_B16_L512.json.gz"]   # training's dW GEMMs are others
    assert ev["calls"] == 226 and overhead * 1e6 == pytest.approx(5.13, abs=0.05) and eff == pytest.approx(0.871, abs=0.005)
    sizes = {round(x["MB"]): x for x in ev["sizes"]}
    assert set(sizes) == {9, 34, 118, 1055}       # k/v, q/o, MLP, LM head of Llama-3.1-8B at 16 tokens
    for x in sizes.values():
        assert x["fitted_us"] == pytest.approx(x["measured_us"], rel=0.07)
    # the microbenchmarked curve (L2 flushed, isolated, torch.matmul layout) is 20-30% slow below 120 MB
    for mb in (9, 34, 118):
        assert sizes[mb]["profile_us"] / sizes[mb]["measured_us"] - 1 > 0.18
    assert ev["fitted_s"] == pytest.approx(ev["measured_s"], rel=0.01)


def test_decode_attention_overhead(shared):
    over, ev = kf.fit_attn_decode_overhead([cached_trace(INFER)], H100, KP)
    assert ev["calls"] == 32 and ev["measured_us"] == pytest.approx(15.51, abs=0.01)
    assert over * 1e6 == pytest.approx(0.90, abs=0.05)      # the flash microbenchmark's: 10.9 us
    assert KP.attn_decode_overhead_s > 10 * over


def test_the_norm_scale_undoes_the_double_counted_in_model_slowdown(shared):
    """The eager RMSNorm microbenchmark (norm_slowdown) already runs the in-model kernel sequence,
    and the kernel profile puts eager_slowdown on top: the scale the traced prefill asks of the
    norms is that slowdown back, to 1%. The elementwise kernels (RoPE's strided cats and
    broadcasts) run slower than the profile."""
    ex = load_executor_profile("hf-eager")
    scales = dict(ex.memory_efficiency_scale)
    assert scales["norm"] == pytest.approx(KP.eager_slowdown, rel=0.01)
    assert 0.75 < scales["elementwise"] < 0.9


def test_the_shipped_profile_holds_what_the_fits_give(shared):
    infer, train = cached_trace(INFER), cached_trace(TRAIN)
    ex = load_executor_profile("hf-eager")
    floors, _ = kf.fit_kernel_floors([infer, train])
    assert {c: round(v * 1e6, 3) for c, v in floors.items()} == {c: round(v * 1e6, 3) for c, v in ex.kernel_overhead_s.items()}
    (overhead, eff), _ = kf.fit_gemm_in_stream([infer, train], H100, KP, ex.gemm_efficiency_scale)
    assert (round(overhead * 1e6, 3), round(eff, 4)) == (round(ex.gemm_overhead_s * 1e6, 3), ex.gemm_memory_efficiency)


def test_a_kv_cache_cat_streams_at_the_microbenchmarked_rate():
    """The decode KV append copies the whole cache, contiguously: neither the in-model slowdown
    nor the stack's elementwise scale applies (2 kernels, the floor each, bytes at the profile's
    curve)."""
    from simulator.core.models import load_model
    from simulator.core.ops import STREAMING, forward_ops
    from simulator.core.roofline import op_gpu_time_array
    from simulator.core.workload import Job
    ex = load_executor_profile("hf-eager")
    ops = forward_ops(load_model("llama-3.1-8b"), Job(phase="decode", batch=16, context=512), ex)
    kv = next(o for o in ops if o.name.endswith("kv_write"))
    assert kv.kind == STREAMING
    t, _ = op_gpu_time_array(kv, H100, KP, ex)
    ideal = kv.bytes / H100.gpu.hbm_bw_Bps
    assert t == pytest.approx(2 * (ex.kernel_overhead("elementwise", 0) + ex.stream_gap_s) + ideal / KP.memory(ideal))
    assert np.isclose(kv.bytes, 16 * 2 * 8 * 128 * 2 * (2 * 512 + 1) + 16 * 2 * 8 * 128 * 2)


IN_STREAM = ("kernel_overhead_us", "gemm_overhead_us", "gemm_memory_efficiency", "attn_decode_overhead_us",
             "memory_efficiency_scale")


def test_a_refit_from_the_training_trace_alone_keeps_the_in_stream_fields_and_their_source(shared, tmp_path, capsys):
    """The training trace has no small kernels, no memory-bound inference GEMMs, no decode
    attention and no prefill: the in-stream fields and the sentence saying where they came from
    stay as they were."""
    import shutil

    import yaml

    from simulator.cli.main import main
    from simulator.core.paths import REPO_ROOT
    out = tmp_path / "hf-eager.yaml"
    shutil.copy(REPO_ROOT / "hardware_specs" / "profiles" / "executors" / "hf-eager.yaml", out)
    before = yaml.safe_load(out.read_text())
    assert main(["calibrate", "--trace", str(TRAIN), "--hardware", "h100-sxm", "-o", str(out), "--format", "json"]) == 0
    capsys.readouterr()
    after = yaml.safe_load(out.read_text())
    assert {k: after[k] for k in IN_STREAM} == {k: before[k] for k in IN_STREAM}
    sentence = next(s for s in before["source"].split(". ") if s.startswith("In-stream kernels"))
    assert sentence in after["source"]
