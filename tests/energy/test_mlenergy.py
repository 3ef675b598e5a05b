"""Energy per output token and GPU power of Llama-3.1 decode on H100 against the ML.ENERGY
Leaderboard v3.0 (vLLM 0.11.1, lm-arena-chat; benchmarks/data/energy.yaml names the files).
roofplan predicts each point as a decode step at the measured batch (avg_batch_size, rounded)
and 512 cached tokens, Llama-3.1-8B on 1 H100 and 70B on 4 (TP), GPUs only like the measurement.
`max_num_seqs` (the leaderboard's batch-size column) names the points."""
import numpy as np
import pytest

# J/token within 25% of the measurement: 8B at max_num_seqs 8-64; 70B at 16-1024
WITHIN = [("llama-3.1-8b", b) for b in (8, 16, 32, 64)] + [("llama-3.1-70b", b) for b in
                                                             (16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024)]
# the rest miss by more, and by about the step time's own error (the power is within 20% there):
# vLLM's iteration at large batch is 1.3-1.9x roofplan's kernel-only decode step for 8B, and
# the 70B batch-8 step is predicted 29% slow. (model, max_num_seqs): measured error at 512 context
TIME_BOUND = {("llama-3.1-8b", 96): -0.267, ("llama-3.1-8b", 128): -0.317, ("llama-3.1-8b", 192): -0.349,
              ("llama-3.1-8b", 256): -0.365, ("llama-3.1-8b", 384): -0.424, ("llama-3.1-8b", 512): -0.423,
              ("llama-3.1-8b", 768): -0.451, ("llama-3.1-70b", 8): +0.317}


@pytest.mark.parametrize("key", WITHIN, ids=[f"{m}-b{b}" for m, b in WITHIN])
def test_energy_per_token_within_25_percent(rows, key):
    r = rows[key]
    assert abs(r.energy_error) <= 0.25, (f"{key}: predicted {r.pred.energy.energy_j_per_token:.4f} J/token, "
                                          f"measured {r.point.energy_per_token_J:.4f}")


@pytest.mark.parametrize("key", list(TIME_BOUND), ids=[f"{m}-b{b}" for m, b in TIME_BOUND])
@pytest.mark.xfail(strict=True, reason="step time: roofplan's kernel-only decode step vs vLLM 0.11's iteration")
def test_energy_per_token_time_bound_points(rows, key):
    r = rows[key]
    assert r.energy_error == pytest.approx(TIME_BOUND[key], abs=0.01)      # the miss is what we say it is
    assert abs(r.power_error) <= 0.20                                       # the power is not the cause
    assert np.sign(r.energy_error) == np.sign(r.time_error) and abs(r.energy_error - r.time_error) < 0.12
    assert abs(r.energy_error) <= 0.25


def test_all_published_points_are_covered(rows):
    assert set(rows) == set(WITHIN) | set(TIME_BOUND)


def test_power_fit_and_held_out(rows):
    """GPU power per GPU: the 12 fit points within 5% on average, every held-out point within 20%
    (the 70B steps at batch >= 384 are where roofplan's step turns compute-bound and the model says TDP)."""
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
    pred = {b: r.pred.energy.energy_j_per_token for b, r in pts}
    meas = {b: r.point.energy_per_token_J for b, r in pts}
    largest = max(pred)
    for curve, slack in ((pred, 1.0), (meas, 1.03)):     # measured: 8B 512 -> 768 rises 1.6%
        values = [curve[b] for b in sorted(curve)]
        assert all(b <= a * slack for a, b in zip(values, values[1:])), values
        assert curve[8] / curve[64] >= 3.0
        assert curve[256] / curve[largest] < 1.5
    # steep part: roofplan's drop from 8 to 64 within 50% of the measured drop
    assert pred[8] / pred[64] == pytest.approx(meas[8] / meas[64], rel=0.5)
