"""The cuda side of `selfcheck`, checked without a GPU: the jobs fit the GPUs it is meant for,
the offload plan it asks for really splits the weights, the quick run stays small, and the device
name finds its spec. (The CUDA code paths themselves run only when a GPU is lent.)"""
from __future__ import annotations

import shutil

import pytest
import yaml

from simulator.core.models import load_model
from simulator.core.specs import load_gpu, specs_root
from simulator.core.units import GiB
from simulator.core.workload import Job
from simulator.executor import fits
from simulator.executor import measured_specs as ms
from simulator.executor.selfcheck import PLAN_RUNS, STEPS, jobs

HOST_ROWS = [
    {"kind": "env", "gpu": "NVIDIA H200", "device": "cuda", "threads": 16, "nproc": 16, "cpu": "Intel(R) Xeon(R) Processor",
     "meminfo": "MemTotal:       131981020 kB"},
    {"kind": "nvme", "op": "write", "bytes": 2**29, "time_s": 0.4, "block_bytes": 2**24, "method": "O_DIRECT", "fs": "ext4"},
    {"kind": "nvme", "op": "read", "bytes": 2**29, "time_s": 0.5, "block_bytes": 2**24, "method": "O_DIRECT", "fs": "ext4"},
    {"kind": "cpu", "op": "copy", "bytes": 2**28, "time_s": 6.7e-3, "GBps_rw": 80.2},
    {"kind": "cpu", "op": "sgemm", "n": 2048, "time_s": 1.3e-2, "tflops": 1.27},
    {"kind": "cpu", "op": "attention", "kv_bytes": 2**26, "time_s": 1e-3, "GBps": 67.1},
]


def _job(j) -> Job:
    return Job(phase=j.phase, batch=j.batch, seq=j.seq, context=j.context, dtype=j.dtype, recompute=j.recompute,
               lora_rank=j.lora_rank)


@pytest.mark.parametrize("budget", ["quick", "full"])
@pytest.mark.parametrize("gpu", ["h200", "h100-sxm"])
def test_cuda_jobs_fit_the_device(budget, gpu):
    """What the executor allocates (executor/fits.py) fits in the device's memory with room to spare."""
    free = load_gpu(gpu).mem_bytes * 0.9
    for j in jobs("cuda", budget):
        if j.plan:
            continue
        need = fits.run_memory(load_model(j.model_arg()), _job(j), "cuda")
        assert need.device_bytes < free, (j.id, need.device_bytes / GiB)


@pytest.mark.parametrize("budget", ["quick", "full"])
def test_cuda_offload_plan_splits_the_weights(tmp_path, monkeypatch, budget):
    """The plan the cuda selfcheck asks for, on an H200 node built as the selfcheck builds it
    (host CPU, RAM and disk from microbenchmarks), keeps part of the weights on the host."""
    from planners.offload import OffloadRequest, plan_offload
    from simulator.core.profiles import load_executor_profile, load_kernel_profile
    from simulator.core.specs import load_hardware
    hw = tmp_path / "hw"
    shutil.copytree(specs_root(), hw)
    for folder, spec in (("cpus", ms.host_cpu_spec(HOST_ROWS, "selfcheck-host-cpu")),
                         ("nvme", ms.nvme_spec(HOST_ROWS, "selfcheck-nvme", 50e9)),
                         ("systems", ms.system_spec(HOST_ROWS, "h200-selfcheck", "h200", "pcie-gen5-x16",
                                                    "selfcheck-host-cpu", "selfcheck-nvme"))):
        (hw / folder / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.setenv("ROOFPLAN_HW_DIR", str(hw))
    system = load_hardware("h200-selfcheck")
    j = next(j for j in jobs("cuda", budget) if j.plan)
    p = j.plan
    req = OffloadRequest(phase=j.phase, prompt_len=p.prompt_len, gen_len=p.gen_len, batch=p.batch, dtype=j.dtype,
                         gpu_mem_bytes=p.gpu_memory_GiB * GiB)
    plan = plan_offload(load_model(j.model_arg()), system, req, load_executor_profile("default"),
                        load_kernel_profile("h200")).as_dict()
    w = plan["placement"]["weights"]
    assert 0.2 < w["gpu"] < 0.8 and w["cpu"] > 0.2
    assert plan["schedule"]["block_size"] == p.batch
    # the quick plan's runs take seconds, not minutes
    assert (PLAN_RUNS + 2) * plan["predicted"]["time_s"] < (30 if budget == "quick" else 120)


def test_quick_cuda_jobs_take_seconds_on_an_h200():
    """Warm-up, timed and traced steps of every run job, predicted with the carried H100 curves:
    a few seconds, far inside the 8-minute budget of the quick selfcheck (the microbenchmarks,
    model builds and trace exports take the rest)."""
    from simulator.core.predict import predict
    from simulator.core.specs import load_hardware
    system = load_hardware("h200")
    total = sum((STEPS + 3 + 2) * predict(load_model(j.model_arg()), system, _job(j), check_memory=False).time_s
                for j in jobs("cuda", "quick") if not j.plan)
    assert total < 30


@pytest.mark.parametrize("device, spec", [("NVIDIA H200", "h200"), ("NVIDIA H100 80GB HBM3", "h100-sxm"),
                                          ("NVIDIA A100-SXM4-40GB", "a100-sxm-40gb")])
def test_the_device_name_finds_its_spec(device, spec):
    from simulator.cli.selfcheck import _gpu_spec_name
    assert _gpu_spec_name(device) == spec


def test_an_unknown_device_is_one_line():
    from simulator.cli.selfcheck import _gpu_spec_name
    from simulator.core.errors import RoofplanError
    with pytest.raises(RoofplanError, match=r"no GPU spec matches this device \(NVIDIA B299\); add hardware_specs/gpus"):
        _gpu_spec_name("NVIDIA B299")
