"""Sweep grids over quantization, prefix caching, chunked prefill and speculative decoding: every
row equals predict() / predict_speculative() of the same configuration (one cost model), bad
grids are one line, structural errors are the row's `error`, and old grids keep their fingerprint."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from simulator import sweep as sw
from simulator.cli.main import main
from simulator.core.errors import RoofplanError
from simulator.core.models import load_model
from simulator.core.paths import REPO_ROOT
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile, load_kernel_profile
from simulator.core.specs import load_hardware
from simulator.core.speculative import predict_speculative
from simulator.core.workload import Job

REL = 1e-9
EX = load_executor_profile("default")


def _grid(tmp_path, **grid):
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(grid))
    return str(p)


def _rows(grid) -> pd.DataFrame:
    groups = sw.parse_grid(grid)
    cache: dict = {}
    df = pd.concat([pd.DataFrame(sw.sweep_group(g, cache), columns=list(sw.RESULT_COLUMNS)) for g in groups],
                   ignore_index=True)
    assert len(df) == sw.count_rows(sw.check_grid(grid))
    return df


def _job(r) -> Job:
    """The Job of a result row, built from its columns (not from the sweep's Group)."""
    return Job(phase=r["phase"], batch=int(r["batch"]), seq=int(r["seq"]), context=int(r["context"]), dtype=r["dtype"],
               tp=int(r["tp"]), pp=int(r["pp"]), dp=int(r["dp"]), weight_dtype=r["weight_dtype"], kv_dtype=r["kv_dtype"],
               prefix_hit=float(r["prefix_hit"]), chunk_tokens=int(r["chunk_tokens"]),
               chunk_context=int(r["chunk_context"]), spec_tokens=int(r["spec_tokens"]),
               power_cap_w=None if r["power_cap_w"] != r["power_cap_w"] else float(r["power_cap_w"]))


def _reference(r):
    """predict() or predict_speculative() of a row's configuration (RoofplanError: its refusal)."""
    model, system = load_model(r["model"]), load_hardware(r["hardware"])
    kp = load_kernel_profile(system.gpu.name)
    job = _job(r)
    if job.spec_tokens:
        draft = load_model(r["draft_model"]) if isinstance(r["draft_model"], str) else None
        return predict_speculative(model, system, job, float(r["spec_acceptance"]), draft, EX, kp, check_memory=False,
                                   carbon_g_per_kwh=float(r["carbon_g_per_kwh"]))
    return predict(model, system, job, EX, kp, check_memory=False, carbon_g_per_kwh=float(r["carbon_g_per_kwh"]))


def _check_equal(df: pd.DataFrame) -> tuple[int, int]:
    """Every row against its scalar prediction: numbers to 1e-9, errors the same message."""
    ok = errors = 0
    for _, r in df.iterrows():
        try:
            p = _reference(r)
        except RoofplanError as e:
            assert r["error"], (dict(r), str(e))
            if not r["error"].startswith("sizes out of range"):
                assert r["error"] == str(e)
            errors += 1
            continue
        assert r["error"] == "", dict(r)
        assert r["time_s"] == pytest.approx(p.time_s, rel=REL)
        assert r["tokens_per_s"] == pytest.approx(p.tokens_per_s, rel=REL)
        assert r["peak_memory_bytes"] == pytest.approx(p.peak_memory_bytes, rel=REL)
        if r["spec_tokens"]:
            assert r["spec_tokens_per_step"] == pytest.approx(p.tokens_per_step, rel=REL)
            assert r["spec_speedup"] == pytest.approx(p.speedup, rel=REL)
            assert bool(r["fits"]) == (p.peak_memory_bytes <= load_hardware(r["hardware"]).gpu.mem_bytes)
            assert r["bound"] == p.verify.bound
            assert r["transfer_time_s"] == pytest.approx(p.verify.transfer_time_s, rel=REL, abs=1e-15)
            for k in sw.ENERGY_COLUMNS:      # the whole step: verification + K draft steps, over E tokens
                assert r[k] == pytest.approx(p.energy[k], rel=REL)
        else:
            assert np.isnan(r["spec_tokens_per_step"]) and np.isnan(r["spec_speedup"])
            assert bool(r["fits"]) == p.fits and r["bound"] == p.bound
            for k in sw.ENERGY_COLUMNS:
                assert r[k] == pytest.approx(getattr(p.energy, k), rel=REL)
        ok += 1
    return ok, errors


# quant x kv x spec x prefix x chunk, on a GPU with fp8 (H100, L40S) and one without (A100)
OPTIONS_GRID = {
    "model": "llama-3.1-8b", "phase": ["prefill", "decode"], "batch": [1, 24], "seq": [1000], "context": [0, 3000],
    "weight_dtype": ["bf16", "fp8", "int8", "int4"], "kv_dtype": [None, "fp8"], "prefix_hit": [0, 0.75],
    "chunk_tokens": [0, 512], "spec_tokens": [0, 3], "spec_acceptance": [0.6, 1.0],
    "draft_model": [None, "llama-3.2-1b"],
}


@pytest.mark.parametrize("hardware, tp", [("h100-sxm", 1), ("h100-sxm", 2), ("a100-sxm-80gb", 1), ("l40s", 1)])
def test_option_rows_equal_predict_and_predict_speculative(hardware, tp):
    df = _rows({**OPTIONS_GRID, "hardware": hardware, "tp": tp})
    # prefill: 4 weights x 2 KV x 2 prefix hits; decode: 4 x 2 x 2 chunks x (plain + 2 acceptances x 2 proposers)
    assert len(df) == 2 * (4 * 2 * 2) + 4 * (4 * 2 * 2 * 5)
    ok, errors = _check_equal(df)
    pre, dec = df[df["phase"] == "prefill"], df[df["phase"] == "decode"]
    assert set(pre["spec_tokens"]) == {0} and set(pre["chunk_tokens"]) == {0} and set(dec["prefix_hit"]) == {0.0}
    # a speculative step with a prefill chunk is refused, as predict() refuses it
    both = dec[(dec["spec_tokens"] > 0) & (dec["chunk_tokens"] > 0)]
    assert len(both) == 4 * 2 * 4 * 4 and both["error"].str.startswith("chunk_tokens = 512: a speculative step").all()
    fp8 = df["weight_dtype"] == "fp8"
    if hardware == "a100-sxm-80gb":     # no fp8 tensor cores: W8A8 is the rows' error, the sweep goes on
        fp8_only = fp8 & ~df.index.isin(both.index)    # (validate_job refuses the chunk first, as predict does)
        assert (df.loc[fp8_only, "error"] == "weight_dtype = fp8: a100-sxm-80gb has no fp8 tensor cores (W8A8 needs "
                "them); use int8 or int4 (weight-only), or a GPU with fp8 such as h100-sxm or l40s").all()
        assert errors == fp8_only.sum() + len(both)
    else:
        assert errors == len(both)
    assert ok == len(df) - errors and ok > 150


def test_speculative_rows_pay_at_batch_1_and_int4_reads_fewer_bytes():
    """EAGLE-style drafting at A = 0.8, K = 4 pays at batch 1 on an H100 (E = 3.36 tokens per
    step, Leviathan eq. 1), and int4 weights beat bf16 at batch 1, where the step reads the weights."""
    df = _rows({"hardware": "h100-sxm", "model": "llama-3.1-8b", "phase": "decode", "batch": 1, "context": 1024,
                "weight_dtype": ["bf16", "int4"], "spec_tokens": [0, 4], "spec_acceptance": 0.8})
    spec = df[df["spec_tokens"] == 4]
    assert spec["spec_tokens_per_step"].tolist() == pytest.approx([(1 - 0.8 ** 5) / (1 - 0.8)] * 2, rel=1e-12)
    assert (spec["spec_speedup"] > 1.5).all()
    plain = df[df["spec_tokens"] == 0].set_index("weight_dtype")
    assert plain.loc["int4", "time_s"] < plain.loc["bf16", "time_s"]


def test_draft_model_unsharded_when_tp_does_not_divide_its_heads(tmp_path):
    """predict_speculative runs a draft whose heads tp does not divide unsharded; the sweep too."""
    cfg = json.loads((REPO_ROOT / "workloads" / "models" / "llama-3.2-1b.json").read_text())
    cfg.update(num_attention_heads=12, num_key_value_heads=4, hidden_size=768, head_dim=64, intermediate_size=3072,
               num_hidden_layers=4)
    draft = tmp_path / "draft-12h" / "config.json"
    draft.parent.mkdir()
    draft.write_text(json.dumps(cfg))
    df = _rows({"hardware": "h100-sxm", "model": "llama-3.1-70b", "phase": "decode", "tp": [4, 8], "batch": [1, 64],
                "context": [2048], "spec_tokens": 5, "spec_acceptance": 0.7, "draft_model": str(draft)})
    assert _check_equal(df) == (4, 0)


def test_draft_of_another_vocabulary_and_spec_past_the_position_limit_are_row_errors():
    df = _rows({"hardware": "h100-sxm", "model": "qwen2.5-7b", "phase": "decode", "batch": 1,
                "context": [1000, 131072 - 3, 131072 - 2], "spec_tokens": 2, "spec_acceptance": 0.7,
                "draft_model": [None, "qwen2.5-0.5b"]})
    assert _check_equal(df) == (2, 4)
    head = df[df["draft_model"].isna()]
    assert head["error"].tolist() == ["", "", "sizes out of range for qwen2.5-7b with 2 speculative tokens "
                                      "(max 131072 tokens)"]
    vocab = df[df["draft_model"] == "qwen2.5-0.5b"]
    assert vocab["error"].str.contains("has a vocabulary of 151,936 tokens but qwen2.5-7b has 152,064").all()


def test_power_cap_with_speculative_rows():
    df = _rows({"hardware": "h100-sxm", "model": "llama-3.1-8b", "phase": "decode", "batch": [1, 128],
                "context": [4096], "power_cap_w": [560, 690], "spec_tokens": 3, "spec_acceptance": 0.8,
                "weight_dtype": ["bf16", "int4"]})
    ok, errors = _check_equal(df)      # a cap a step cannot hold: predict_speculative's refusal
    assert ok + errors == 8 and ok >= 4 and errors >= 1


def test_mixed_phase_grid_ignores_options_where_they_do_not_apply():
    """As seq is ignored by decode, prefix_hit is by decode and the decode options by prefill and
    train: their groups take the default (one row), and train ignores the quantization too."""
    grid = sw.check_grid({"hardware": "h100-sxm", "model": "llama-3.2-1b", "phase": ["prefill", "decode", "train"],
                          "batch": [1, 2], "seq": [256], "context": [256], "weight_dtype": ["bf16", "int4"],
                          "prefix_hit": [0, 0.5], "spec_tokens": [0, 2, 4], "spec_acceptance": [0.5, 0.9],
                          "chunk_tokens": [0, 64]})
    groups = sw.parse_grid(grid)
    by_phase = {ph: [g for g in groups if g.phase == ph] for ph in ("prefill", "decode", "train")}
    assert len(by_phase["prefill"]) == 2 * 2                    # weights x prefix
    assert len(by_phase["decode"]) == 2 * 2 * (1 + 2 * 2)       # weights x chunks x (plain + K x A)
    assert [g.options for g in by_phase["train"]] == [()]
    assert sw.count_rows(grid) == sum(g.size for g in groups) == 2 * (4 + 20 + 1)


@pytest.mark.parametrize("fields, message", [
    ({"spec_tokens": 4, "spec_acceptance": 1.5}, "field 'spec_acceptance[0]' must be <= 1 (got 1.5)"),
    ({"spec_tokens": 4, "spec_acceptance": [0.5, 0]}, "field 'spec_acceptance[1]' must be > 0 (got 0)"),
    ({"phase": "prefill", "seq": 100, "prefix_hit": 1.0}, "field 'prefix_hit[0]' must be < 1 (got 1.0)"),
    ({"phase": "prefill", "seq": 100, "prefix_hit": -0.1}, "field 'prefix_hit[0]' must be >= 0 (got -0.1)"),
    ({"phase": "prefill", "seq": 100, "spec_tokens": 4, "spec_acceptance": 0.7},
     "spec_tokens applies to phase decode and the grid's phase is prefill; add decode to phase or drop spec_tokens"),
    ({"phase": "decode", "prefix_hit": 0.5},
     "prefix_hit applies to phase prefill and the grid's phase is decode; add prefill to phase or drop prefix_hit"),
    ({"phase": "train", "seq": 128, "weight_dtype": "int4"},
     "weight_dtype applies to phase prefill and decode and the grid's phase is train; add prefill to phase or drop "
     "weight_dtype"),
    ({"phase": "prefill", "seq": 100, "chunk_tokens": 128}, "chunk_tokens applies to phase decode"),
    ({"spec_acceptance": 0.7}, "spec_acceptance is the speculative proposer's and no spec_tokens is >= 1; add "
                               "spec_tokens or drop spec_acceptance"),
    ({"draft_model": "llama-3.2-1b"}, "draft_model is the speculative proposer's and no spec_tokens is >= 1"),
    ({"spec_tokens": [0, 4]}, "spec_tokens >= 1 needs spec_acceptance, the per-token acceptance rate in (0, 1]"),
    ({"spec_tokens": 65, "spec_acceptance": 0.7}, "field 'spec_tokens[0]' must be <= 64 (got 65)"),
    ({"spec_tokens": 2.5, "spec_acceptance": 0.7}, "field 'spec_tokens[0]' must be a valid integer (got 2.5)"),
    ({"weight_dtype": "int3"}, "field 'weight_dtype[0]' must be 'bf16', 'fp16', 'fp8', 'int8' or 'int4' (got 'int3')"),
    ({"kv_dtype": "fp6"}, "field 'kv_dtype[0]' must be 'fp32', 'tf32', 'bf16', 'fp16', 'fp8', 'int8' or 'int4'"),
    ({"chunk_tokens": -1}, "field 'chunk_tokens[0]' must be >= 0 (got -1)"),
    ({"spec_tokens": 3, "spec_acceptance": []}, "field 'spec_acceptance' is an empty list"),
])
def test_bad_option_grids_are_one_line(tmp_path, capsys, fields, message):
    grid = _grid(tmp_path, **{"hardware": "h100-sxm", "model": "llama-3.1-8b", "context": 100, **fields})
    rc = main(["sweep", grid, "-o", str(tmp_path / "r.csv"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert err[0].startswith(f"roofplan: error: {grid}: ")
    assert not (tmp_path / "r.csv").exists()


def test_cli_rows_group_best_and_pareto_by_the_new_columns(tmp_path, capsys):
    """A quantization x speculation grid end to end: the CSV's rows, invalid fp8-on-A100 rows counted,
    and reductions grouped by weight_dtype and spec_tokens."""
    grid = _grid(tmp_path, hardware=["h100-sxm", "a100-sxm-80gb"], model="llama-3.1-8b", phase="decode",
                 batch=[1, 16, 64], context=[2048], weight_dtype=["bf16", "fp8", "int4"], spec_tokens=[0, 4],
                 spec_acceptance=0.8)
    out = tmp_path / "r.csv"
    assert main(["sweep", grid, "-o", str(out), "--format", "json", "--quiet", "--workers", "1",
                 "--reduce", "group-best:weight_dtype,spec_tokens", "--reduce", "pareto"]) == 0
    obj = json.loads(capsys.readouterr().out)
    df = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert list(df.columns) == list(sw.RESULT_COLUMNS) and len(df) == obj["configs"] == 2 * 3 * 2 * 3
    assert obj["errors"] == 2 * 3       # fp8 on the A100, plain and speculative, three batches
    best = obj["group_best"]
    assert best["by"] == ["weight_dtype", "spec_tokens"]
    assert sorted((r["weight_dtype"], r["spec_tokens"]) for r in best["rows"]) == \
        sorted((w, k) for w in ("bf16", "fp8", "int4") for k in (0, 4))
    ok = df[df["error"].isna() & df["fits"]]
    for r in best["rows"]:
        same = ok[(ok["weight_dtype"] == r["weight_dtype"]) & (ok["spec_tokens"] == r["spec_tokens"])]
        assert r["usd_per_1m_tokens"] == pytest.approx(same["usd_per_1m_tokens"].min(), rel=1e-12)
        assert (r["spec_speedup"] is None) == (r["spec_tokens"] == 0)
    assert all("weight_dtype" in r and "spec_tokens_per_step" in r for r in obj["pareto"]["rows"])
    sample = df.sample(12, random_state=1)     # the CSV's numbers read back, against predict()
    sample["error"] = sample["error"].fillna("")
    assert sample["draft_model"].isna().all()
    assert sum(_check_equal(sample)) == 12


def test_table_names_the_options_in_the_parallel_column(tmp_path, capsys):
    grid = _grid(tmp_path, hardware="h100-sxm", model="llama-3.1-8b", phase="decode", batch=1, context=1024,
                 weight_dtype="int4", kv_dtype="fp8", spec_tokens=4, spec_acceptance=0.8, draft_model="llama-3.2-1b")
    assert main(["sweep", grid, "-o", str(tmp_path / "r.csv"), "--quiet", "--top", "1", "--format", "table"]) == 0
    text = capsys.readouterr().out
    assert "tp1 pp1 w int4 kv fp8 spec 4 a0.8 draft llama-3.2-1b" in text


def test_group_best_refuses_an_unknown_option_column(tmp_path, capsys):
    rc = main(["sweep", str(REPO_ROOT / "workloads" / "sweeps" / "quick.yaml"), "-o", str(tmp_path / "r.csv"),
               "--reduce", "group-best:weight_dtyp"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown column 'weight_dtyp' (did you mean: weight_dtype," in err[0]


# ---------------------------------------------------------------------------------------------
# the fingerprint

# sha256 of the shipped grids as roofplan hashed them before the serving options existed (commit
# 8c04887): a grid that does not list them must hash the same
OLD_GRID_SHA256 = {
    "quick": "f015969e50b8abe2b16b842cc8b5c10e0a06758f2cacd6a24b1722c25a183d8c",
    "dense": "e7c6b0a2ed8a027eaa980ef3403da64cb4e11ce9d70444803b2ab7e081d63a48",
    "offload": "9d88e0e6b221991b811b3b7ad663bba9b946ba61d36d68d56d406bdd69e1bdca",
    "serving": "b6a2e99b540332832d9f9f57f9406d1f71364599292fed1388a3a2139f1873b3",
}


@pytest.mark.parametrize("name", sorted(OLD_GRID_SHA256))
def test_old_grids_hash_as_before(name):
    assert sw.grid_sha256(sw.load_grids(REPO_ROOT / "workloads" / "sweeps" / f"{name}.yaml")) == OLD_GRID_SHA256[name]


def test_listing_an_option_changes_the_grid_hash():
    base = {"hardware": "h100-sxm", "model": "llama-3.1-8b"}
    h = sw.grid_sha256([sw.check_grid(base)])
    assert sw.grid_sha256([sw.check_grid({**base, "weight_dtype": None, "spec_tokens": 0})]) == h   # the defaults
    assert sw.grid_sha256([sw.check_grid({**base, "weight_dtype": "int4"})]) != h
    assert sw.grid_sha256([sw.check_grid({**base, "weight_dtype": ["bf16", "int4"]})]) != \
        sw.grid_sha256([sw.check_grid({**base, "weight_dtype": "int4"})])


def test_resume_over_shards_of_other_columns_is_refused(tmp_path, capsys):
    """Shards written before the option columns (a manifest without `columns`) cannot be streamed
    into one file with new ones: --resume says so."""
    grid = _grid(tmp_path, hardware="h100-sxm", model="llama-3.1-8b", batch=[1, 2], context=[10, 20])
    args = ["sweep", grid, "-o", str(tmp_path / "r.csv"), "--workers", "1", "--quiet"]
    assert main(args) == 0
    manifest = tmp_path / "r.csv.shards" / "_manifest.json"
    m = json.loads(manifest.read_text())
    del m["fingerprint"]["columns"]
    manifest.write_text(json.dumps(m))
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the result columns changed (roofplan's sweep output gained or lost columns) since " \
                             "the shards in" in err[0]


def test_input_files_include_the_draft_model():
    groups = sw.parse_grid({"hardware": "h100-sxm", "model": "llama-3.1-8b", "spec_tokens": 2,
                            "spec_acceptance": 0.7, "draft_model": ["llama-3.2-1b", "no-such-draft"]})
    files = sw.input_files(groups)
    assert "workloads/models/llama-3.2-1b.json" in files and files["model 'no-such-draft'"] is None


def test_the_shipped_quantization_grid(tmp_path, capsys):
    """workloads/sweeps/quantization.yaml as docs/sweep.md shows it: 288 rows, the A100's fp8-weight
    rows (2 KV x 2 speculation x 3 tp x 4 batch) the only invalid ones, speculation paying at batch 1."""
    (grid,) = sw.load_grids(REPO_ROOT / "workloads" / "sweeps" / "quantization.yaml")
    assert sw.count_rows(grid) == 288
    out = tmp_path / "q.csv"
    assert main(["sweep", str(REPO_ROOT / "workloads" / "sweeps" / "quantization.yaml"), "-o", str(out), "--quiet",
                 "--workers", "1", "--format", "json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    df = pd.read_csv(out, keep_default_na=False, na_values=[""])
    bad = df[df["error"].notna()]
    assert obj["errors"] == len(bad) == 48
    assert set(bad["hardware"]) == {"a100-sxm-80gb"} and set(bad["weight_dtype"]) == {"fp8"}
    spec = df[(df["spec_tokens"] == 5) & df["error"].isna() & (df["batch"] == 1)]
    assert len(spec) == 2 * 3 * 3 * 2 - 3 * 2 and (spec["spec_speedup"] > 2).all()   # GPU x tp x weights x KV
