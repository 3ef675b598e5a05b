"""`roofplan sweep`: process pool, Dask, resumable shards, CSV/Parquet, summary, bad input."""

import pandas as pd
import pytest
import yaml

from simulator.core.paths import REPO_ROOT
from simulator.cli.main import main
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.pricing import cheapest_price_per_gpu_h
from simulator.core.specs import load_hardware
from simulator.core.workload import Job

QUICK = REPO_ROOT / "workloads" / "sweeps" / "quick.yaml"


def _grid(tmp_path, **grid):
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(grid))
    return str(p)


def _sweep(tmp_path, grid, name, *extra):
    out = tmp_path / name
    assert main(["sweep", grid, "-o", str(out), "--format", "json", "--quiet", *extra]) == 0
    return pd.read_csv(out, keep_default_na=False, na_values=[""]) if out.suffix == ".csv" else pd.read_parquet(out)


def test_quick_grid_matches_scalar_predict(tmp_path, capsys):
    df = _sweep(tmp_path, str(QUICK), "q.csv", "--workers", "1", "--top", "3")
    assert len(df) == 2 * 4 * 4 * 3            # hardware x tp x batch x context
    capsys.readouterr()
    model = load_model("llama-3.1-70b")
    prices = {hw: cheapest_price_per_gpu_h(hw)[0] for hw in ("h100-sxm", "a100-sxm-80gb")}
    for _, r in df.sample(8, random_state=0).iterrows():
        p = predict(model, load_hardware(r["hardware"]),
                    Job("decode", batch=int(r["batch"]), context=int(r["context"]), tp=int(r["tp"])), check_memory=False)
        assert r["time_s"] == pytest.approx(p.time_s, rel=1e-12)
        assert r["peak_memory_bytes"] == pytest.approx(p.peak_memory_bytes, rel=1e-12)
        assert bool(r["fits"]) == p.fits
        price = prices[r["hardware"]]
        assert r["usd_per_1m_tokens"] == pytest.approx(price * r["tp"] / 3600 / p.tokens_per_s * 1e6, rel=1e-12)
    # 70B bf16 weights (141 GB) do not fit on one 80 GB GPU
    assert not df[(df["tp"] == 1)]["fits"].any()


def test_summary_is_the_cheapest_fitting_configs(tmp_path, capsys):
    out = tmp_path / "q.csv"
    assert main(["sweep", str(QUICK), "-o", str(out), "--format", "json", "--top", "3", "--workers", "1"]) == 0
    import json
    obj = json.loads(capsys.readouterr().out)   # strict JSON: no NaN
    assert all(t["error"] is None for t in obj["top"])
    df = pd.read_csv(out)
    fit = df[df["fits"]].sort_values("usd_per_1m_tokens")
    assert obj["configs"] == len(df) and obj["fit"] == int(df["fits"].sum()) and obj["sort"] == "usd_per_1m_tokens"
    assert [t["usd_per_1m_tokens"] for t in obj["top"]] == pytest.approx(fit["usd_per_1m_tokens"].head(3).tolist())


def test_process_pool_equals_in_process(tmp_path):
    a = _sweep(tmp_path, str(QUICK), "a.csv", "--workers", "1", "--shard-size", "10")
    b = _sweep(tmp_path, str(QUICK), "b.csv", "--workers", "2", "--shard-size", "10")
    pd.testing.assert_frame_equal(a, b)


def test_dask_local_cluster_equals_process_pool(tmp_path, capsys):
    """Rows and the reductions merged from the workers' per-shard results are the pool's."""
    import json
    distributed = pytest.importorskip("distributed")
    red = ["--reduce", "pareto", "--reduce", "group-best:hardware,tp", "--top", "5"]
    a = _sweep(tmp_path, str(QUICK), "pool.csv", "--workers", "2", "--shard-size", "16", *red)
    pool = json.loads(capsys.readouterr().out)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        b = _sweep(tmp_path, str(QUICK), "dask.csv", "--dask-scheduler", cluster.scheduler_address,
                   "--shard-size", "16", *red)
    dask = json.loads(capsys.readouterr().out)
    pd.testing.assert_frame_equal(a, b)
    for k in ("top", "pareto", "group_best", "configs", "fit", "sort"):
        assert dask[k] == pool[k]


def test_resume_recomputes_only_missing_shards(tmp_path):
    shards = tmp_path / "shards"
    a = _sweep(tmp_path, str(QUICK), "r.csv", "--workers", "1", "--shard-size", "16", "--shard-dir", str(shards))
    files = sorted(shards.glob("shard-*.csv"))
    assert len(files) == 4     # 8 groups of 12 configs, packed into shards of >= 16
    files[2].unlink()
    before = {f: f.stat().st_mtime_ns for f in files if f.exists()}
    b = _sweep(tmp_path, str(QUICK), "r.csv", "--workers", "1", "--shard-size", "16", "--shard-dir", str(shards), "--resume")
    pd.testing.assert_frame_equal(a, b)
    assert files[2].exists()
    assert all(f.stat().st_mtime_ns == t for f, t in before.items())
    # a different shard size is a different sweep: refuse to mix
    assert main(["sweep", str(QUICK), "-o", str(tmp_path / "r.csv"), "--shard-size", "8", "--shard-dir", str(shards),
                 "--resume", "--quiet", "--format", "json"]) == 2


def test_parquet_equals_csv(tmp_path):
    pytest.importorskip("pyarrow")
    a = _sweep(tmp_path, str(QUICK), "a.csv", "--workers", "1")
    b = _sweep(tmp_path, str(QUICK), "b.parquet", "--workers", "1")
    assert b["time_s"].tolist() == pytest.approx(a["time_s"].tolist(), rel=1e-15)
    assert b["bound"].tolist() == a["bound"].tolist()


def test_invalid_structure_and_train_phase(tmp_path):
    grid = _grid(tmp_path, hardware="h100-sxm", model="gpt2", phase=["train", "decode"], tp=[1, 5],
                 batch=[1, 2], seq=[128], context=[100, 2000])
    df = _sweep(tmp_path, grid, "t.csv", "--workers", "1")
    tp5 = df[(df["tp"] == 5) & (df["context"] != 2000)]
    assert len(tp5) == 4 and tp5["error"].str.contains("does not divide").all()          # 12 heads
    long = df[(df["phase"] == "decode") & (df["context"] == 2000)]
    assert long["error"].str.contains("out of range").all()               # gpt2: 1024 positions
    train = df[(df["phase"] == "train") & (df["tp"] == 1)]
    model, system = load_model("gpt2"), load_hardware("h100-sxm")
    for _, r in train.iterrows():
        p = predict(model, system, Job("train", batch=int(r["batch"]), seq=128), check_memory=False)
        assert r["time_s"] == pytest.approx(p.time_s, rel=1e-12)


@pytest.mark.parametrize("grid,args,msg", [
    ({"hardware": "h100-sxm", "model": "gpt2", "batchh": 3}, [], "grid.yaml: unknown field 'batchh' (did you mean: batch"),
    ({"hardware": "h100-sxm"}, [], "grid.yaml: field 'model' is missing"),
    ({"hardware": "h100-sxm", "model": "gpt2", "phase": "serve"}, [], "grid.yaml: field 'phase[0]' must be 'prefill', "
                                                                        "'decode' or 'train' (got 'serve')"),
    ({"hardware": "h100-sxm", "model": "gpt2", "batch": "many"}, [], "field 'batch[0]' must be a valid integer"),
    ({"hardware": "h100-sxm", "model": "gpt2"}, ["-o", "x.txt"], "use a .csv or .parquet"),
    ({"hardware": "h100-sxm", "model": "gpt2"}, ["--shard-size", "0"], "--shard-size must be >= 1"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, grid, args, msg):
    g = _grid(tmp_path, **grid)
    rc = main(["sweep", g, "-o", str(tmp_path / "o.csv"), *args, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and len(err.splitlines()) == 1


def test_missing_grid_file(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_sweep_plot_is_pareto_of_cost_and_throughput(tmp_path):
    png = tmp_path / "p.png"
    _sweep(tmp_path, str(QUICK), "p.csv", "--workers", "1", "--plot", str(png))
    assert png.stat().st_size > 10_000
