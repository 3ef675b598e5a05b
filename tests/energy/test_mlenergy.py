"""Energy per output token and GPU power of Llama-3.1 decode on H100 against the ML.ENERGY
Leaderboard v3.0 (vLLM 0.11.1, lm-arena-chat; benchmarks/data/energy.yaml names the files).
roofplan predicts each point as the steady state of max_num_seqs requests in flight under the
vllm-v1 engine profile: the mean over the mixed decode + prefill steps the engine runs
(simulator.serving.engine_fit.steady_steps), Llama-3.1-8B on 1 H100 and 70B on 4 (TP), GPUs only
like the measurement. vllm-v1 is fitted to the median ITLs and the power model to the power of
the role-fit points; the role-check points are held out of both. `max_num_seqs` names the points."""
import numpy as np
import pytest

POINTS = [("llama-3.1-8b", b) for b in (8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768)] + [
    ("llama-3.1-70b", b) for b in (8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024)]


@pytest.mark.parametrize("key", POINTS, ids=[f"{m}-b{b}" for m, b in POINTS])
def test_energy_per_token_within_25_percent(rows, key):
    """The issue's bar, on every published H100 point (measured: -17.0% .. +8.9%)."""
    r = rows[key]
    assert abs(r.energy_error) <= 0.25, (f"{key}: predicted {r.energy_j_per_token:.4f} J/token, "
                                          f"measured {r.point.energy_per_token_J:.4f}")


def test_all_published_points_are_covered(rows):
    assert set(rows) == set(POINTS)


def test_energy_per_token_held_out_mape(rows):
    """The 11 points held out of both fits: J/token MAPE 7.6%, worst -17.0% (8B, 128 in flight)."""
    held = [r.energy_error for r in rows.values() if r.point.role == "check"]
    assert len(held) == 11
    assert np.mean(np.abs(held)) <= 0.08
    assert max(map(abs, held)) <= 0.18


def test_power_fit_and_held_out(rows):
    """GPU power per GPU: the 12 fit points within 5% on average (4.5%), every held-out point within
    20% (worst +19.5%: 70B at 384 in flight, where the step turns compute-bound and the model says
    TDP), held-out MAPE 5.5%."""
    fit = [abs(r.power_error) for r in rows.values() if r.point.role == "fit"]
    held = {k: r.power_error for k, r in rows.items() if r.point.role == "check"}
    assert len(fit) == 12 and len(held) == 11
    assert np.mean(fit) <= 0.05
    assert max(map(abs, held.values())) <= 0.20, held
    assert np.mean(list(map(abs, held.values()))) <= 0.06


def test_power_rises_with_batch_like_the_measurement(rows):
    """Measured: 486 W at batch 8 to 690 W at 256 (8B); 441 to 637 W (70B). Predicted: the same rise."""
    for model in ("llama-3.1-8b", "llama-3.1-70b"):
        pts = sorted((k[1], r) for k, r in rows.items() if k[0] == model)
        watts = [r.predicted_w for _, r in pts]
        assert all(b >= a - 1e-9 for a, b in zip(watts, watts[1:])), watts
        rise_pred = watts[-1] / watts[0]
        rise_meas = pts[-1][1].measured_w / pts[0][1].measured_w
        assert rise_pred == pytest.approx(rise_meas, rel=0.2)


@pytest.mark.parametrize("model", ["llama-3.1-8b", "llama-3.1-70b"])
def test_energy_per_token_curve_falls_steeply_then_flattens(rows, model):
    """J/token vs batch: measured 3.8x (8B) / 4.7x (70B) lower from batch 8 to 64, then within
    1.1x / 1.3x from 256 to the largest batch. Predicted: monotone, >= 3x, then < 1.5x."""
    pts = sorted((k[1], r) for k, r in rows.items() if k[0] == model)
    pred = {b: r.energy_j_per_token for b, r in pts}
    meas = {b: r.point.energy_per_token_J for b, r in pts}
    largest = max(pred)
    for curve, slack in ((pred, 1.0), (meas, 1.03)):     # measured: 8B 512 -> 768 rises 1.6%
        values = [curve[b] for b in sorted(curve)]
        assert all(b <= a * slack for a, b in zip(values, values[1:])), values
        assert curve[8] / curve[64] >= 3.0
        assert curve[256] / curve[largest] < 1.5
    # steep part: roofplan's drop from 8 to 64 within 50% of the measured drop
    assert pred[8] / pred[64] == pytest.approx(meas[8] / meas[64], rel=0.5)
