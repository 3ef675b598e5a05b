"""`roofplan predict --chunk-tokens/--chunk-context`: the table line, the JSON fields, and one line
with exit 2 for bad input."""
from __future__ import annotations

import json

import pytest

from simulator.cli.main import main

BASE = ["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm"]


def run(capsys, *args):
    rc = main([*BASE, *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_chunk_json(capsys):
    rc, out, _ = run(capsys, "--phase", "decode", "--batch", "16", "--context", "4096", "--chunk-tokens", "512",
                     "--chunk-context", "1024", "--format", "json")
    assert rc == 0
    d = json.loads(out)
    assert d["chunk_tokens"] == 512 and d["chunk_context"] == 1024
    assert d["tokens_per_s"] == pytest.approx(16 / d["time_s"])
    assert d["chunk_added_time_s"] == pytest.approx(d["time_s"] - d["chunk_decode_alone_time_s"])
    assert 0 < d["chunk_added_time_s"] < d["time_s"]


def test_chunk_table(capsys):
    rc, out, _ = run(capsys, "--phase", "decode", "--batch", "16", "--context", "4096", "--chunk-tokens", "512",
                     "--format", "table")
    assert rc == 0
    assert "decode batch 16 context 4096 + prefill chunk 512 on h100-sxm" in out
    assert "chunked prefill: 512 prompt tokens of one more request share the forward" in out


@pytest.mark.parametrize("args, message", [
    (["--phase", "prefill", "--seq", "64", "--chunk-tokens", "8"], "--chunk-tokens 8: applies to phase decode only"),
    (["--phase", "train", "--seq", "64", "--chunk-tokens", "8"], "--chunk-tokens 8: applies to phase decode only"),
    (["--phase", "decode", "--chunk-tokens", "-1"], "--chunk-tokens -1: must be an integer >= 0"),
    (["--phase", "decode", "--chunk-tokens", "8", "--chunk-context", "-3"], "--chunk-context -3: must be an integer"),
    (["--phase", "decode", "--chunk-context", "8"], "--chunk-context 8: is the context of a prefill chunk"),
    (["--phase", "decode", "--chunk-tokens", "131000", "--chunk-context", "100"],
     "--chunk-tokens 131000: the chunk's request of 131100 tokens"),
    (["--phase", "decode", "--chunk-tokens", "8", "--spec-tokens", "2", "--spec-acceptance", "0.5"],
     "--chunk-tokens 8: a speculative step with a prefill chunk is not modelled"),
])
def test_bad_input_one_line_exit_2(capsys, args, message):
    rc, _, err = run(capsys, *args)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
