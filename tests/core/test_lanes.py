"""The two-lane timeline: the closed form for repeated layers equals an op-by-op replay."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from simulator.core.step import Lane, lanes, repeat

ops = st.lists(st.tuples(st.floats(0, 50e-6), st.floats(0, 200e-6)), min_size=1, max_size=8)
segment = st.tuples(st.integers(0, 6), ops)


def replay(segments, host_start=0.0):
    """end_j = max(end_{j-1}, issue_j) + d_j with issue_j = host clock after op j's host cost."""
    end, issue = 0.0, host_start
    for count, body in segments:
        for _ in range(count):
            for h, d in body:
                issue += h
                end = max(end, issue) + d
    return end, issue


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(segment, min_size=1, max_size=4), st.floats(0, 1e-3))
def test_closed_form_equals_replay(segments, host_start):
    want_end, want_issue = replay(segments, host_start)
    end, issue = lanes([(c, [h for h, _ in b], [d for _, d in b]) for c, b in segments], host_start)
    assert np.isclose(end, want_end, rtol=1e-9, atol=1e-15) and np.isclose(issue, want_issue, rtol=1e-9, atol=1e-15)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(segment, min_size=1, max_size=4))
def test_lane_summaries_chain_and_repeat_like_the_replay(segments):
    """Lane.of / then / repeat (what training uses) give the same ends as the replay."""
    end, issue = 0.0, 0.0
    for count, body in segments:
        lane = Lane.of([h for h, _ in body], [d for _, d in body])
        end, issue = repeat(end, issue, count, lane)
    want_end, want_issue = replay(segments)
    assert np.isclose(end, want_end, rtol=1e-9, atol=1e-15) and np.isclose(issue, want_issue, rtol=1e-9, atol=1e-15)
    if len(segments) >= 2 and segments[0][0] and segments[1][0]:
        (c0, b0), (c1, b1) = segments[:2]
        joined = Lane.of(*zip(*b0)).then(Lane.of(*zip(*b1)))
        e, i = repeat(0.0, 0.0, 1, joined)
        we, wi = replay([(1, b0), (1, b1)])
        assert np.isclose(e, we, rtol=1e-9, atol=1e-15) and np.isclose(i, wi, rtol=1e-9, atol=1e-15)


def test_a_cuda_graph_is_the_sum_of_its_kernels():
    end, issue = lanes([(32, [0.0, 0.0], [1e-5, 2e-5])])
    assert np.isclose(end, 32 * 3e-5, rtol=1e-12) and issue == 0.0


def test_host_bound_layers_take_the_host_time():
    # 40 us of host work per layer against 10 us of kernels: 32 layers take 32 x 40 us + the last kernel
    end, issue = lanes([(32, [40e-6], [10e-6])])
    assert np.isclose(issue, 32 * 40e-6) and np.isclose(end, 32 * 40e-6 + 10e-6)


def test_critical_path_names_the_lane_that_sets_the_pace():
    from simulator.core.models import load_model
    from simulator.core.predict import predict
    from simulator.core.profiles import load_executor_profile
    from simulator.core.specs import load_hardware
    from simulator.core.workload import Job
    m, h, ex = load_model("llama-3.2-1b"), load_hardware("h100-sxm"), load_executor_profile("hf-eager")
    lane = lambda p: {s["segment"]: s["lane"] for s in p.critical_path}["layer"]
    decode = predict(m, h, Job("decode", batch=1, context=512), ex)
    prefill = predict(m, h, Job("prefill", batch=32, seq=512), ex)
    graph = predict(m, h, Job("decode", batch=1, context=512))
    assert (lane(decode), lane(prefill), lane(graph)) == ("host", "device", "device")
    assert decode.bound == "host" and decode.host_time_s > 10 * decode.device_busy_s


@pytest.mark.parametrize("batch", [1, 8])
def test_training_reports_both_lanes(batch):
    """A training step reports its host lane and device busy time (they were 0 for training): each
    lane is a lower bound of the step; a CUDA-graph-free eager step at batch 1 is close to both
    (host-bound), and the default executor issues for free."""
    from simulator.core.models import load_model
    from simulator.core.predict import predict
    from simulator.core.profiles import load_executor_profile
    from simulator.core.specs import load_hardware
    from simulator.core.workload import Job
    m, hw, job = load_model("llama-3.2-1b"), load_hardware("h100-sxm"), Job(phase="train", batch=batch, seq=2048)
    eager = predict(m, hw, job, load_executor_profile("hf-eager"), with_ops=False)
    assert 0 < eager.host_time_s <= eager.time_s and 0 < eager.device_busy_s <= eager.time_s * (1 + 1e-9)
    # the host issues the same ops whatever the batch; the device's work grows with it
    other = predict(m, hw, Job(phase="train", batch=9 - batch, seq=2048), load_executor_profile("hf-eager"), with_ops=False)
    assert other.host_time_s == pytest.approx(eager.host_time_s, rel=1e-9)
    assert (other.device_busy_s > eager.device_busy_s) == (batch == 1)
    graph = predict(m, hw, job, load_executor_profile("default"), with_ops=False)
    assert graph.host_time_s == 0 and graph.device_busy_s == pytest.approx(graph.time_s, rel=1e-9)
