"""`roofplan run` results say what really ran, not the request echoed; the ends of an offloaded
model (embedding, learned positions, norm, LM head) all go to the device. Needs torch (skips
without it)."""
from __future__ import annotations

import json

import pytest

from simulator.core.models import load_model
from simulator.core.paths import REPO_ROOT
from simulator.cli.main import main

torch = pytest.importorskip("torch")

TINY = str(REPO_ROOT / "tests" / "data" / "tiny-llama.json")
TINY_GPT2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 64, "n_head": 2, "n_layer": 2,
             "n_positions": 64, "vocab_size": 128, "activation_function": "gelu_new", "tie_word_embeddings": True}


def _run(capsys, *extra):
    argv = ["run", "--model", TINY, "--batch", "2", "--steps", "1", "--warmup", "0", "--format", "json", *extra]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_a_cpu_run_reports_no_graph_no_pinning_no_overlap(capsys):
    """On cpu nothing is pinned, nothing overlaps and no graph is captured, whatever the flags'
    defaults ask for (pinned, overlap, graph): the result says so, the request stays under
    `requested`."""
    r = _run(capsys, "--phase", "decode", "--context", "8", "--offload", "weights=cpu", "--dtype", "fp32")
    assert (r["device"], r["cuda_graph"], r["host_memory"], r["overlap"]) == ("cpu", False, "pageable", False)
    assert r["requested"]["host_memory"] == "pinned" and r["requested"]["overlap"] is True
    assert r["requested"]["cuda_graph"] is True
    assert r["threads"] == torch.get_num_threads() and r["dtype"] == r["weights_dtype"] == "fp32"


def test_a_cpu_training_step_reports_fp32_not_the_requested_bf16(capsys):
    r = _run(capsys, "--phase", "train", "--seq", "8", "--dtype", "bf16")
    assert r["requested"]["dtype"] == "bf16"
    assert (r["dtype"], r["weights_dtype"], r["autocast"]) == ("fp32", "fp32", False)
    assert (r["host_memory"], r["overlap"], r["offload_weights"]) == (None, None, "gpu")


def test_threads_flag_applies_and_is_reported(capsys):
    before = torch.get_num_threads()
    try:
        r = _run(capsys, "--phase", "prefill", "--seq", "8", "--threads", "1")
        assert r["threads"] == 1
    finally:
        torch.set_num_threads(before)
    assert main(["run", "--model", TINY, "--phase", "prefill", "--seq", "8", "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_the_table_says_how_the_step_ran(capsys):
    assert main(["run", "--model", TINY, "--phase", "decode", "--context", "8", "--offload", "weights=cpu", "--steps", "1",
                 "--warmup", "0", "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "eager launches, layer weights in pageable host memory, copied synchronously" in out


def test_offload_moves_learned_positions_to_the_device(tmp_path):
    """run.py's offload path moved embed, norm and lm_head but not `pos` (OPT/GPT-2 learned
    positions), so their first layer would have read host weights with device indices. The meta
    device stands in for a GPU: every tensor outside the layers lands there."""
    from simulator.executor.model import Decoder
    from simulator.executor.run import move_ends
    cfg_path = tmp_path / "tiny-gpt2.json"
    cfg_path.write_text(json.dumps(TINY_GPT2))
    cfg = load_model(str(cfg_path))
    assert cfg.learned_positions
    model = Decoder(cfg, 16)
    move_ends(model, torch.device("meta"))
    ends = [model.embed.weight, model.pos.weight, model.lm_head.weight, model.cos, model.sin,
            *model.norm.parameters()]
    assert all(t.device.type == "meta" for t in ends)
    assert all(p.device.type == "cpu" for p in model.layers.parameters())     # the layers stay for the streamer
