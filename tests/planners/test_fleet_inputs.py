"""`plan fleet` on inputs that cannot give a trustworthy answer: an implausible fleet size is
warned about (one stderr line), an SLO no option meets says which binds (TTFT, TPOT or both), the
best a lone request gets per GPU type and how far to loosen, and a load beyond the solver's
numbers is refused instead of being called an inventory problem."""
import json
import re

import numpy as np
import pytest

from planners.fleet import PLAUSIBLE_FLEET_GPUS, unservable_buckets
from simulator.cli.main import main

BASE = {"--model": "llama-3.2-1b", "--workload": "chat", "--slo-ttft-ms": "500", "--slo-tpot-ms": "50",
        "--gpus": "l4,a10g", "--tp": "1"}


def fleet(capsys, **flags):
    argv = {**BASE, **{"--" + k.replace("_", "-"): str(v) for k, v in flags.items()}}
    code = main(["plan", "fleet", *[x for kv in argv.items() for x in kv], "--format", "json"])
    out, err = capsys.readouterr()
    return code, out, err


def test_an_implausible_fleet_is_warned_about_on_one_line(capsys):
    code, out, err = fleet(capsys, rate="1e9")
    assert code == 0
    gpus = sum(a["instances"] * a["tp"] for a in json.loads(out)["allocation"])
    assert gpus > PLAUSIBLE_FLEET_GPUS
    assert err.count("\n") == 1 and err.startswith("roofplan: warning:")
    assert f"{gpus:,} GPUs" in err and "--rate 1e+09 req/s (the workload file says 8)" in err


def test_a_plausible_fleet_is_silent(capsys):
    code, out, err = fleet(capsys, rate="64")
    assert code == 0 and err == ""
    assert sum(a["instances"] for a in json.loads(out)["allocation"]) < 100


def test_a_load_beyond_the_solver_is_refused_as_such(capsys):
    code, _, err = fleet(capsys, rate="1e13")
    assert code == 2 and err.count("\n") == 1
    assert "beyond the solver's numerical range; check the request rate" in err and "inventory" not in err


def _least(err: str, name: str) -> float:
    return float(re.search(rf"the {name} SLO to >= ([\d,.]+) ms", err).group(1).replace(",", ""))


@pytest.mark.parametrize("ttft,tpot,binding,met", [
    ("500", "0.5", ["TPOT"], "TTFT 500 ms is met"),
    ("5", "50", ["TTFT"], "TPOT 50 ms is met"),
    ("5", "0.5", ["TTFT", "TPOT"], None),
])
def test_an_infeasible_slo_names_what_binds_and_by_how_much(capsys, ttft, tpot, binding, met):
    code, _, err = fleet(capsys, slo_ttft_ms=ttft, slo_tpot_ms=tpot)
    assert code == 2 and err.count("\n") == 1
    assert "no GPU option meets the SLOs for requests of" in err and "not even for a lone request" in err
    asked = {"TTFT": float(ttft), "TPOT": float(tpot)}
    for name in ("TTFT", "TPOT"):
        assert (f"p90 {name} binds: {asked[name]:g} ms asked, best" in err) == (name in binding)
        if name in binding:
            assert _least(err, name) > asked[name]
            clause = re.search(rf"p90 {name} binds: [^(]*\(([^)]*)\)", err).group(1)
            assert re.fullmatch(r"l4 tp1 [\d.,]+ ms, a10g tp1 [\d.,]+ ms", clause), clause   # per GPU type
    if met:
        assert met in err


@pytest.mark.parametrize("name,ttft,tpot", [("TPOT", "500", "0.5"), ("TTFT", "5", "50")])
def test_loosening_to_the_reported_least_slo_serves_the_workload(capsys, name, ttft, tpot):
    """The least SLO the error names is a real edge: a little looser and a fleet exists."""
    _, _, err = fleet(capsys, slo_ttft_ms=ttft, slo_tpot_ms=tpot)
    loosened = f"{_least(err, name) * 1.05:.4g}"
    flags = {"slo_ttft_ms": loosened, "slo_tpot_ms": tpot} if name == "TTFT" else {"slo_ttft_ms": ttft, "slo_tpot_ms": loosened}
    code, out, _ = fleet(capsys, **flags)
    assert code == 0 and json.loads(out)["slo_attainment"] == 1.0


def test_a_request_no_kv_cache_holds_says_so(capsys, tmp_path):
    wl = tmp_path / "long.yaml"
    wl.write_text("source: test\nrequest_rate_rps: 1\ninput_tokens: {edges: [60000, 60001], shares: [1]}\n"
                  "output_tokens: {edges: [16, 17], shares: [1]}\n")
    code, _, err = fleet(capsys, model="llama-3.1-8b", workload=wl, gpus="l4", slo_ttft_ms="1e6", slo_tpot_ms="500")
    assert code == 2 and err.count("\n") == 1
    assert "no option gives a TPOT at all (one request (60016 tokens) exceeds the KV cache" in err
    assert "TTFT 1,000,000 ms is met" in err and "more memory (gpus) or higher TP degrees (tps)" in err


def test_unservable_buckets_needs_aggregated_or_both_pools():
    roles = ["aggregated", "prefill", "decode"]
    tput = np.array([[1.0, 0.0, 0.0],      # aggregated serves it
                     [0.0, 1.0, 1.0],      # a prefill and a decode pool serve it
                     [0.0, 1.0, 0.0],      # prefill only: nothing decodes it
                     [0.0, 0.0, 0.0]])     # nothing, but no requests either
    assert unservable_buckets(tput, np.array([1.0, 1.0, 1.0, 0.0]), roles) == [2]
