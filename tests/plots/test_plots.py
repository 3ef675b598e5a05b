"""Figures: files are written, and what is drawn in them (read back from the matplotlib artists)
is the model's numbers and the closed forms behind them."""
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

# H100 SXM5: 989.4 TFLOP/s dense bf16 (NVIDIA Hopper architecture whitepaper, table 3; the
# datasheet's 1,979 is with sparsity), 3.35 TB/s HBM3 (H100 datasheet)
H100_PEAK, H100_BW = 989.4e12, 3.35e12


@pytest.fixture(scope="module")
def h100():
    return load_hardware("h100-sxm")


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the plot functions save, kept (after saving) so its artists can be read back."""
    figs = []
    save = plots.save_figure

    def keep(fig, path):
        figs.append(fig)
        save(fig, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    return figs


def scatter_points(ax) -> np.ndarray:
    """All scatter points of an axes, one (x, y) row each."""
    return np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])


def bars(ax) -> list[tuple[float, float, float]]:
    """(x centre, bottom, height) of every bar (Rectangle patch) on an axes."""
    return [(p.get_x() + p.get_width() / 2, p.get_y(), p.get_height()) for p in ax.patches]


def gantt(ax) -> list[list[tuple[float, float]]]:
    """(start, width) of each broken_barh bar, per lane, in drawing order."""
    out = []
    for coll in ax.collections:
        lane = []
        for path in coll.get_paths():
            x = path.vertices[:, 0]
            lane.append((x.min(), x.max() - x.min()))
        out.append(lane)
    return out


def op_points(pred) -> np.ndarray:
    """(FLOP / HBM byte, achieved TFLOP/s) of every op that does FLOPs, from predict()'s op table."""
    ops = pred.ops[(pred.ops["flops"] > 0) & (pred.ops["bytes"] > 0) & (pred.ops["time_s"] > 0)]
    return np.column_stack([ops["flops"] / ops["bytes"], ops["flops"] / ops["time_s"] / 1e12])


def same_points(a, b):
    key = lambda p: p[np.lexsort(p.T[::-1])]
    assert a.shape == b.shape
    np.testing.assert_allclose(key(a), key(b), rtol=1e-12)


def test_roofline_places_ops_at_their_intensity(tmp_path, h100, drawn):
    model = load_model("llama-3.1-8b")
    pred = predict(model, h100, Job("decode", batch=16, context=1024))
    png = tmp_path / "roof.png"
    df, roofs = plots.roofline_plot(pred, h100, png)
    assert png.stat().st_size > 5_000
    (ax,) = drawn[0].axes
    # the dots are predict()'s ops: every op with FLOPs, at its intensity and achieved rate
    pts = scatter_points(ax)
    same_points(pts, op_points(pred))
    # decode GEMM with B tokens: 2 B K N / (2 K N + 2 B (K + N)) ~ B FLOP/byte (weights dominate)
    d, v = model.hidden, model.vocab
    head = 2 * 16 * d * v / ((d * v + 16 * (d + v)) * 2)
    assert np.isclose(pts[:, 0], head, rtol=1e-12).sum() == 1 and 15.9 < head < 16
    # decode attention: 4 h L d FLOPs over 4 h_kv L d cache bytes (bf16) -> h / h_kv = 32 / 8 FLOP/byte
    attn = df[df["cls"] == "attention"].iloc[0]
    assert attn["intensity"] == pytest.approx(model.n_heads / model.n_kv_heads, rel=0.01)
    # the roof: flat at the peak, slope the HBM bandwidth, ridge at 989.4 / 3.35 = 295 FLOP/byte
    roof, ridge = ax.lines[0], ax.lines[1]
    x, y = roof.get_xdata(), roof.get_ydata()
    assert y.max() == pytest.approx(H100_PEAK / 1e12, rel=1e-9)
    below = x < H100_PEAK / H100_BW
    np.testing.assert_allclose(y[below], H100_BW * x[below] / 1e12, rtol=1e-9)
    assert ridge.get_xdata()[0] == pytest.approx(H100_PEAK / H100_BW, rel=1e-9) == roofs["ridge_intensity"]
    # no dot above the roof
    assert (pts[:, 1] <= np.minimum(H100_PEAK, H100_BW * pts[:, 0]) / 1e12 * (1 + 1e-9)).all()


def test_memory_bars_add_up_to_peak(tmp_path, drawn):
    model = load_model("llama-3.1-70b")
    system = load_hardware("h100-sxm")
    preds = [predict(model, system, Job("decode", batch=8, context=4096, tp=n)) for n in (2, 4, 8)]
    df = plots.memory_plot(preds, tmp_path / "mem.png", capacity_bytes=system.gpu.mem_bytes)
    assert (tmp_path / "mem.png").stat().st_size > 5_000
    (ax,) = drawn[0].axes
    # stacked bars, one column per prediction: the top of each is its peak memory per GPU
    tops = {}
    for x, bottom, height in bars(ax):
        tops[round(x, 6)] = max(tops.get(round(x, 6), 0.0), bottom + height)
    assert sorted(tops) == [0, 1, 2]
    for x, p in zip(sorted(tops), preds):
        assert tops[x] == pytest.approx(p.peak_memory_bytes / GiB, rel=1e-12)
    # the first part drawn is the weights: 70,553,706,496 params (HF count) x 2 B / tp
    weights = [h for _, _, h in bars(ax)][:3]
    np.testing.assert_allclose(np.array(weights) * GiB, 70_553_706_496 * 2 / np.array([2, 4, 8]), rtol=1e-3)
    assert list(df.columns)[0] == "weights"
    # the dashed line is the GPU's 80 GiB
    assert ax.lines[0].get_ydata()[0] == pytest.approx(80.0)


@pytest.mark.parametrize("overlap", [True, False])
def test_offload_timeline_matches_stream_schedule(tmp_path, overlap, drawn):
    model = load_model("llama-3.1-8b")
    system = load_hardware("h100-sxm")
    pred = predict(model, system, Job("decode", batch=4, context=512, offload_weights="cpu", overlap=overlap))
    tasks = plots.offload_timeline(pred)
    plots.timeline_plot(tasks, tmp_path / "gantt.png", title="offload")
    assert (tmp_path / "gantt.png").stat().st_size > 3_000
    n = model.n_layers
    c = float(pred.ops.loc[pred.ops["name"].str.startswith("layer."), "time_s"].sum()) / n
    t = pred.transfer_time_s / n
    # the drawn bars (ms): lane 0 the 32 weight copies, lane 1 the 32 layer computes
    transfer, compute = gantt(drawn[0].axes[0])
    assert len(transfer) == len(compute) == n
    np.testing.assert_allclose([w for _, w in transfer], t * 1e3, rtol=1e-12)
    np.testing.assert_allclose([w for _, w in compute], c * 1e3, rtol=1e-12)
    end = max(s + w for s, w in compute)
    assert end == pytest.approx(stream_schedule(c, t, n, overlap) * 1e3, rel=1e-12)
    # a layer never computes before its weights arrived
    for (ts, tw), (cs, _) in zip(transfer, compute):
        assert cs >= ts + tw - 1e-12
    if overlap:        # copies back to back while compute keeps up: copy i starts at i x t
        assert transfer[1][0] == pytest.approx(t * 1e3, rel=1e-12)
    else:              # serial: copy i + 1 starts when compute i ends
        assert transfer[1][0] == pytest.approx((t + c) * 1e3, rel=1e-12)


def test_timeline_needs_offload():
    from simulator.core.errors import RoofplanError
    pred = predict(load_model("gpt2"), load_hardware("h100-sxm"), Job("decode", batch=1, context=10))
    with pytest.raises(RoofplanError, match="offload"):
        plots.offload_timeline(pred)


def test_pareto_front(tmp_path, drawn):
    x = np.array([1.0, 2.0, 3.0, 2.5, 1.0, 4.0])
    y = np.array([10.0, 20.0, 30.0, 15.0, 5.0, 30.0])
    # (1,5) dominated by (1,10); (2.5,15) by (2,20); (4,30) by (3,30)
    assert plots.pareto_front(x, y).tolist() == [0, 1, 2]
    # bigger x and bigger y both better: (4, 30) dominates everything
    assert plots.pareto_front(x, y, minimize_x=False).tolist() == [5]
    front = plots.pareto_plot(x, y, list("abcdef"), tmp_path / "p.png")
    assert front.tolist() == [0, 1, 2] and (tmp_path / "p.png").stat().st_size > 3_000
    (ax,) = drawn[0].axes
    # every point in grey, the front drawn as a line through (1, 10), (2, 20), (3, 30)
    same_points(scatter_points(ax), np.column_stack([x, y]))
    assert ax.lines[0].get_xdata().tolist() == [1.0, 2.0, 3.0]
    assert ax.lines[0].get_ydata().tolist() == [10.0, 20.0, 30.0]


def test_predict_plot_flag(tmp_path, capsys, h100, drawn):
    png = tmp_path / "pred.png"
    rc = main(["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--phase", "prefill",
               "--batch", "1", "--seq", "2048", "--plot", str(png), "--format", "json"])
    assert rc == 0 and png.stat().st_size > 10_000
    pred = predict(load_model("llama-3.1-8b"), h100, Job("prefill", batch=1, seq=2048))
    roof_ax, mem_ax = drawn[0].axes
    same_points(scatter_points(roof_ax), op_points(pred))
    assert roof_ax.lines[0].get_ydata().max() == pytest.approx(H100_PEAK / 1e12, rel=1e-9)
    top = max(bottom + height for _, bottom, height in bars(mem_ax))
    assert top == pytest.approx(pred.peak_memory_bytes / GiB, rel=1e-12)
    # weights: 8,030,261,248 parameters (HF count) x 2 B, the first part drawn
    assert bars(mem_ax)[0][2] * GiB == pytest.approx(8_030_261_248 * 2, rel=1e-9)


def test_plot_bad_extension_is_one_line(tmp_path, capsys):
    rc = main(["predict", "--model", "gpt2", "--hardware", "h100-sxm", "--phase", "decode",
               "--plot", str(tmp_path / "x.txt"), "--format", "json"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "use a .png" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("pp,n_micro", [(1, 4), (4, 8), (4, 2), (8, 16)])
def test_pipeline_timeline_1f1b(tmp_path, pp, n_micro, drawn):
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
    # drawn: one lane per stage, each with n_micro 1 ms and n_micro 2 ms bars, the last ending at
    # (n_micro + pp - 1) x 3 ms
    lanes = gantt(drawn[0].axes[0])
    assert len(lanes) == pp
    for lane in lanes:
        widths = sorted(round(w, 9) for _, w in lane)
        assert widths == [1.0] * n_micro + [2.0] * n_micro
    assert max(s + w for lane in lanes for s, w in lane) == pytest.approx((n_micro + pp - 1) * 3.0, rel=1e-12)
