"""`calibrate --microbench` invents no figure: a figure the file cannot give is refused in one
line naming it (and what a skip record says), or taken from --fallback-profile and named in the
written profile's source; the shipped H100 kernel profile is what the shared microbenchmarks
regenerate, except eager_slowdown (fitted to a trace, not to microbenchmarks)."""
from __future__ import annotations

import json

import pytest
import yaml

from simulator.calibration.calibrate import FIGURES, _elementwise_bytes, _norm_bytes
from simulator.cli.main import main
from simulator.core.paths import REPO_ROOT

SHIPPED = REPO_ROOT / "hardware_specs" / "profiles" / "kernels" / "h100-sxm.yaml"


def _rows(h100_dir):
    return [json.loads(line) for line in (h100_dir / "microbench.jsonl").read_text().splitlines() if line.strip()]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _calibrate(capsys, mb, out, *extra):
    code = main(["calibrate", "--microbench", str(mb), "--hardware", "h100-sxm", "-o", str(out), "--format", "json", *extra])
    return code, capsys.readouterr()


def test_regenerating_the_h100_profile_reproduces_the_shipped_one(h100_dir, tmp_path, capsys):
    """Every number of hardware_specs/profiles/kernels/h100-sxm.yaml comes back from
    measurements/h100-sxm/microbench.jsonl, except elementwise.eager_slowdown: memory-bound
    kernels inside the model vs the microbenchmarks, from the HF inference trace (its `source`
    says so); a microbenchmark-only profile leaves it out (1.0)."""
    out = tmp_path / "h100-sxm.yaml"
    code, _ = _calibrate(capsys, h100_dir / "microbench.jsonl", out)
    assert code == 0
    new, shipped = yaml.safe_load(out.read_text()), yaml.safe_load(SHIPPED.read_text())
    assert shipped["elementwise"].pop("eager_slowdown") == 1.244 and "eager_slowdown" not in new["elementwise"]
    assert "eager_slowdown: measured/predicted time of memory-bound kernels" in shipped.pop("source")
    assert new.pop("source").startswith("fitted by `roofplan calibrate --microbench microbench.jsonl")
    assert new == shipped


def test_missing_copies_are_refused_naming_each_figure(h100_dir, tmp_path, capsys):
    rows = [r for r in _rows(h100_dir) if not (r["kind"] == "copy" and "cpu" in r["src"] + r["dst"])]
    rows.append({"kind": "skip", "what": "copy h2d/d2h", "reason": "no CUDA device"})
    out = tmp_path / "k.yaml"
    code, io = _calibrate(capsys, _write(tmp_path / "mb.jsonl", rows), out)
    assert code == 2 and not out.exists() and io.err.count("\n") == 1
    for fig in ("copy.h2d_pinned_efficiency", "copy.d2h_pinned_efficiency", "copy.h2d_pageable_GBps",
                "copy.d2h_pageable_GBps", "copy.latency_us"):
        assert fig in io.err
    assert "skipped: copy h2d/d2h: no CUDA device" in io.err and "--fallback-profile" in io.err
    assert "0.85" not in io.err and "attention" not in io.err       # only what is missing


def test_fallback_profile_fills_the_missing_figures_and_says_so(h100_dir, tmp_path, capsys):
    rows = [r for r in _rows(h100_dir) if not (r["kind"] == "copy" and "pageable" in r["src"] + r["dst"])
            and r.get("op") != "adamw_foreach"]
    fb = yaml.safe_load((REPO_ROOT / "hardware_specs" / "profiles" / "kernels" / "t4.yaml").read_text())
    out = tmp_path / "k.yaml"
    code, _ = _calibrate(capsys, _write(tmp_path / "mb.jsonl", rows), out, "--fallback-profile", "t4")
    assert code == 0
    prof = yaml.safe_load(out.read_text())
    for key in ("h2d_pageable_GBps", "d2h_pageable_GBps"):
        assert prof["copy"][key] == fb["copy"][key]
    assert prof["cpu"]["adam_params_per_s"] == fb["cpu"]["adam_params_per_s"]
    shipped = yaml.safe_load(SHIPPED.read_text())
    assert prof["copy"]["h2d_pinned_efficiency"] == shipped["copy"]["h2d_pinned_efficiency"]   # measured, kept
    src = prof["source"]
    assert "--fallback-profile t4`" in src and "Taken from kernel profile t4 (--fallback-profile), not measured here" in src
    for fig in ("copy.h2d_pageable_GBps", "copy.d2h_pageable_GBps", "cpu.adam_params_per_s"):
        assert fig in src
    assert "copy.h2d_pinned_efficiency" not in src


@pytest.mark.parametrize("argv, says", [
    (["--fallback-profile", "h10-sxm"], "--fallback-profile h10-sxm: no kernel profile of that name (did you mean: h100-sxm?)"),
    (["--fallback-profile", "missing.yaml"], "--fallback-profile missing.yaml: file not found"),
])
def test_bad_fallback_is_one_line(h100_dir, tmp_path, capsys, argv, says):
    code, io = _calibrate(capsys, h100_dir / "microbench.jsonl", tmp_path / "k.yaml", *argv)
    assert code == 2 and says in io.err and io.err.count("\n") == 1


def test_fallback_needs_microbench(capsys):
    assert main(["calibrate", "--trace", "t.json", "--hardware", "h100-sxm", "-o", "x.yaml", "--fallback-profile", "t4"]) == 2
    assert "pass it with --microbench F" in capsys.readouterr().err


def test_a_copy_faster_than_the_host_link_is_refused(h100_dir, tmp_path, capsys):
    rows = _rows(h100_dir)
    for r in rows:
        if r["kind"] == "copy" and r["src"] == "cpu_pinned":
            r["time_s"] /= 3                       # 165 GB/s over a 63 GB/s PCIe gen5 x16 link
    code, io = _calibrate(capsys, _write(tmp_path / "mb.jsonl", rows), tmp_path / "k.yaml")
    assert code == 2 and "above the 63" in io.err and "host link pcie-gen5-x16" in io.err


def test_every_figure_names_rows_the_microbenchmark_writes():
    """FIGURES covers every profile field a microbenchmark can give (the shipped profile's fields
    less the GEMM curves, elementwise.eager_slowdown and the cpu fields that are not read)."""
    shipped = yaml.safe_load(SHIPPED.read_text())
    fields = {f"{s}.{f}" for s in ("attention_prefill", "attention_decode", "elementwise", "copy") for f in shipped[s]}
    covered = {f"{sec}.{f}" for _, sec, fs, _, _ in FIGURES for f in fs}
    assert fields - covered == {"elementwise.eager_slowdown"}
    assert "cpu.adam_params_per_s" in covered


def test_elementwise_traffic_follows_the_dtype():
    """As simulator.core.ops counts them: add 3 and SiLU*mul 5 accesses per element at the
    record's dtype; an eager RMSNorm of fp32 input has no casts (28 B, not 36)."""
    assert _elementwise_bytes({"op": "add", "T": 2, "H": 3, "dtype": "fp32"}) == 12 * 6
    assert _elementwise_bytes({"op": "silu_mul", "T": 2, "H": 3}) == 10 * 6
    assert _norm_bytes({"T": 2, "H": 3, "dtype": "fp32"}) == 28 * 6 and _norm_bytes({"T": 2, "H": 3}) == 36 * 6


def test_a_file_without_host_copies_names_them_and_a_fallback_fills_them(tmp_path, capsys):
    """tests/selfcheck/data/microbench-no-host-copies.jsonl: the kinds roofplan microbench wrote
    before it measured host copies and the host CPU (rows of the shared H100 file). Refused, then
    fitted with --fallback-profile h100-sxm, which the JSON lists and the source names."""
    mb = REPO_ROOT / "tests" / "selfcheck" / "data" / "microbench-no-host-copies.jsonl"
    out = tmp_path / "k.yaml"
    code, io = _calibrate(capsys, mb, out)
    assert code == 2 and not out.exists()
    assert io.err.startswith("roofplan: error: the microbenchmarks cannot give copy.h2d_pinned_efficiency (needs copy "
                             "cpu_pinned->gpu rows), ")
    code, io = _calibrate(capsys, mb, out, "--fallback-profile", "h100-sxm")
    assert code == 0
    taken = json.loads(io.out)["kernel_profile"]["from_fallback"]
    assert taken == ["copy.h2d_pinned_efficiency", "copy.d2h_pinned_efficiency", "copy.h2d_pageable_GBps",
                     "copy.d2h_pageable_GBps", "copy.latency_us", "cpu.adam_params_per_s"]
    prof, shipped = yaml.safe_load(out.read_text()), yaml.safe_load(SHIPPED.read_text())
    assert prof["copy"] == shipped["copy"] and prof["cpu"] == {"adam_params_per_s": shipped["cpu"]["adam_params_per_s"]}
    assert all(fig in prof["source"] for fig in taken)
