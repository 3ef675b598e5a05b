"""`roofplan run` refuses up front, in one line, what this machine cannot hold: the bytes the
executor will allocate (executor/fits.py) against the available host RAM and free device memory,
with the fixes that would work. The library tests need no torch; the CLI tests skip without it."""
from __future__ import annotations

import contextlib
import io
import os
import re
from types import SimpleNamespace

import pytest

from simulator.core.errors import FixError
from simulator.core.models import load_model
from simulator.core.paths import REPO_ROOT
from simulator.core.units import GiB
from simulator.core.workload import Job
from simulator.executor import fits

TINY = str(REPO_ROOT / "tests" / "data" / "tiny-llama.json")


def flags(e: FixError) -> str:
    from simulator.cli.main import flag_of
    return e.for_flags(flag_of)


def test_a_model_beyond_host_ram_is_refused_with_need_and_available():
    m = load_model("llama-3.1-70b")
    with pytest.raises(FixError) as e:
        fits.check_host_memory(m, Job("decode", batch=1, context=16), "cpu", available=64 * GiB)
    msg = flags(e.value)
    P, _ = fits.executor_params(m)
    assert f"needs at least {4 * P / GiB:.1f} GiB of host RAM" in msg and "64.0 GiB available" in msg
    assert "70.6 B parameters built in fp32, then bf16 weights" in msg
    assert msg.endswith("use a smaller model or a machine with more RAM") and "\n" not in msg


def test_the_fixes_named_are_the_ones_that_fit():
    """fp32 with a large KV cache: bf16 or a smaller batch/context would fit, and are named."""
    m = load_model(TINY)
    job = Job("decode", batch=64, context=4000, dtype="fp32")
    need = fits.run_memory(m, job, "cpu").host_bytes
    half = fits.run_memory(m, Job("decode", batch=64, context=4000, dtype="bf16"), "cpu").host_bytes
    assert need > half > fits.BUILD_BYTES * fits.executor_params(m)[0]       # the KV cache sets the peak
    with pytest.raises(FixError) as e:
        fits.check_host_memory(m, job, "cpu", available=(need + half) / 2)
    assert "use a smaller model, --dtype bf16, a smaller --batch or --context or a machine with more RAM" in flags(e.value)
    assert "dtype=bf16" in str(e.value)          # the library names fields; the CLI spells flags
    with pytest.raises(FixError) as e:           # not even bf16 fits: not offered
        fits.check_host_memory(m, job, "cpu", available=half / 2)
    assert "--dtype" not in flags(e.value)


def test_training_names_lora_when_it_fits():
    m = load_model("llama-3.1-8b")
    job = Job("train", batch=1, seq=512)
    need = fits.run_memory(m, job, "cpu").host_bytes
    P, _ = fits.executor_params(m)
    assert need == pytest.approx(16 * P)         # fp32 weights 4 + gradients 4 + AdamW 8 bytes per parameter
    with pytest.raises(FixError) as e:
        fits.check_host_memory(m, job, "cpu", available=64 * GiB)
    assert "--lora-rank 16" in flags(e.value) and "fp32 weights, gradients and AdamW states" in flags(e.value)


def test_a_run_that_fits_passes_and_unknown_ram_never_refuses(monkeypatch):
    m = load_model(TINY)
    job = Job("prefill", batch=2, seq=8)
    assert fits.check_host_memory(m, job, "cpu", available=64 * GiB).host_bytes < 64 * GiB
    monkeypatch.setattr(fits, "available_host_bytes", lambda: None)
    assert fits.check_host_memory(load_model("llama-3.1-405b"), job, "cpu").host_bytes > 1e12


def test_device_memory_is_checked_on_cuda_and_offload_offered():
    """A 70B model in bf16 on an 80 GB device: refused (the executor builds it there in fp32),
    with weight streaming named since the layers then stay on the host."""
    m = load_model("llama-3.1-70b")
    job = Job("decode", batch=8, context=2048)
    with pytest.raises(FixError) as e:
        fits.check_device_memory(m, job, "NVIDIA H100 80GB HBM3", free=79 * GiB, total=80 * GiB)
    msg = flags(e.value)
    assert "of device memory" in msg and "79.0 GiB free of 80.0 GiB" in msg and "--offload weights=cpu" in msg
    streamed = fits.run_memory(m, Job("decode", batch=8, context=2048, offload_weights="cpu"), "cuda")
    assert streamed.device_bytes < 20 * GiB and streamed.host_bytes >= 4 * fits.executor_params(m)[0]


def test_a_plan_run_is_checked_against_host_ram():
    """An OPT-175B plan on FlexGen's 208 GB box: the executor builds the whole model on the host in
    fp32 first (700 GB), whatever share the plan puts on NVMe, so it is refused before it starts."""
    m = load_model("opt-175b")
    plan = SimpleNamespace(phase="decode", gpu_batch_size=8, num_gpu_batches=1, dtype="fp16", max_len=544,
                           weights={"gpu": 0.02, "cpu": 0.63, "nvme": 0.35}, kv_tier="gpu")
    with pytest.raises(FixError) as e:
        fits.check_plan_memory(m, plan, "cuda", available=208e9)
    msg = str(e.value)
    assert "opt-175b plan (decode, 8 x 1 sequences) on cuda needs at least 652.8 GiB of host RAM" in msg
    assert "193.7 GiB available" in msg and "\n" not in msg


def test_available_host_ram_reads_proc_meminfo():
    avail = fits.available_host_bytes()
    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo here")
    total = float(re.search(r"MemTotal:\s+(\d+) kB", open("/proc/meminfo").read()).group(1)) * 1024
    assert 0 < avail <= total


# --- with torch: the CLI path and the parameter count of the real Decoder -----------------------


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def run_cli(argv) -> tuple[int, str]:
    from simulator.cli.main import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def test_cli_refuses_before_allocating(torch, monkeypatch):
    monkeypatch.setattr(fits, "available_host_bytes", lambda: 16 * GiB)
    code, err = run_cli(["run", "--model", "llama-3.1-8b", "--phase", "decode", "--batch", "8", "--context", "2048"])
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("roofplan: error: llama-3.1-8b decode on cpu needs at least 29.9 GiB of host RAM")
    assert "16.0 GiB available; use a smaller model or a machine with more RAM" in err


def test_cli_refuses_a_plan_run_beyond_host_ram(torch, monkeypatch, tmp_path):
    import json
    from simulator.cli.main import main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["plan", "offload", "--model", TINY, "--hardware", "h100-sxm-1x-128g", "--phase", "decode",
                     "--prompt-len", "8", "--gen-len", "3", "--batch", "2", "--format", "json"]) == 0
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(json.loads(buf.getvalue())))
    monkeypatch.setattr(fits, "available_host_bytes", lambda: 2.0**20)
    code, err = run_cli(["run", "--plan", str(plan), "--model", TINY])
    assert code == 2 and err.count("\n") == 1 and "of host RAM" in err and "1.0 MiB available" in err


@pytest.mark.parametrize("name", ["llama-3.1-8b", "llama-3.2-1b", "qwen2.5-0.5b", "opt-6.7b", "gpt2", TINY])
def test_parameter_count_is_the_decoders(torch, name):
    """executor_params and lora_params count what the Decoder and apply_lora allocate (built on
    the meta device: shapes only)."""
    from simulator.executor.model import Decoder, apply_lora
    m = load_model(name)
    with torch.device("meta"):
        dec = Decoder(m, 16)
    P, L = fits.executor_params(m)
    assert P == pytest.approx(sum(p.numel() for p in dec.parameters()), rel=1e-4)
    assert L == pytest.approx(sum(p.numel() for p in dec.layers.parameters()), rel=1e-4)
    with torch.device("meta"):
        adapters = apply_lora(dec, 8)
    assert fits.lora_params(m, 8) == sum(p.numel() for p in adapters)
    # LoRA on some linears only: the fused qkv and the down projection
    with torch.device("meta"):
        dec = Decoder(m, 16)
        adapters = apply_lora(dec, 8, "qkv,down_proj")
    qkv = (m.n_heads + 2 * m.n_kv_heads) * m.head_dim
    assert sum(p.numel() for p in adapters) == fits.lora_params(m, 8, "qkv,down") == \
        8 * m.n_layers * ((m.hidden + qkv) + (m.ffn_dim + m.hidden))
