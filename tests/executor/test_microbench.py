"""Microbenchmark pieces that need no long run: the offload folder's write/read rates, the skip
record without a folder, and the specs of this machine derived from the rows (valid spec files).
The whole `microbench --device cpu --quick` runs in tests/selfcheck."""
from __future__ import annotations

from pathlib import Path

import pytest

from simulator.core.specs import parse_spec
from simulator.executor import measured_specs as ms

ROWS = [
    {"kind": "env", "gpu": "", "device": "cpu", "threads": 1, "nproc": 2, "cpu": "AMD EPYC 7B13",
     "meminfo": "MemTotal:       24684092 kB", "cpu_mhz": 2596.12, "l2_bytes": 2**20},
    {"kind": "gemm", "M": 256, "N": 256, "K": 256, "dtype": "fp32", "time_s": 1e-4, "tflops": 0.3355},
    {"kind": "gemm", "M": 64, "N": 64, "K": 64, "dtype": "bf16", "time_s": 1e-4, "tflops": 0.0052},
    {"kind": "copy", "src": "gpu", "dst": "gpu", "bytes": 2**26, "time_s": 3e-3},
    {"kind": "copy", "src": "cpu_pinned", "dst": "gpu", "bytes": 2**26, "time_s": 3e-3, "stand_in": "host memcpy"},
    {"kind": "nvme", "op": "write", "bytes": 2**26, "time_s": 0.04, "block_bytes": 2**24, "method": "O_DIRECT", "fs": "ext4"},
    {"kind": "nvme", "op": "read", "bytes": 2**26, "time_s": 0.05, "block_bytes": 2**24, "method": "O_DIRECT", "fs": "ext4"},
    {"kind": "cpu", "op": "copy", "bytes": 2**26, "time_s": 3e-3, "GBps_rw": 44.7},
    {"kind": "cpu", "op": "sgemm", "n": 512, "time_s": 2e-3, "tflops": 0.134},
    {"kind": "cpu", "op": "attention", "kv_bytes": 2**21, "time_s": 4e-5, "GBps": 52.4},
]


def test_specs_of_this_machine_are_valid_spec_files():
    """Each derived spec passes the same schema as the shipped files; the numbers are the
    measured ones (peaks and link bandwidth 2x the best measurement, the CPU's achieved rates)."""
    gpu = ms.device_spec(ROWS, "cpu-host", host_link="cpu-host-memcpy")
    kw = parse_spec("gpu", gpu, Path("cpu-host.yaml"))
    assert kw["peak_flops_by_dtype"]["fp32"] == pytest.approx(2 * 0.3355e12)
    assert kw["hbm_bw_Bps"] == pytest.approx(round(2 * 2 * 2**26 / 3e-3 / 1e9, 1) * 1e9)
    assert kw["mem_bytes"] == pytest.approx(24684092 * 1024, rel=1e-3)         # MemTotal
    assert (kw["sm_count"], kw["clock_hz"], kw["l2_bytes"], kw["tdp_w"]) == (2, 2596.1e6, 2**20, 0)   # read, not invented
    with pytest.raises(ValueError, match="the env record has no boost_clock_MHz, l2 of this machine"):
        ms.device_spec([{**ROWS[0], "cpu_mhz": None, "l2_bytes": None}, *ROWS[1:]], "cpu-host")
    link = parse_spec("link", ms.memcpy_link(ROWS, "cpu-host-memcpy"), Path("cpu-host-memcpy.yaml"))
    assert link["bw_Bps"] == pytest.approx(2 * 2**26 / 3e-3, rel=1e-3)
    cpu = parse_spec("cpu", ms.host_cpu_spec(ROWS, "host-cpu"), Path("host-cpu.yaml"))
    assert (cpu["mem_bw_Bps"], cpu["peak_flops_fp32"], cpu["attention_Bps"]) == pytest.approx((44.7e9, 0.134e12, 52.4e9))
    assert cpu["vendor"] == "amd" and cpu["cores"] == 2
    nvme = parse_spec("nvme", ms.nvme_spec(ROWS, "disk", 50e9), Path("disk.yaml"))
    assert nvme["read_Bps"] == pytest.approx(2**26 / 0.05, rel=1e-3) and nvme["capacity_bytes"] == 50e9
    sys_ = parse_spec("system", ms.system_spec(ROWS, "node", "cpu-host", "cpu-host-memcpy", "host-cpu", "disk"),
                      Path("node.yaml"))
    assert sys_["host_mem_bytes"] == pytest.approx(24684092 * 1024, rel=1e-3) and sys_["nvme"] == "disk"
    assert ms.nvme_spec([r for r in ROWS if r["kind"] != "nvme"], "disk", 1e9) is None


torch = pytest.importorskip("torch")


def test_nvme_rows_write_then_read_the_offload_folder(tmp_path):
    from simulator.executor.microbench import NVME_FILE, nvme_rows
    rows = nvme_rows(tmp_path / "offload", 2**24)
    assert [r["op"] for r in rows] == ["write", "read"]
    for r in rows:
        assert r["bytes"] == 2**24 and r["time_s"] > 0 and r["GBps"] == pytest.approx(r["bytes"] / r["time_s"] / 1e9)
        assert r["method"] in ("O_DIRECT", "buffered + fsync, page cache dropped before the read")
        assert r["dir"] == str(tmp_path / "offload")
    assert not (tmp_path / "offload" / NVME_FILE).exists()          # the test file is removed


def test_no_nvme_dir_is_a_skip_with_its_reason():
    from simulator.executor.microbench import nvme_rows
    assert nvme_rows(None, 2**24) == [{"kind": "skip", "what": "nvme",
                                       "reason": "no --nvme-dir given (the folder offloaded weights live in)"}]


def test_unknown_budget_and_missing_cuda_are_one_line(capsys):
    from simulator.cli.main import main
    if not torch.cuda.is_available():
        assert main(["microbench", "--device", "cuda", "-o", "x.jsonl"]) == 2
        assert "torch sees no CUDA device" in capsys.readouterr().err
    assert main(["microbench", "--quick", "--full", "-o", "x.jsonl"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
