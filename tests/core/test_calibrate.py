"""The shipped H100 kernel profile reproduces the microbenchmarks it was fitted to."""

import numpy as np
import pytest

from simulator.calibration.calibrate import fit_kernel_profile, read_microbench
from simulator.core.errors import RoofplanError
from simulator.core.profiles import load_kernel_profile
from simulator.core.roofline import attn_prefill_time, gemm_time
from simulator.core.specs import load_gpu, load_link


def test_shipped_profile_reproduces_gemms(h100_dir):
    rows = [r for r in read_microbench(h100_dir / "microbench.jsonl") if r["kind"] == "gemm" and r["dtype"] == "bf16"]
    g, kp = load_gpu("h100-sxm"), load_kernel_profile("h100-sxm")
    errs = []
    for r in rows:
        F = 2 * r["M"] * r["N"] * r["K"]
        B = 2 * (r["M"] * r["K"] + r["K"] * r["N"] + r["M"] * r["N"])
        t, _ = gemm_time(F, B, g.peak_flops("bf16"), g.hbm_bw_Bps, kp.gemm["bf16"])
        errs.append(abs(float(t) / r["time_s"] - 1))
    assert np.mean(errs) < 0.05 and max(errs) < 0.25


def test_flash_attention_fit(h100_dir):
    rows = [r for r in read_microbench(h100_dir / "microbench.jsonl") if r["kind"] == "attn_prefill"]
    g, kp = load_gpu("h100-sxm"), load_kernel_profile("h100-sxm")
    for r in rows:
        F = 2 * r["B"] * r["Hq"] * r["S"] ** 2 * r["D"]
        assert float(attn_prefill_time(F, r["S"], g.peak_flops("bf16"), kp)) == pytest.approx(r["time_s"], rel=0.08)


def test_refit_matches_shipped(h100_dir):
    g = load_gpu("h100-sxm")
    prof, errs = fit_kernel_profile(read_microbench(h100_dir / "microbench.jsonl"), g, load_link(g.host_link), "test")
    assert errs["gemm.bf16"] < 0.05
    shipped = load_kernel_profile("h100-sxm")
    assert prof["copy"]["h2d_pinned_efficiency"] == pytest.approx(shipped.h2d_pinned_eff, rel=1e-3)
    # pinned H2D of 1 GiB: 55 GB/s measured on PCIe gen5 x16 (63 GB/s theoretical)
    assert 0.85 < prof["copy"]["h2d_pinned_efficiency"] < 0.9


def test_other_gpu_carries_reference_curves():
    kp = load_kernel_profile("a100-sxm-80gb")
    assert kp.fitted_on == "h100-sxm"


def test_bad_microbench(tmp_path):
    p = tmp_path / "mb.jsonl"
    p.write_text('{"kind": "gemm"}\n{oops\n')
    with pytest.raises(RoofplanError, match=r"mb.jsonl:2: malformed JSON"):
        read_microbench(p)
    p.write_text("")
    with pytest.raises(RoofplanError, match="no measurements"):
        read_microbench(p)
