"""The shipped H100 kernel profile reproduces the microbenchmarks it was fitted to; a refit on part
of them predicts the rest."""
from pathlib import Path

import numpy as np
import pytest

from simulator.calibration.calibrate import fit_kernel_profile, read_microbench
from simulator.core.errors import RoofplanError
from simulator.core.profiles import load_kernel_profile, parse_kernel_profile
from simulator.core.roofline import attn_prefill_time, gemm_time
from simulator.core.specs import load_gpu, load_link


def test_shipped_profile_reproduces_gemms(h100_dir):
    rows = [r for r in read_microbench(h100_dir / "microbench.jsonl") if r["kind"] == "gemm" and r["dtype"] == "bf16"]
    errs = np.abs(_gemm_bf16_errors(rows, load_gpu("h100-sxm"), load_kernel_profile("h100-sxm")))
    assert np.mean(errs) < 0.05 and max(errs) < 0.25


def test_flash_attention_fit(h100_dir):
    rows = [r for r in read_microbench(h100_dir / "microbench.jsonl") if r["kind"] == "attn_prefill"]
    g, kp = load_gpu("h100-sxm"), load_kernel_profile("h100-sxm")
    for r in rows:
        F = 2 * r["B"] * r["Hq"] * r["S"] ** 2 * r["D"]
        assert float(attn_prefill_time(F, r["S"], g.peak_flops("bf16"), kp)) == pytest.approx(r["time_s"], rel=0.08)


def _gemm_bf16_errors(rows, g, kp):
    out = []
    for r in rows:
        F = 2 * r["M"] * r["N"] * r["K"]
        B = 2 * (r["M"] * r["K"] + r["K"] * r["N"] + r["M"] * r["N"])
        t, _ = gemm_time(F, B, g.peak_flops("bf16"), g.hbm_bw_Bps, kp.gemm["bf16"])
        out.append(float(t) / r["time_s"] - 1)
    return np.array(out)


def test_refit_predicts_held_out_measurements(h100_dir):
    """Fit without Llama-3.1-8B's GEMM shapes and without the largest pinned host-to-device copy,
    then predict those raw measurements."""
    rows = read_microbench(h100_dir / "microbench.jsonl")
    held_gemm = [r for r in rows if r["kind"] == "gemm" and r["dtype"] == "bf16"
                 and str(r.get("tag", "")).startswith("llama-3.1-8b:")]
    pinned = [r for r in rows if r["kind"] == "copy" and r["src"] == "cpu_pinned" and r["dst"] == "gpu"]
    held_copy = max(pinned, key=lambda r: r["bytes"])
    held = {id(r) for r in held_gemm} | {id(held_copy)}
    assert len(held_gemm) == 32 and held_copy["bytes"] == 2**30
    g = load_gpu("h100-sxm")
    link = load_link(g.host_link)
    prof, errs = fit_kernel_profile([r for r in rows if id(r) not in held], g, link, "held-out test")
    kp = parse_kernel_profile(prof, Path("held-out.yaml"))
    # a do_bench median repeats to ~1-2%, but cuBLAS picks tiles per shape and wave quantisation
    # on 132 SMs moves neighbouring shapes by several percent, which no smooth efficiency curve
    # follows: unseen shapes are held to the bound the shipped fit meets on its own data (5% mean,
    # 25% worst, test_shipped_profile_reproduces_gemms)
    e = np.abs(_gemm_bf16_errors(held_gemm, g, kp))
    assert errs["gemm.bf16"] < 0.05
    assert np.mean(e) < 0.05 and np.max(e) < 0.25
    # the 1 GiB pinned copy from a latency + bandwidth fit on copies of 1-256 MiB: the two largest
    # measured sizes differ by 0.26% in throughput, so 1% covers the measurement
    eff = prof["copy"]["h2d_pinned_efficiency"]
    predicted = prof["copy"]["latency_us"] * 1e-6 + held_copy["bytes"] / (link.bw_Bps * eff)
    assert predicted == pytest.approx(held_copy["time_s"], rel=0.01)
    # PCI-SIG: gen5 x16 is 63 GB/s per direction; pinned copies reach 85-90% of it (55 GB/s here)
    assert 0.85 < eff < 0.9


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
