"""`roofplan predict` with --spec-* and --prefix-hit: JSON fields, and one line with exit 2 for
bad input."""
from __future__ import annotations

import json

import pytest

from simulator.cli.main import main

BASE = ["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm"]


def run(capsys, *args):
    rc = main([*BASE, *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_spec_json(capsys):
    rc, out, _ = run(capsys, "--phase", "decode", "--context", "1000", "--spec-tokens", "4", "--spec-acceptance",
                     "0.8", "--draft-model", "llama-3.2-1b", "--format", "json")
    assert rc == 0
    d = json.loads(out)
    assert d["spec_tokens_per_step"] == pytest.approx(3.3616)
    assert d["tokens_per_s"] == pytest.approx(d["spec_tokens_per_step"] / d["time_s"])
    assert d["spec_draft"] == "llama-3.2-1b" and d["spec_speedup"] > 1


def test_prefix_json(capsys):
    rc, out, _ = run(capsys, "--phase", "prefill", "--seq", "1000", "--prefix-hit", "0.5", "--format", "json")
    d = json.loads(out)
    assert rc == 0 and d["prefix_cached_tokens"] == 500 and d["prefix_computed_tokens"] == 500


@pytest.mark.parametrize("args, message", [
    (["--phase", "decode", "--spec-tokens", "4", "--spec-acceptance", "1.5"], "--spec-acceptance 1.5: must be"),
    (["--phase", "decode", "--spec-tokens", "4", "--spec-acceptance", "0"], "--spec-acceptance 0.0: must be"),
    (["--phase", "decode", "--spec-tokens", "0", "--spec-acceptance", "0.5"], "--spec-acceptance needs --spec-tokens"),
    (["--phase", "decode", "--spec-tokens", "1000", "--spec-acceptance", "0.5"], "--spec-tokens 1000: must be"),
    (["--phase", "decode", "--spec-tokens", "-2", "--spec-acceptance", "0.5"], "--spec-tokens -2: must be"),
    (["--phase", "decode", "--spec-tokens", "4"], "--spec-tokens needs --spec-acceptance"),
    (["--phase", "prefill", "--seq", "64", "--spec-tokens", "4", "--spec-acceptance", "0.5"],
     "--spec-tokens 4: applies to phase decode only"),
    (["--phase", "train", "--seq", "64", "--spec-tokens", "4", "--spec-acceptance", "0.5"],
     "--spec-tokens 4: applies to phase decode only"),
    (["--phase", "decode", "--spec-tokens", "4", "--spec-acceptance", "0.5", "--draft-model", "llama-3.1-70b"],
     "--draft-model llama-3.1-70b: has 70.6B parameters, not fewer"),
    (["--phase", "decode", "--spec-tokens", "4", "--spec-acceptance", "0.5", "--draft-model", "llama-2-7b"],
     "--draft-model llama-2-7b: has a vocabulary of 32,000 tokens"),
    (["--phase", "decode", "--context", "131070", "--spec-tokens", "4", "--spec-acceptance", "0.5"],
     "--context 131070: a sequence of 131075 tokens exceeds"),
    (["--phase", "prefill", "--seq", "64", "--prefix-hit", "1"], "--prefix-hit 1.0: must be a share in [0, 1)"),
    (["--phase", "prefill", "--seq", "64", "--prefix-hit", "-0.5"], "--prefix-hit -0.5: must be"),
    (["--phase", "decode", "--prefix-hit", "0.5"], "--prefix-hit 0.5: applies to phase prefill only"),
])
def test_bad_input_one_line_exit_2(capsys, args, message):
    rc, _, err = run(capsys, *args)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
