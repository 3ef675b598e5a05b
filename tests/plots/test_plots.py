"""Figures: files are written, and the numbers behind them are right."""
import numpy as np
import pytest

from simulator.cli.main import main
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.step import stream_schedule
from simulator.core.specs import load_hardware
from simulator.core.units import GiB
from simulator.core.workload import Job

pytest.importorskip("matplotlib")
from simulator.report import plots  # noqa: E402


@pytest.fixture(scope="module")
def h100():
    return load_hardware("h100-sxm")


def test_roofline_places_ops_at_their_intensity(tmp_path, h100):
    model = load_model("llama-3.1-8b")
    pred = predict(model, h100, Job("decode", batch=16, context=1024))
    png = tmp_path / "roof.png"
    df, roofs = plots.roofline_plot(pred, h100, png)
    assert png.stat().st_size > 5_000
    # ridge point of H100 SXM: 989 TFLOP/s bf16 dense / 3.35 TB/s = 295 FLOP/byte
    assert roofs["ridge_intensity"] == pytest.approx(989e12 / 3.35e12, rel=0.01)
    # decode GEMM with B tokens: 2 B K N / (2 K N + 2 B (K + N)) ~ B FLOP/byte (weights dominate)
    head = df[df["name"] == "lm_head"].iloc[0]
    d, v = model.hidden, model.vocab
    assert head["intensity"] == pytest.approx(2 * 16 * d * v / ((d * v + 16 * (d + v)) * 2), rel=1e-12)
    assert 15.9 < head["intensity"] < 16
    # decode attention: 4 h L d FLOPs over 4 h_kv L d cache bytes (bf16) -> h / h_kv = 32 / 8 FLOP/byte
    attn = df[df["cls"] == "attention"].iloc[0]
    assert attn["intensity"] == pytest.approx(model.n_heads / model.n_kv_heads, rel=0.01)
    # no op beats its roof
    assert (df["achieved_flops_s"] <= df["roof_flops_s"] * (1 + 1e-9)).all()
    # communication and FLOP-free ops are not placed
    assert (df["flops"] > 0).all()


def test_memory_bars_add_up_to_peak(tmp_path):
    model = load_model("llama-3.1-70b")
    system = load_hardware("h100-sxm")
    preds = [predict(model, system, Job("decode", batch=8, context=4096, tp=n)) for n in (2, 4, 8)]
    df = plots.memory_plot(preds, tmp_path / "mem.png", capacity_bytes=system.gpu.mem_bytes)
    assert (tmp_path / "mem.png").stat().st_size > 5_000
    for (_, row), p in zip(df.iterrows(), preds):
        assert row.sum() == pytest.approx(p.peak_memory_bytes / GiB, rel=1e-12)
    # weights split over tp: 70.6e9 params x 2 bytes / tp
    assert df["weights"].iloc[0] / df["weights"].iloc[2] == pytest.approx(4, rel=1e-9)
    assert df["weights"].iloc[2] * GiB == pytest.approx(70.55e9 * 2 / 8, rel=0.01)


@pytest.mark.parametrize("overlap", [True, False])
def test_offload_timeline_matches_stream_schedule(tmp_path, overlap):
    model = load_model("llama-3.1-8b")
    system = load_hardware("h100-sxm")
    pred = predict(model, system, Job("decode", batch=4, context=512, offload_weights="cpu", overlap=overlap))
    tasks = plots.offload_timeline(pred)
    plots.timeline_plot(tasks, tmp_path / "gantt.png", title="offload")
    assert (tmp_path / "gantt.png").stat().st_size > 3_000
    n = model.n_layers
    assert (tasks["lane"] == "transfer").sum() == n == (tasks["lane"] == "compute").sum()
    comp = tasks[tasks["lane"] == "compute"]
    c = comp["duration_s"].iloc[0]
    t = pred.transfer_time_s / n
    end = (comp["start_s"] + comp["duration_s"]).max()
    assert end == pytest.approx(stream_schedule(c, t, n, overlap), rel=1e-12)
    # a layer never computes before its weights arrived
    tr = tasks[tasks["lane"] == "transfer"].set_index("layer")
    for _, r in comp.iterrows():
        assert r["start_s"] >= tr.loc[r["layer"], "start_s"] + tr.loc[r["layer"], "duration_s"] - 1e-15


def test_timeline_needs_offload():
    from simulator.core.errors import RoofplanError
    pred = predict(load_model("gpt2"), load_hardware("h100-sxm"), Job("decode", batch=1, context=10))
    with pytest.raises(RoofplanError, match="offload"):
        plots.offload_timeline(pred)


def test_pareto_front(tmp_path):
    x = np.array([1.0, 2.0, 3.0, 2.5, 1.0, 4.0])
    y = np.array([10.0, 20.0, 30.0, 15.0, 5.0, 30.0])
    # (1,5) dominated by (1,10); (2.5,15) by (2,20); (4,30) by (3,30)
    assert plots.pareto_front(x, y).tolist() == [0, 1, 2]
    # bigger x and bigger y both better: (4, 30) dominates everything
    assert plots.pareto_front(x, y, minimize_x=False).tolist() == [5]
    front = plots.pareto_plot(x, y, list("abcdef"), tmp_path / "p.png")
    assert front.tolist() == [0, 1, 2] and (tmp_path / "p.png").stat().st_size > 3_000


def test_predict_plot_flag(tmp_path, capsys):
    png = tmp_path / "pred.png"
    rc = main(["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--phase", "prefill",
               "--batch", "1", "--seq", "2048", "--plot", str(png), "--format", "json"])
    assert rc == 0 and png.stat().st_size > 10_000


def test_plot_bad_extension_is_one_line(tmp_path, capsys):
    rc = main(["predict", "--model", "gpt2", "--hardware", "h100-sxm", "--phase", "decode",
               "--plot", str(tmp_path / "x.txt"), "--format", "json"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "use a .png" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("pp,n_micro", [(1, 4), (4, 8), (4, 2), (8, 16)])
def test_pipeline_timeline_1f1b(tmp_path, pp, n_micro):
    f, b = 1e-3, 2e-3
    tasks = plots.pipeline_timeline(pp, n_micro, f, b)
    # every stage runs every micro-batch forward and backward once
    assert len(tasks) == 2 * pp * n_micro
    # equal stages: (n_micro + pp - 1) slots of (fwd + bwd), the bubble predict() charges for training
    assert (tasks["start_s"] + tasks["duration_s"]).max() == pytest.approx((n_micro + pp - 1) * (f + b), rel=1e-12)
    # 1F1B keeps at most pp - s micro-batches in flight on stage s (the activation memory bound)
    for s in range(pp):
        t = tasks[tasks["lane"] == f"stage {s}"].sort_values("start_s")
        in_flight = (t["kind"] == "fwd").cumsum() - (t["kind"] == "bwd").cumsum()
        assert in_flight.max() <= pp - s
    plots.timeline_plot(tasks, tmp_path / "pipe.png", title="1F1B")
    assert (tmp_path / "pipe.png").stat().st_size > 3_000
