"""`roofplan sweep GRID.yaml`: cartesian sweeps over hardware x model x phase x batch x seq/context
x tp/pp (x dtype, offload), vectorised per group (simulator/sweep.py), run in shards on a local
process pool or an existing Dask cluster, written as CSV or Parquet, with a top-N summary.

Shards are files in a folder (default: OUTPUT.shards/); `--resume` keeps the shards a previous
run finished and computes only the missing ones (the folder's manifest must match the grid).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from simulator.core.errors import FieldError, RoofplanError
from simulator.report.tables import add_format_arg, emit, fmt_of
from simulator.core.units import GiB, fmt_time
from simulator.cli.args import plot_path

SORT_KEYS = {  # metric -> ascending?
    "usd_per_1m_tokens": True, "tokens_per_s": False, "tokens_per_s_per_gpu": False, "time_s": True,
}


def register(sub) -> None:
    p = sub.add_parser("sweep", help="cartesian sweep of predictions over a grid (YAML), locally or on Dask")
    p.add_argument("grid", help="grid YAML (see workloads/sweeps/*.yaml)")
    p.add_argument("-o", "--output", default="sweep.csv", help="results file: .csv or .parquet (default sweep.csv)")
    p.add_argument("--workers", type=int, default=0, help="local processes (default: CPU count; 1 = in this process)")
    p.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                   help="run shards on an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (pip install 'roofplan[dist]')")
    p.add_argument("--shard-size", type=int, default=200_000, help="configurations per shard (default 200000)")
    p.add_argument("--shard-dir", default=None, help="folder for shard files (default: OUTPUT.shards)")
    p.add_argument("--resume", action="store_true", help="keep finished shards from an earlier run of this grid")
    p.add_argument("--top", type=int, default=10, help="rows in the summary table (0: none)")
    p.add_argument("--sort", default=None, choices=sorted(SORT_KEYS),
                   help="summary order (default: usd_per_1m_tokens when prices exist, else tokens_per_s)")
    p.add_argument("--plot", type=plot_path, default=None, metavar="FILE.png",
                   help="Pareto front of throughput vs cost (or vs latency when no prices)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_format_arg(p)
    p.set_defaults(func=cmd_sweep)


def load_grids(path: str) -> list[dict]:
    from simulator.core.specs import read_yaml
    p = Path(path)
    if not p.is_file():
        raise RoofplanError(f"grid file {path} not found; see workloads/sweeps/*.yaml for examples")
    data = read_yaml(p)
    if isinstance(data, dict) and "grids" in data:
        grids = data["grids"]
        if not isinstance(grids, list) or not grids:
            raise RoofplanError(f"{path}: 'grids:' must be a non-empty list of grid mappings")
        return grids
    return [data]


class Progress:
    """A one-line tqdm progress bar on stderr over configurations, with the shard count (drawn
    only when `enabled`: the CLI passes a terminal and no --quiet). Ends its line when the last
    shard is in or on `close`."""

    def __init__(self, total_configs: int, n_shards: int, enabled: bool):
        from tqdm import tqdm
        self.n_shards, self.done_shards = n_shards, 0
        self.bar = tqdm(total=total_configs, unit="config", disable=not enabled, file=sys.stderr,
                        desc=f"0/{n_shards} shards", ascii=" #", mininterval=0, miniters=0,   # draw every shard
                        bar_format="[{bar:30}] {desc}, {n:,}/{total:,} configs, {elapsed_s:.1f} s")

    def update(self, configs: int) -> None:
        self.done_shards += 1
        self.bar.set_description_str(f"{self.done_shards}/{self.n_shards} shards", refresh=False)
        self.bar.update(configs)
        if self.done_shards == self.n_shards:
            self.close()

    def close(self) -> None:
        self.bar.close()


def _write_table(df, path: Path) -> None:
    if path.suffix == ".parquet":
        _need_pyarrow()
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)


def _read_table(path: Path):
    import pandas as pd
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, keep_default_na=False, na_values=[""],
                       dtype={"error": str, "bound": str})


def _need_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise RoofplanError("Parquet output needs pyarrow; pip install 'roofplan[dist]' (or pyarrow), or write .csv") from None


def run_shard_to_file(groups, path: str, prices: dict | None = None) -> int:
    """Worker task (process pool or Dask): compute one shard, write it atomically, return rows."""
    from simulator.sweep import run_shard
    df = run_shard(groups, prices)
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp" + p.suffix)
    _write_table(df, tmp)
    os.replace(tmp, p)
    return len(df)


def run_sweep(groups, shard_size: int, shard_dir: Path, workers: int = 1, dask_scheduler: str | None = None,
              resume: bool = False, fingerprint: str = "", progress: bool = False, shard_ext: str = ".csv"):
    """Run every shard (skipping finished ones when resuming) and return all rows, in grid order."""
    import pandas as pd
    from simulator.sweep import gpu_prices, shard_groups
    shards = shard_groups(groups, shard_size)
    prices = gpu_prices(groups)
    shard_dir.mkdir(parents=True, exist_ok=True)
    manifest = shard_dir / "manifest.json"
    meta = {"grid": fingerprint, "shards": len(shards), "shard_size": shard_size, "ext": shard_ext}
    if resume and manifest.is_file():
        old = json.loads(manifest.read_text())
        if old != meta:
            raise RoofplanError(f"{shard_dir} holds shards of a different grid or --shard-size; drop --resume or use another --shard-dir")
    else:
        for f in shard_dir.glob("shard-*"):
            f.unlink()
    manifest.write_text(json.dumps(meta))
    paths = [shard_dir / f"shard-{i:05d}{shard_ext}" for i in range(len(shards))]
    todo = [i for i, p in enumerate(paths) if not (resume and p.is_file())]
    bar = Progress(sum(sum(g.size for g in s) for s in shards), len(shards), progress)
    try:
        _run_shards(shards, paths, todo, prices, workers, dask_scheduler, bar)
    finally:
        bar.close()     # ends the bar's line before any error message
    parts = [_read_table(p) for p in paths]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _run_shards(shards, paths, todo, prices, workers, dask_scheduler, bar) -> None:
    pending = set(todo)
    for i in range(len(shards)):
        if i not in pending:
            bar.update(sum(g.size for g in shards[i]))
    if dask_scheduler:
        try:
            from distributed import Client, as_completed
        except ImportError:
            raise RoofplanError("--dask-scheduler needs dask.distributed; pip install 'roofplan[dist]'") from None
        try:
            client = Client(dask_scheduler, timeout=10)
        except (OSError, TimeoutError) as e:
            raise RoofplanError(f"cannot reach the Dask scheduler at {dask_scheduler} ({e}); check the address") from None
        try:
            futs = [client.submit(run_shard_to_file, shards[i], str(paths[i]), prices, pure=False) for i in todo]
            for f in as_completed(futs):
                bar.update(f.result())
        finally:
            client.close()
    elif workers > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed as done
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futs = [pool.submit(run_shard_to_file, shards[i], str(paths[i]), prices) for i in todo]
            for f in done(futs):
                bar.update(f.result())
    else:
        for i in todo:
            bar.update(run_shard_to_file(shards[i], str(paths[i]), prices))


def summary(df, top: int, sort: str | None):
    """The best `top` configurations that fit and have no error, by `sort`."""
    ok = df[(df["error"].fillna("") == "") & df["fits"].astype(bool)].copy()
    ok["tokens_per_s_per_gpu"] = ok["tokens_per_s"] / ok["n_gpus"]
    if sort is None:
        sort = "usd_per_1m_tokens" if ok["usd_per_1m_tokens"].notna().any() else "tokens_per_s"
    ok = ok.sort_values(sort, ascending=SORT_KEYS[sort], kind="stable", na_position="last")
    return ok.head(top), sort


def cmd_sweep(args) -> int:
    from simulator.sweep import parse_grid
    out = Path(args.output)
    if out.suffix not in (".csv", ".parquet"):
        raise RoofplanError(f"-o {args.output}: use a .csv or .parquet file name")
    if out.suffix == ".parquet":
        _need_pyarrow()
    if args.shard_size < 1:
        raise RoofplanError("--shard-size must be >= 1")
    if args.workers < 0:
        raise RoofplanError("--workers must be >= 0 (0: one per CPU)")
    grids = load_grids(args.grid)
    try:
        groups = [g for grid in grids for g in parse_grid(grid)]
    except FieldError as e:     # a field of the grid file, not a flag
        raise RoofplanError(f"{args.grid}: {e.render(f'grid field {e.field!r} =')}") from None
    fingerprint = hashlib.sha256(json.dumps(grids, sort_keys=True, default=str).encode()).hexdigest()[:16]
    shard_dir = Path(args.shard_dir) if args.shard_dir else out.with_name(out.name + ".shards")
    workers = args.workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    df = run_sweep(groups, args.shard_size, shard_dir, workers, args.dask_scheduler, args.resume, fingerprint,
                   progress=not args.quiet and sys.stderr.isatty(), shard_ext=out.suffix)
    elapsed = time.perf_counter() - t0
    _write_table(df, out)
    n_err = int((df["error"].fillna("") != "").sum())
    n_fit = int(df["fits"].astype(bool).sum())
    best, sort = summary(df, max(args.top, 0), args.sort)
    if args.plot:
        _plot(df, args.plot)
    rows = []
    for _, r in best.iterrows():
        size = f"ctx {r['context']}" if r["phase"] == "decode" else f"seq {r['seq']}"
        usd = r["usd_per_1m_tokens"]
        rows.append([r["hardware"], r["model"], r["phase"], _parallel(r), r["batch"], size,
                     fmt_time(r["time_s"]), f"{r['tokens_per_s']:,.0f}", f"{r['peak_memory_bytes'] / GiB:.1f}",
                     f"{usd:.3f}" if usd == usd else "-", r["bound"]])
    obj = {"output": str(out), "configs": len(df), "fit": n_fit, "errors": n_err, "seconds": elapsed,
           "sort": sort, "top": [{k: _clean(v) for k, v in r.items()}
                                for r in best.drop(columns=["tokens_per_s_per_gpu"]).to_dict(orient="records")]}
    title = (f"{len(df):,} configurations ({n_fit:,} fit, {n_err:,} invalid) in {elapsed:.2f} s -> {out}\n"
             f"top {len(best)} by {sort}:")
    emit(fmt_of(args), json_obj=obj, rows=rows, title=title,
         header=["hardware", "model", "phase", "parallel", "batch", "size", "step time", "tokens/s", "GiB/GPU",
                 "$/1M tok", "bound"])
    return 0


def _parallel(r) -> str:
    """The plan of a result row, as short as it can be while telling rows apart."""
    from simulator.sweep import PLAN_FIELDS
    text = f"tp{r['tp']} pp{r['pp']}" + (f" dp{r['dp']}" if r["dp"] != 1 else "")
    for k, (_, default) in PLAN_FIELDS.items():
        v = r.get(k, default)
        if k in r and v != default and v == v:
            text += f" {k} {v}" if k in ("recompute", "micro_batch", "lora_rank") else f" {k}{int(v) if k != 'sp' else ''}"
    return text + (" offload" if r["offload"] == "cpu" else "")


def _clean(v):
    """JSON has no NaN: missing numbers (no price, no error text) become null."""
    return None if isinstance(v, float) and v != v else v


def _plot(df, path: str) -> None:
    from simulator.report.plots import pareto_plot
    ok = df[(df["error"].fillna("") == "") & df["fits"].astype(bool)]
    if ok.empty:
        raise RoofplanError("--plot: no configuration fits in memory; nothing to plot")
    labels = (ok["hardware"] + " " + ok["model"] + " " + ok["phase"] + " tp" + ok["tp"].astype(str)
              + " b" + ok["batch"].astype(str)).tolist()
    if ok["usd_per_1m_tokens"].notna().any():
        ok = ok[ok["usd_per_1m_tokens"].notna()]
        labels = (ok["hardware"] + " " + ok["model"] + " " + ok["phase"] + " tp" + ok["tp"].astype(str)
                  + " b" + ok["batch"].astype(str)).tolist()
        pareto_plot(ok["usd_per_1m_tokens"].to_numpy(), ok["tokens_per_s"].to_numpy(), labels, path,
                    xlabel="$ per 1M tokens (lower is better)", ylabel="tokens/s (higher is better)",
                    minimize_x=True, maximize_y=True, title="Sweep: throughput vs cost")
    else:
        pareto_plot(ok["time_s"].to_numpy(), ok["tokens_per_s"].to_numpy(), labels, path,
                    xlabel="step latency (s, lower is better)", ylabel="tokens/s (higher is better)",
                    minimize_x=True, maximize_y=True, title="Sweep: throughput vs latency")
