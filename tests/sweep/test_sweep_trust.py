"""Sweeps cannot lose or mix data (issue 13 item 4): a damaged shard is computed again, never
trusted; a resume over changed inputs is refused naming the input; a large grid is estimated and
refused past a budget; the summaries are reductions merged from the shards and equal the same
reduction of the full table; rows go to a partitioned Parquet dataset; bad input is one line."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

import simulator.sweep as sw
from simulator.cli.main import main
from simulator.core.paths import REPO_ROOT
from simulator.report.plots import pareto_front

QUICK = REPO_ROOT / "workloads" / "sweeps" / "quick.yaml"
KEY = ["hardware", "model", "phase", "tp", "batch", "seq", "context"]


def _grid(tmp_path, name="grid.yaml", **grid):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(grid))
    return str(p)


def _run(capsys, *argv):
    """(exit code, stdout, stderr lines) of `roofplan sweep ...`."""
    rc = main(["sweep", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, [x for x in cap.err.splitlines() if x.strip()]


# ---------------------------------------------------------------------------------------------
# damaged shards


def _damage(path, how):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) * 7 // 8])    # whole rows gone, still parses
    elif how == "garbage":
        path.write_bytes(b"\x00\xff garbage \x89PNG\r\n" * 10)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "missing":
        path.unlink()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "missing"])
def test_damaged_shard_is_recomputed_on_resume(tmp_path, capsys, how, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out, shards = tmp_path / f"r.{fmt}", tmp_path / "shards"
    args = [str(QUICK), "-o", str(out), "--workers", "1", "--shard-size", "16", "--shard-dir", str(shards),
            "--format", "json", "--quiet"]
    rc, first, _ = _run(capsys, *args)
    assert rc == 0
    before = out.read_bytes()
    victim = shards / f"shard-00002.{fmt}"
    _damage(victim, how)
    if how == "truncated" and fmt == "csv":     # the case that used to pass: 85 of 96 rows
        assert 0 < len(pd.read_csv(victim)) < 24
    rc, again, err = _run(capsys, *args, "--resume")
    assert rc == 0 and len(err) == 1
    assert err[0].startswith("resume: computing again 1 of 4 finished shards") and "shard-00002" in err[0]
    assert out.read_bytes() == before                              # every row back, bit for bit
    assert json.loads(again)["configs"] == 96 and json.loads(again)["top"] == json.loads(first)["top"]
    manifest = json.loads((shards / "_manifest.json").read_text())
    assert manifest["done"]["2"]["sha256"] == sw.file_sha256(victim) and manifest["done"]["2"]["rows"] == 24


def test_unreadable_manifest_recomputes_everything(tmp_path, capsys):
    out, shards = tmp_path / "r.csv", tmp_path / "shards"
    args = [str(QUICK), "-o", str(out), "--workers", "1", "--shard-size", "16", "--shard-dir", str(shards), "--quiet"]
    assert _run(capsys, *args)[0] == 0
    before = out.read_bytes()
    (shards / "_manifest.json").write_text('{"manifest": 1, "done": ')
    (shards / "shard-00001.csv").write_text("hardware\nnot a row\n")
    rc, _, err = _run(capsys, *args, "--resume")
    assert rc == 0 and len(err) == 1 and "_manifest.json is unreadable; computing every shard again" in err[0]
    assert out.read_bytes() == before


def test_shard_written_but_not_recorded_is_recomputed(tmp_path, capsys):
    """A kill between a shard's rename and the manifest's next save: the file is not trusted."""
    out, shards = tmp_path / "r.csv", tmp_path / "shards"
    args = [str(QUICK), "-o", str(out), "--workers", "1", "--shard-size", "16", "--shard-dir", str(shards), "--quiet"]
    assert _run(capsys, *args)[0] == 0
    before = out.read_bytes()
    m = json.loads((shards / "_manifest.json").read_text())
    del m["done"]["3"]
    (shards / "_manifest.json").write_text(json.dumps(m))
    _damage(shards / "shard-00003.csv", "truncated")
    (shards / ".shard-00003.csv.tmp").write_text("hardware,model\nh100")     # what a kill leaves mid-write
    (shards / "._manifest.json.tmp").write_text('{"manifest": 1, "fing')
    assert _run(capsys, *args, "--resume")[::2] == (0, [])
    assert out.read_bytes() == before


def test_fresh_run_never_reads_its_rows_back(tmp_path, capsys, monkeypatch):
    """The summary comes from per-shard reductions and the output is streamed from the files:
    the client never loads a shard as a table (only a resume reduces kept shards from disk)."""
    def refuse(path):
        raise AssertionError(f"read {path}")
    monkeypatch.setattr(sw, "read_table", refuse)
    out = tmp_path / "r.csv"
    rc, text, _ = _run(capsys, str(QUICK), "-o", str(out), "--workers", "1", "--shard-size", "10", "--format", "json",
                       "--quiet")
    assert rc == 0 and json.loads(text)["configs"] == 96
    shards = sorted((tmp_path / "r.csv.shards").glob("shard-*.csv"))
    assert len(shards) == 8
    expected = pd.concat([pd.read_csv(p, keep_default_na=False, na_values=[""]) for p in shards], ignore_index=True)
    pd.testing.assert_frame_equal(pd.read_csv(out, keep_default_na=False, na_values=[""]), expected)


# ---------------------------------------------------------------------------------------------
# the fingerprint


@pytest.fixture
def own_specs(tmp_path, monkeypatch):
    """Copies of hardware_specs/ and the model zoo that a test may edit."""
    hw, models = tmp_path / "hw", tmp_path / "models"
    shutil.copytree(REPO_ROOT / "hardware_specs", hw)
    shutil.copytree(REPO_ROOT / "workloads" / "models", models)
    monkeypatch.setenv("ROOFPLAN_HW_DIR", str(hw))
    monkeypatch.setenv("ROOFPLAN_MODELS_DIR", str(models))
    return hw, models


@pytest.mark.parametrize("edit, changed", [
    (lambda hw, m: hw / "gpus" / "h100-sxm.yaml", "hardware_specs/gpus/h100-sxm.yaml changed since the shards"),
    (lambda hw, m: hw / "links" / "nvlink-4.yaml", "hardware_specs/links/nvlink-4.yaml changed"),
    (lambda hw, m: hw / "systems" / "aws-p5.48xlarge.yaml", "hardware_specs/systems/aws-p5.48xlarge.yaml changed"),
    (lambda hw, m: hw / "profiles" / "kernels" / "h100-sxm.yaml", "hardware_specs/profiles/kernels/h100-sxm.yaml changed"),
    (lambda hw, m: hw / "profiles" / "executors" / "default.yaml", "profiles/executors/default.yaml changed"),
    (lambda hw, m: m / "llama-3.1-70b.json", "workloads/models/llama-3.1-70b.json changed"),
])
def test_resume_over_a_changed_input_is_refused(tmp_path, capsys, own_specs, edit, changed):
    out = tmp_path / "r.csv"
    args = [str(QUICK), "-o", str(out), "--workers", "1", "--shard-size", "16", "--quiet"]
    assert _run(capsys, *args)[0] == 0
    path = edit(*own_specs)
    text = path.read_text()
    path.write_text(text + "\n" if path.suffix == ".json" else text + "# edited\n")   # same values, new bytes
    rc, _, err = _run(capsys, *args, "--resume")
    assert rc == 2 and len(err) == 1 and changed in err[0]
    assert err[0].endswith("rerun without --resume or with a new --shard-dir")
    path.write_text(text)       # the same bytes again: the shards are this run's
    assert _run(capsys, *args, "--resume")[::2] == (0, [])


def test_resume_over_a_moved_copy_or_an_unrelated_edit_is_kept(tmp_path, capsys, own_specs, monkeypatch):
    """The fingerprint is the bytes of what the grid reads, wherever ROOFPLAN_HW_DIR puts them."""
    hw, _ = own_specs
    args = [str(QUICK), "-o", str(tmp_path / "r.csv"), "--workers", "1", "--shard-size", "16", "--quiet"]
    monkeypatch.delenv("ROOFPLAN_HW_DIR")
    assert _run(capsys, *args)[0] == 0
    monkeypatch.setenv("ROOFPLAN_HW_DIR", str(hw))
    assert _run(capsys, *args, "--resume")[::2] == (0, [])
    (hw / "gpus" / "mi300x.yaml").write_text((hw / "gpus" / "mi300x.yaml").read_text() + "# edited\n")
    assert _run(capsys, *args, "--resume")[::2] == (0, [])


def test_resume_over_a_changed_grid_or_version_is_refused(tmp_path, capsys, monkeypatch):
    grid = _grid(tmp_path, hardware="h100-sxm", model="gpt2", batch=[1, 2], context=[10, 20])
    args = [grid, "-o", str(tmp_path / "r.csv"), "--workers", "1", "--quiet"]
    assert _run(capsys, *args)[0] == 0
    _grid(tmp_path, hardware="h100-sxm", model="gpt2", batch=[1, 3], context=[10, 20])
    rc, _, err = _run(capsys, *args, "--resume")
    assert rc == 2 and len(err) == 1 and "the grid changed since the shards" in err[0]
    _grid(tmp_path, hardware="h100-sxm", model="gpt2", batch=[1, 2], context=[10, 20])
    monkeypatch.setattr(sw, "roofplan_version", lambda: "9.9.9")
    rc, _, err = _run(capsys, *args, "--resume")
    assert rc == 2 and len(err) == 1 and "roofplan's version changed (0.1.0 -> 9.9.9)" in err[0]


# ---------------------------------------------------------------------------------------------
# estimates and budgets


def test_grid_past_max_rows_is_refused_before_any_work(tmp_path, capsys):
    grid = _grid(tmp_path, hardware=["h100-sxm", "a100-sxm-80gb"], model="llama-3.1-8b", tp=[1, 2],
                 batch=list(range(1, 1001)), context=list(range(0, 100_000, 100)))
    out = tmp_path / "big.csv"
    rc, _, err = _run(capsys, grid, "-o", str(out), "--max-rows", "1000000", "--workers", "4")
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("roofplan: error: 4,000,000 configurations is past --max-rows 1,000,000 (~")
    assert " of CSV plus as much in the shard folder" in err[0] and "on 4 workers" in err[0] and "-row sample" in err[0]
    assert err[0].endswith("raise --max-rows or narrow the grid")
    assert not out.exists() and not (tmp_path / "big.csv.shards").exists()


def test_output_past_max_output_gb_is_refused(tmp_path, capsys):
    rc, _, err = _run(capsys, str(QUICK), "-o", str(tmp_path / "q.csv"), "--max-output-gb", "0.00001")
    assert rc == 2 and len(err) == 1 and "of output is past --max-output-gb 1e-05" in err[0]
    assert "raise --max-output-gb" in err[0]


def test_large_run_prints_its_estimate(tmp_path, capsys, monkeypatch):
    import simulator.cli.sweep as cli
    monkeypatch.setattr(cli, "ESTIMATE_ROWS", 50)
    rc, _, err = _run(capsys, str(QUICK), "-o", str(tmp_path / "q.csv"), "--workers", "1", "--format", "json")
    assert rc == 0 and len(err) == 1 and err[0].startswith("estimate: 96 rows, ~")
    assert "of CSV plus as much in the shard folder" in err[0] and "on 1 worker;" in err[0]


def test_estimate_of_bytes_and_rows_is_close():
    grids = sw.load_grids(QUICK)
    groups = sw.parse_grid(grids[0])
    est = sw.estimate(groups, 96, "csv")
    actual = len(sw.run_shard(groups).to_csv(index=False))
    assert est.rows == 96 and est.output_bytes == pytest.approx(actual, rel=0.1)
    assert 0 < est.seconds(1) < 10 and est.seconds(4) == pytest.approx(est.seconds(1) / 4)


# ---------------------------------------------------------------------------------------------
# reductions equal the same reduction of the full table

PRICED = dict(hardware=["h100-sxm", "a100-sxm-80gb"], model="llama-3.1-8b", phase=["decode", "prefill"],
              tp=[1, 2, 4], batch=[1, 4, 16, 64, 256], seq=[128, 2048, 8192], context=[128, 4096, 32768])
UNPRICED = dict(PRICED, hardware=["v100-sxm-32gb", "rtx-3090"])


def _full(path):
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    ok = df[(df["error"].isna() | (df["error"] == "")) & df["fits"]].copy()
    ok["tokens_per_s_per_gpu"] = ok["tokens_per_s"] / ok["n_gpus"]
    return ok


def _keys(records):
    return [tuple(r[k] for k in KEY) for r in records]


@pytest.mark.parametrize("grid, sort", [(PRICED, None), (PRICED, "tokens_per_s"), (PRICED, "time_s"),
                                        (UNPRICED, None), (UNPRICED, "tokens_per_s_per_gpu")])
def test_reductions_equal_the_full_table(tmp_path, capsys, grid, sort):
    g = _grid(tmp_path, **grid)
    out = tmp_path / "r.csv"
    args = [g, "-o", str(out), "--workers", "1", "--shard-size", "7", "--top", "9", "--reduce", "pareto",
            "--reduce", "group-best:hardware,phase,tp", "--format", "json", "--quiet", *(["--sort", sort] if sort else [])]
    rc, text, _ = _run(capsys, *args)
    assert rc == 0
    res = json.loads(text)
    ok = _full(out)
    priced = ok["usd_per_1m_tokens"].notna().any()
    assert priced == (grid is PRICED) and len(ok) > 20
    metric = sort or ("usd_per_1m_tokens" if priced else "tokens_per_s")
    ranked = ok.sort_values(metric, ascending=sw.SORT_ASCENDING[metric], kind="stable", na_position="last")
    assert res["sort"] == metric
    assert _keys(res["top"]) == _keys(ranked.head(9).to_dict("records"))
    best = ranked.groupby(["hardware", "phase", "tp"], sort=False).head(1)
    assert res["group_best"]["by"] == ["hardware", "phase", "tp"]
    assert _keys(res["group_best"]["rows"]) == _keys(best.to_dict("records"))
    x = "usd_per_1m_tokens" if priced else "time_s"
    pts = ok[ok[x].notna()]
    front = pts.iloc[pareto_front(pts[x].to_numpy(), pts["tokens_per_s"].to_numpy())]
    assert res["pareto"]["x"] == x and len(front) >= 2
    assert _keys(res["pareto"]["rows"]) == _keys(front.to_dict("records"))
    assert [r["time_s"] for r in res["top"]] == ranked.head(9)["time_s"].tolist()     # bit for bit
    # a resume reduces the kept shards from their files: the same summary
    rc, again, _ = _run(capsys, *args, "--resume")
    assert rc == 0 and {k: v for k, v in json.loads(again).items() if k != "seconds"} == \
        {k: v for k, v in res.items() if k != "seconds"}


def test_merge_is_order_free():
    """Shards finish in any order on a pool or a cluster; the merged reductions do not depend on it."""
    groups = sw.parse_grid(dict(PRICED, hardware="h100-sxm"))
    red = sw.Reductions(top=5, pareto=True, group_by=("phase", "tp"), sample=True)
    parts = [sw.reduce_shard(sw.run_shard(s), red, i) for i, s in enumerate(sw.shard_groups(groups, 11))]
    results = []
    for order in (range(len(parts)), reversed(range(len(parts))), np.random.default_rng(0).permutation(len(parts))):
        merged = sw.Partial()
        for i in order:
            merged = merged.merge(parts[i], red)
        results.append(sw.summarise(merged, red))
    for r in results[1:]:
        for k in ("top", "best", "pareto", "sample"):
            pd.testing.assert_frame_equal(r[k], results[0][k])


# ---------------------------------------------------------------------------------------------
# a partitioned Parquet dataset


def test_dataset_output_is_one_parquet_file_per_shard(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    import pyarrow.dataset as ds
    folder = tmp_path / "results"
    args = [str(QUICK), "-o", f"{folder}/", "--workers", "2", "--shard-size", "20", "--format", "json", "--quiet"]
    rc, text, _ = _run(capsys, *args)
    assert rc == 0 and json.loads(text)["output"] == f"{folder}/"
    files = sorted(folder.glob("*.parquet"))
    assert len(files) == 4 and [f.name for f in files] == [f"shard-{i:05d}.parquet" for i in range(4)]
    assert ds.dataset(folder, format="parquet").count_rows() == 96
    rows = pd.read_parquet(folder)
    single = tmp_path / "one.csv"
    assert _run(capsys, str(QUICK), "-o", str(single), "--workers", "1", "--quiet")[0] == 0
    expected = pd.read_csv(single, keep_default_na=False, na_values=[""])
    assert rows["time_s"].tolist() == expected["time_s"].tolist()
    assert rows["bound"].tolist() == expected["bound"].tolist()
    # a damaged partition is computed again on resume
    _damage(files[3], "truncated")
    rc, _, err = _run(capsys, *args, "--resume")
    assert rc == 0 and len(err) == 1 and "shard-00003.parquet" in err[0]
    pd.testing.assert_frame_equal(pd.read_parquet(folder), rows)
    # the fix a refused resume names is the dataset's own flag
    other = _grid(tmp_path, hardware="h100-sxm", model="gpt2")
    rc, _, err = _run(capsys, other, *args[1:], "--resume")
    assert rc == 2 and len(err) == 1 and err[0].endswith("rerun without --resume or with a new -o folder")


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit 2, before any work


def _binary(tmp_path):
    p = tmp_path / "grid.yaml"
    p.write_bytes(bytes(range(256)) * 4)
    return str(p)


def _folder_with(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.txt").write_text("mine")
    return f"{tmp_path / 'results'}/"


@pytest.mark.parametrize("argv, msg", [
    (lambda t: [str(QUICK), "-o", "/proc/x.csv"], "-o /proc/x.csv: cannot write in /proc"),
    (lambda t: [str(QUICK), "-o", str(t)], "use a .csv or .parquet file name, or a folder name ending in /"),
    (lambda t: [str(QUICK), "-o", str(t / "d.csv")], "d.csv: is a folder; give a file name"),
    (lambda t: [str(QUICK), "-o", str(t / "no" / "x.csv")], "is not a folder; create it"),
    (lambda t: [str(QUICK), "-o", _folder_with(t)], "holds files that are not this sweep's shards (notes.txt)"),
    (lambda t: [str(QUICK), "-o", f"{t}/r/", "--shard-dir", str(t / "s")], "keeps its shards in itself"),
    (lambda t: [_binary(t)], "grid.yaml: not UTF-8 text (byte 128)"),
    (lambda t: [_grid(t, hardware="h100-sxm", model="gpt2", batch=[])], "field 'batch' is an empty list"),
    (lambda t: [_grid(t, hardware="h100-sxm", model="gpt2", batch=[10**21])], "field 'batch[0]' must be <= 16777216"),
    (lambda t: [_grid(t, hardware="h100-sxm", model="gpt2", batch=[1.5])], "field 'batch[0]' must be a valid integer"),
    (lambda t: [_grid(t, hardware="h100-sxm", model="gpt2", contxt=[1])], "unknown field 'contxt' (did you mean: context"),
    (lambda t: [str(QUICK), "--dask-scheduler", "notaurl"], "--dask-scheduler notaurl: not a scheduler address"),
    (lambda t: [str(QUICK), "--dask-scheduler", "tcp://host:99999"], "not a scheduler address; give tcp://HOST:PORT"),
    (lambda t: [str(QUICK), "--reduce", "pareto:3"], "--reduce pareto:3: use top:N, pareto or group-best:COL"),
    (lambda t: [str(QUICK), "--reduce", "group-best:hw"], "unknown column 'hw'"),
    (lambda t: [str(QUICK), "--top", "3", "--reduce", "top:4"], "--top 3 and --reduce top:4 disagree"),
    (lambda t: [str(QUICK), "--max-rows", "0"], "--max-rows must be >= 1"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, argv, msg):
    (tmp_path / "d.csv").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sw, "run_shard", lambda *a: pytest.fail("the sweep ran"))
    args = argv(tmp_path)
    rc, out, err = _run(capsys, *args, *([] if "-o" in args else ["-o", str(tmp_path / "o.csv")]), "--quiet")
    assert rc == 2 and out == "" and len(err) == 1 and msg in err[0], err


def test_unreachable_scheduler_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(sw, "DASK_CONNECT_TIMEOUT_S", 0.5)
    rc, _, err = _run(capsys, str(QUICK), "-o", str(tmp_path / "q.csv"), "--dask-scheduler", "tcp://127.0.0.1:1",
                      "--quiet")
    assert rc == 2 and len(err) == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in err[0]
