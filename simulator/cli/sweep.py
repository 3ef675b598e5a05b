"""`roofplan sweep GRID.yaml`: cartesian sweeps over hardware x model x phase x batch x seq/context
x tp/pp (x dtype, offload, plan fields), vectorised per group (simulator/sweep.py), run in shards on
a local process pool or an existing Dask cluster.

Rows go to a CSV or Parquet file (-o results.csv: the shards streamed into it) or a partitioned
Parquet dataset (-o results/: one file per shard, read with pandas.read_parquet("results/")).
The summary -- the top N (--top), the Pareto fronts (throughput vs cost; energy vs cost) and the
best per group (--reduce) -- is reduced
on each shard where it runs and merged, so no step holds every row.

Shards are files in a folder (default: OUTPUT.shards/, or the dataset folder itself) with a
manifest of each finished shard's rows and sha256 and the run's fingerprint; `--resume` keeps the
shards that check out and computes the rest, and refuses a folder whose inputs have changed.

Before a run: the grid is validated (simulator.sweep.GridSchema), its rows counted (--max-rows),
and a large one's output size and time estimated from a timed sample (--max-output-gb).
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np

from simulator.core.errors import RoofplanError, did_you_mean
from simulator.report.tables import add_format_arg, emit, fmt_of, table
from simulator.core.units import GiB, fmt_duration, fmt_time
from simulator.cli.args import finite_float, plot_path

MAX_ROWS = 50_000_000          # default --max-rows
MAX_OUTPUT_GB = 20.0           # default --max-output-gb
ESTIMATE_ROWS = 1_000_000      # from here on a run prints its estimate first
BYTES_PER_ROW_BOUND = 400      # CSV rows are ~175 bytes, Parquet ~40: below rows x this no estimate is needed
MAX_TOP = 10_000


def register(sub) -> None:
    from simulator.sweep import SORT_ASCENDING
    p = sub.add_parser("sweep", help="cartesian sweep of predictions over a grid (YAML), locally or on Dask")
    p.add_argument("grid", help="grid YAML (see workloads/sweeps/*.yaml)")
    p.add_argument("-o", "--output", default="sweep.csv",
                   help="results: a .csv or .parquet file, or a folder name ending in / for a partitioned Parquet "
                        "dataset, one file per shard (default sweep.csv)")
    p.add_argument("--workers", type=int, default=0, help="local processes (default: CPU count; 1 = in this process)")
    p.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                   help="run shards on an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (pip install 'roofplan[dist]'); "
                        "its workers must see the shard folder")
    p.add_argument("--shard-size", type=int, default=200_000, help="configurations per shard (default 200000)")
    p.add_argument("--shard-dir", default=None, help="folder for shard files (default: OUTPUT.shards)")
    p.add_argument("--resume", action="store_true",
                   help="keep the shards an earlier run of the same grid and inputs finished (checked by sha256)")
    p.add_argument("--top", type=int, default=None, help="rows in the summary table (default 10; 0: none)")
    p.add_argument("--sort", default=None, choices=sorted(SORT_ASCENDING),
                   help="summary order (default: usd_per_1m_tokens when prices exist, else tokens_per_s)")
    p.add_argument("--reduce", action="append", default=[], metavar="top:N|pareto|pareto:energy|group-best:COL,...",
                   help="a summary computed on each shard and merged (repeatable): top:N (as --top), pareto "
                        "(throughput vs cost, or vs latency without prices), pareto:energy (J/token vs cost, or vs "
                        "throughput without prices), group-best:hardware,model (the best configuration by --sort "
                        "per distinct value of the columns)")
    p.add_argument("--max-rows", type=int, default=MAX_ROWS,
                   help=f"refuse a grid of more configurations (default {MAX_ROWS:,})")
    p.add_argument("--max-output-gb", type=finite_float, default=MAX_OUTPUT_GB,
                   help=f"refuse a run whose estimated output is larger, in GB (default {MAX_OUTPUT_GB:g})")
    p.add_argument("--plot", type=plot_path, default=None, metavar="FILE.png",
                   help="Pareto front of throughput vs cost (or vs latency when no prices); with --reduce "
                        "pareto:energy the front of energy per token vs cost")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no estimate")
    add_format_arg(p)
    p.set_defaults(func=cmd_sweep)


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


# ---------------------------------------------------------------------------------------------
# flags, checked before any work

_DASK_ADDRESS = re.compile(r"(?:(?:tcp|tls|ucx|ws|wss)://)?(?:[A-Za-z0-9][A-Za-z0-9.\-]*|\[[0-9A-Fa-f:.]+\]):(\d{1,5})")


def check_dask_address(address: str) -> None:
    """tcp://HOST:PORT (tls, ucx, ws, wss; the scheme may be left out) or an in-process inproc://."""
    if address.startswith("inproc://") and len(address) > len("inproc://"):
        return
    m = _DASK_ADDRESS.fullmatch(address)
    if not m or not 1 <= int(m.group(1)) <= 65535:
        raise RoofplanError(f"--dask-scheduler {address}: not a scheduler address; give tcp://HOST:PORT "
                            f"(e.g. tcp://10.0.0.5:8786, as `dask scheduler` prints)")


def parse_reductions(args):
    """--top, --sort and --reduce -> simulator.sweep.Reductions."""
    from simulator.sweep import CONFIG_COLUMNS, Reductions
    top, pareto, energy_pareto, group_by = None, False, False, ()
    for spec in args.reduce:
        kind, _, arg = spec.partition(":")
        if kind == "top" and arg.isdigit():
            top = int(arg)
        elif kind == "pareto" and not arg:
            pareto = True
        elif kind == "pareto" and arg == "energy":
            energy_pareto = True
        elif kind == "group-best" and arg:
            group_by = tuple(c.strip() for c in arg.split(","))
            for c in group_by:
                if c not in CONFIG_COLUMNS:
                    raise RoofplanError(f"--reduce {spec}: unknown column '{c}'{did_you_mean(c, CONFIG_COLUMNS)}; "
                                        f"group by any of {', '.join(CONFIG_COLUMNS)}")
        else:
            raise RoofplanError(f"--reduce {spec}: use top:N, pareto or group-best:COL[,COL...] "
                                f"(e.g. group-best:hardware,model), or pareto:energy")
    if top is not None and args.top is not None and top != args.top:
        raise RoofplanError(f"--top {args.top} and --reduce top:{top} disagree; give one of them")
    top = top if top is not None else args.top if args.top is not None else 10
    if not 0 <= top <= MAX_TOP:
        raise RoofplanError(f"--top {top}: use 0 to {MAX_TOP:,} (for more, read the rows from -o)")
    return Reductions(top=top, sort=args.sort, pareto=pareto or (bool(args.plot) and not energy_pareto),
                      group_by=group_by, sample=bool(args.plot), energy_pareto=energy_pareto)


def _probe(folder: Path, what: str) -> None:
    """Create and remove a file in `folder`: the only test that holds for root, /proc and
    read-only mounts alike."""
    try:
        fd, name = tempfile.mkstemp(prefix=".roofplan-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise RoofplanError(f"{what}: cannot write in {folder} ({e.strerror}); choose a writable folder") from None


def check_output(text: str) -> tuple[Path, str]:
    """-o -> (path, "csv" | "parquet" | "dataset"); a place that cannot take it is refused here."""
    from simulator.sweep import is_shard_file, need_pyarrow
    p = Path(text)
    if text.endswith(("/", os.sep)):
        need_pyarrow()
        if p.exists() and not p.is_dir():
            raise RoofplanError(f"-o {text}: exists and is not a folder; name a new folder for the Parquet dataset")
        if p.is_dir():
            try:
                foreign = sorted(f.name for f in p.iterdir() if not is_shard_file(f.name))
            except OSError as e:
                raise RoofplanError(f"-o {text}: cannot list the folder ({e.strerror})") from None
            if foreign:
                raise RoofplanError(f"-o {text}: the folder holds files that are not this sweep's shards "
                                    f"({', '.join(foreign[:3])}); name a new or empty folder for the dataset")
        elif not p.parent.is_dir():
            raise RoofplanError(f"-o {text}: {p.parent} does not exist; create it or choose another place")
        try:
            p.mkdir(exist_ok=True)
        except OSError as e:
            raise RoofplanError(f"-o {text}: cannot create the folder ({e.strerror}); choose a writable place") from None
        _probe(p, f"-o {text}")
        return p, "dataset"
    if p.suffix not in (".csv", ".parquet"):
        raise RoofplanError(f"-o {text}: use a .csv or .parquet file name, or a folder name ending in / for a "
                            f"partitioned Parquet dataset")
    if p.is_dir():
        raise RoofplanError(f"-o {text}: is a folder; give a file name (or {text}/ for a Parquet dataset in it)")
    if p.suffix == ".parquet":
        need_pyarrow()
    parent = p.parent
    if not parent.is_dir():
        raise RoofplanError(f"-o {text}: {parent} is not a folder; create it or choose another place")
    _probe(parent, f"-o {text}")
    return p, p.suffix[1:]


def _size(n: float) -> str:
    """Bytes in decimal units, as --max-output-gb counts them."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def _estimate_text(est, workers: int | None, kind: str) -> str:
    """"~110 GB of CSV plus as much in the shard folder, ~41 min on 2 workers (...)"; workers
    None: a Dask cluster of unknown size, so one core's time."""
    what = "Parquet files" if kind == "dataset" else kind.upper()
    copy = "" if kind == "dataset" else " plus as much in the shard folder"
    on = f"on {workers} worker{'s' if workers > 1 else ''}" if workers else "on one core (less on the cluster)"
    return (f"~{_size(est.output_bytes)} of {what}{copy}, ~{fmt_duration(est.seconds(workers or 1))} {on}; timed on a "
            f"{est.sample_rows:,}-row sample, {est.seconds_per_row * 1e6:.2g} us/row on one core")


# ---------------------------------------------------------------------------------------------
# the command


def cmd_sweep(args) -> int:
    from simulator import sweep as sw
    if args.shard_size < 1:
        raise RoofplanError("--shard-size must be >= 1")
    if args.workers < 0:
        raise RoofplanError("--workers must be >= 0 (0: one per CPU)")
    if args.max_rows < 1:
        raise RoofplanError("--max-rows must be >= 1")
    if args.max_output_gb <= 0:
        raise RoofplanError("--max-output-gb must be > 0")
    if args.dask_scheduler is not None:
        check_dask_address(args.dask_scheduler)
    red = parse_reductions(args)
    if args.shard_dir and args.output.endswith(("/", os.sep)):
        raise RoofplanError(f"--shard-dir: a dataset (-o {args.output}) keeps its shards in itself; drop --shard-dir")
    grids = sw.load_grids(args.grid)
    out, kind = check_output(args.output)
    if kind == "dataset":
        shard_dir, fmt = out, "parquet"
    else:
        shard_dir, fmt = (Path(args.shard_dir) if args.shard_dir else out.with_name(out.name + ".shards")), kind
        if shard_dir.is_dir():
            _probe(shard_dir, f"--shard-dir {shard_dir}")
        elif not shard_dir.exists() and shard_dir.parent.is_dir():
            _probe(shard_dir.parent, f"--shard-dir {shard_dir}")
    workers = args.workers or os.cpu_count() or 1
    shown_workers = None if args.dask_scheduler else workers

    rows = sum(sw.count_rows(g) for g in grids)
    if rows > args.max_rows:
        head = list(islice((g for grid in grids for g in sw.iter_groups(grid)), 1000))
        est = sw.estimate(head, rows, fmt, sw.gpu_prices(head))
        raise RoofplanError(f"{rows:,} configurations is past --max-rows {args.max_rows:,} "
                            f"({_estimate_text(est, shown_workers, kind)}); raise --max-rows or narrow the grid")
    groups = [g for grid in grids for g in sw.iter_groups(grid)]
    prices = sw.gpu_prices(groups)
    budget = args.max_output_gb * 1e9
    if rows >= ESTIMATE_ROWS or rows * BYTES_PER_ROW_BOUND > budget:
        est = sw.estimate(groups, rows, fmt, prices)
        if est.output_bytes > budget:
            raise RoofplanError(f"~{_size(est.output_bytes)} of output is past --max-output-gb {args.max_output_gb:g} "
                                f"({_estimate_text(est, shown_workers, kind)}); raise --max-output-gb or narrow the grid")
        if rows >= ESTIMATE_ROWS and not args.quiet:
            print(f"estimate: {rows:,} rows, {_estimate_text(est, shown_workers, kind)}", file=sys.stderr)
    shards = sw.shard_groups(groups, args.shard_size)
    print_ = sw.fingerprint(grids, groups, args.shard_size, fmt)

    t0 = time.perf_counter()
    fix = ("rerun without --resume or with a new -o folder" if kind == "dataset"
           else "rerun without --resume or with a new --shard-dir")
    manifest = sw.open_shards(shard_dir, print_, len(shards), args.resume, note=lambda s: print(s, file=sys.stderr),
                              fix=fix)
    bar = Progress(rows, len(shards), not args.quiet and sys.stderr.isatty())
    try:
        paths, res = sw.run_sweep(shards, manifest, red, prices=prices, workers=workers,
                                  dask_scheduler=args.dask_scheduler, on_shard=bar.update)
    finally:
        bar.close()     # ends the bar's line before any error message
    if kind != "dataset":
        sw.write_output(paths, out)
    elapsed = time.perf_counter() - t0
    if args.plot:
        _plot(res, args.plot)
    _print(args, res, red, out, kind, len(paths), elapsed)
    return 0


ROW_HEADER = ["hardware", "model", "phase", "parallel", "batch", "size", "step time", "tokens/s", "GiB/GPU",
              "$/1M tok", "W/GPU", "J/tok", "bound"]


def _rows(df) -> list[list]:
    rows = []
    for _, r in ([] if df is None else df.iterrows()):
        size = f"ctx {r['context']}" if r["phase"] == "decode" else f"seq {r['seq']}"
        usd, watts, jtok = r["usd_per_1m_tokens"], r.get("power_w", np.nan), r.get("energy_j_per_token", np.nan)
        rows.append([r["hardware"], r["model"], r["phase"], _parallel(r), r["batch"], size,
                     fmt_time(r["time_s"]), f"{r['tokens_per_s']:,.0f}", f"{r['peak_memory_bytes'] / GiB:.1f}",
                     f"{usd:.3f}" if usd == usd else "-", f"{watts:.0f}" if watts == watts else "-",
                     f"{jtok:.3g}" if jtok == jtok else "-", r["bound"]])
    return rows


def _records(df) -> list[dict]:
    return [] if df is None else [{k: _clean(v) for k, v in r.items()} for r in df.to_dict(orient="records")]


def _print(args, res: dict, red, out: Path, kind: str, n_files: int, elapsed: float) -> None:
    where = f"{out}/ ({n_files} Parquet file{'s' if n_files > 1 else ''})" if kind == "dataset" else str(out)
    x_name = "$/1M tokens" if res["pareto_x"] == "usd_per_1m_tokens" else "step time"
    obj = {"output": str(out) + ("/" if kind == "dataset" else ""), "configs": res["rows"], "fit": res["fit"],
           "errors": res["errors"], "seconds": elapsed, "sort": res["sort"], "top": _records(res["top"])}
    blocks = [(f"top {len(_rows(res['top']))} by {res['sort']}:", "top", res["top"])] if red.top else []
    if red.pareto:
        obj["pareto"] = {"x": res["pareto_x"], "y": "tokens_per_s", "rows": _records(res["pareto"])}
        blocks.append((f"Pareto front of tokens/s vs {x_name} ({len(res['pareto'])} configurations):", "pareto",
                       res["pareto"]))
    if red.energy_pareto:
        ex = res["energy_pareto_x"]
        obj["energy_pareto"] = {"x": ex, "y": "energy_j_per_token", "rows": _records(res["energy_pareto"])}
        blocks.append((f"Pareto front of J/token vs {'$/1M tokens' if ex == 'usd_per_1m_tokens' else 'tokens/s'} "
                       f"({len(res['energy_pareto'])} configurations):", "pareto-energy", res["energy_pareto"]))
    if red.group_by:
        obj["group_best"] = {"by": list(red.group_by), "sort": res["sort"], "rows": _records(res["best"])}
        blocks.append((f"best by {res['sort']} per {', '.join(red.group_by)}:", "group-best", res["best"]))
    title = (f"{res['rows']:,} configurations ({res['fit']:,} fit, {res['errors']:,} invalid) in {elapsed:.2f} s "
             f"-> {where}")
    fmt = fmt_of(args)
    if fmt == "table":
        print(title)
        for head, _, df in blocks:
            print(head)
            print(table(_rows(df), ROW_HEADER))
        return
    csv_rows = [[name, *r] for _, name, df in blocks for r in _rows(df)]
    emit(fmt, json_obj=obj, rows=csv_rows, header=["reduction", *ROW_HEADER], title=title)


def _parallel(r) -> str:
    """The plan of a result row, as short as it can be while telling rows apart."""
    from simulator.sweep import PLAN_FIELDS
    text = f"tp{r['tp']} pp{r['pp']}" + (f" dp{r['dp']}" if r["dp"] != 1 else "")
    for k, (_, default) in PLAN_FIELDS.items():
        v = r.get(k, default)
        if k in r and v != default and v == v:
            text += f" {k} {v}" if k in ("recompute", "micro_batch", "lora_rank", "lora_targets") \
                else f" {k}{int(v) if k != 'sp' else ''}"
    cap = r.get("power_cap_w", np.nan)
    return text + (" offload" if r["offload"] == "cpu" else "") + (f" cap {cap:g} W" if cap == cap else "") + _options(r)


def _options(r) -> str:
    """The serving options of a row that are not the defaults: ' w int4 kv fp8 spec 4 a0.8 draft M'."""
    text = ""
    for k, short in (("weight_dtype", "w"), ("kv_dtype", "kv")):
        v = r.get(k, r["dtype"])
        text += f" {short} {v}" if isinstance(v, str) and v and v != r["dtype"] else ""
    hit = r.get("prefix_hit", 0.0)
    text += f" prefix {hit:g}" if hit == hit and hit else ""
    if r.get("chunk_tokens", 0):
        text += f" chunk {r['chunk_tokens']}" + (f" after {r['chunk_context']}" if r.get("chunk_context", 0) else "")
    if r.get("spec_tokens", 0):
        draft = r.get("draft_model", "")
        text += f" spec {r['spec_tokens']} a{r['spec_acceptance']:g}" + (f" draft {draft}" if isinstance(draft, str)
                                                                          and draft else "")
    return text


def _clean(v):
    """JSON has no NaN: missing numbers (no price, no error text) become null."""
    return None if isinstance(v, float) and v != v else v


def _label(df) -> list[str]:
    return (df["hardware"] + " " + df["model"] + " " + df["phase"] + " tp" + df["tp"].astype(str)
            + " b" + df["batch"].astype(str)).tolist()


def _plot(res: dict, path: str) -> None:
    """The merged Pareto front over a fixed sample of the fitting rows (the background): the
    energy front when it was asked for (--reduce pareto:energy), else throughput vs cost."""
    import pandas as pd
    from simulator.report.plots import dollars_energy_plot, pareto_plot
    energy = res.get("energy_pareto") is not None
    front, sample = (res["energy_pareto"], res["sample"]) if energy else (res["pareto"], res["sample"])
    if front is None or front.empty:
        raise RoofplanError("--plot: no configuration fits in memory; nothing to plot")
    pts = pd.concat([front, sample], ignore_index=True) if sample is not None else front
    if energy:
        ex = res["energy_pareto_x"]
        pts = pts[pts[ex].notna() & pts["energy_j_per_token"].notna()]
        if ex == "usd_per_1m_tokens":
            dollars_energy_plot(pts[ex].to_numpy(), pts["energy_j_per_token"].to_numpy(), _label(pts), path,
                                xlabel="$ per 1M tokens (lower is better)", ylabel="J per token (lower is better)",
                                title="Sweep: energy vs cost")
        else:
            pareto_plot(pts[ex].to_numpy(), pts["energy_j_per_token"].to_numpy(), _label(pts), path,
                        xlabel="tokens/s (higher is better)", ylabel="J per token (lower is better)",
                        minimize_x=False, maximize_y=False, title="Sweep: energy vs throughput")
        return
    x = res["pareto_x"]
    if x == "usd_per_1m_tokens":
        pareto_plot(pts[x].to_numpy(), pts["tokens_per_s"].to_numpy(), _label(pts), path,
                    xlabel="$ per 1M tokens (lower is better)", ylabel="tokens/s (higher is better)",
                    minimize_x=True, maximize_y=True, title="Sweep: throughput vs cost")
    else:
        pareto_plot(pts[x].to_numpy(), pts["tokens_per_s"].to_numpy(), _label(pts), path,
                    xlabel="step latency (s, lower is better)", ylabel="tokens/s (higher is better)",
                    minimize_x=True, maximize_y=True, title="Sweep: throughput vs latency")
