"""Collectives: alpha-beta formulas, NCCL bus-bandwidth convention, topology invariants."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from simulator.core.comm import bus_bandwidth_Bps, collective_time, intra_bw_Bps, nic_bw_per_gpu_Bps
from simulator.core.errors import RoofplanError
from simulator.core.specs import load_hardware, load_system


@pytest.fixture(scope="module")
def dgx():
    return load_system("dgx-a100")


def test_ring_allreduce_inside_node_is_the_alpha_beta_formula(dgx):
    S, n = 1e9, 8
    expected = 2 * (n - 1) / n * S / (300e9 * 0.80) + 2 * (n - 1) * 2e-6
    assert collective_time("all_reduce", S, n, dgx) == pytest.approx(expected, rel=1e-12)


def test_bus_bandwidth_inside_dgx_a100_matches_nccl_tests(dgx):
    # nccl-tests all_reduce_perf on DGX A100 reaches ~230-240 GB/s bus bandwidth for 1 GB messages
    t = collective_time("all_reduce", 1e9, 8, dgx)
    assert 225e9 <= bus_bandwidth_Bps("all_reduce", 1e9, 8, t) <= 245e9


# nccl-tests all_reduce_perf across DGX A100 nodes: ~185 GB/s bus bandwidth on 8 x 25 GB/s HDR
# at large messages (NVIDIA's DGX SuperPOD reference architecture; the NCCL 2.12 all2all blog).
# "~185" is read off a chart: +-5 GB/s, 3%.
MULTI_NODE_BUSBW = 185e9


def test_multi_node_allreduce_limited_by_the_eight_hdr_nics(dgx):
    S = 16 * 2**30            # all_reduce_perf's largest default size: latency no longer counts
    t = collective_time("all_reduce", S, 64, dgx)
    assert bus_bandwidth_Bps("all_reduce", S, 64, t) == pytest.approx(MULTI_NODE_BUSBW, rel=0.03)
    # at 1 GB, by hand: a ring through 8 nodes runs 8 rings in parallel over the node's NICs,
    # B = min(NVLink 300 x 0.80, 8 x 25 x 0.92) GB/s, alpha = max(NVLink 2 us, IB 1 us); the
    # hierarchical form (reduce-scatter in the node, all-reduce of S/8 over the NICs, all-gather)
    # is slower here
    S, n = 1e9, 64
    ring = 2 * (n - 1) / n * S / min(300e9 * 0.80, 8 * 25e9 * 0.92) + 2 * (n - 1) * 2e-6
    hier = 2 * 7 / 8 * S / (300e9 * 0.80) + 2 * 7 / 8 * (S / 8) / (25e9 * 0.92) + 2 * 7 * 2e-6 + 2 * 7 * 1e-6
    assert collective_time("all_reduce", S, n, dgx) == pytest.approx(min(ring, hier), rel=1e-12)


def test_one_rank_per_node_gets_one_nic_share(dgx):
    # data-parallel groups with tp = 8: each of the node's 8 groups owns one of the 8 NICs
    t = collective_time("all_reduce", 16 * 2**30, 32, dgx, ranks_per_node=1)
    assert bus_bandwidth_Bps("all_reduce", 16 * 2**30, 32, t) == pytest.approx(MULTI_NODE_BUSBW / 8, rel=0.03)
    assert nic_bw_per_gpu_Bps(dgx) == pytest.approx(25e9 * 0.92)


def test_busbw_conventions():
    assert bus_bandwidth_Bps("all_reduce", 8.0, 8, 1.0) == pytest.approx(8 * 2 * 7 / 8)
    assert bus_bandwidth_Bps("all_gather", 8.0, 8, 1.0) == pytest.approx(7.0)
    assert bus_bandwidth_Bps("p2p", 8.0, 2, 1.0) == pytest.approx(8.0)


def test_gather_and_scatter_add_up_to_an_allreduce(dgx):
    S = 3e8
    ag = collective_time("all_gather", S, 8, dgx)
    rs = collective_time("reduce_scatter", S, 8, dgx)
    assert ag + rs == pytest.approx(collective_time("all_reduce", S, 8, dgx, algorithm="ring"))


def test_single_rank_costs_nothing(dgx):
    for op in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "p2p"):
        assert collective_time(op, 1e9, 1, dgx) == 0.0


def test_vectorised_matches_scalar(dgx):
    sizes = np.array([1e3, 1e6, 1e9])
    ns = np.array([2, 16, 256])
    vec = collective_time("all_reduce", sizes, ns, dgx)
    for i in range(3):
        assert vec[i] == pytest.approx(collective_time("all_reduce", sizes[i], int(ns[i]), dgx))


@settings(max_examples=40, deadline=None)
@given(st.floats(1e3, 1e10), st.integers(2, 512))
def test_more_bytes_never_faster(nbytes, n):
    dgx = load_system("dgx-a100")
    for op in ("all_reduce", "all_gather", "all_to_all"):
        assert collective_time(op, nbytes * 2, n, dgx) >= collective_time(op, nbytes, n, dgx)


def test_faster_fabric_never_slower():
    a100, h100 = load_system("dgx-a100"), load_system("dgx-h100")
    assert intra_bw_Bps(h100) > intra_bw_Bps(a100)
    for n in (8, 64):
        assert collective_time("all_reduce", 1e9, n, h100) < collective_time("all_reduce", 1e9, n, a100)


def test_cross_node_group_without_network_is_a_one_line_error():
    box = load_hardware("8xh100-sxm")
    with pytest.raises(RoofplanError, match="no network"):
        collective_time("all_reduce", 1e9, 16, box)
    with pytest.raises(RoofplanError, match="unknown collective"):
        collective_time("broadcast", 1e9, 8, box)


def test_serving_tp_allreduce_goes_through_comm():
    # decode with tp 4: each layer's two all-reduces cost what simulator.core.comm says
    from simulator.core.models import load_model
    from simulator.core.predict import predict
    from simulator.core.workload import Job
    system = load_system("dgx-h100")
    model = load_model("llama-3.1-8b")
    p = predict(model, system, Job(phase="decode", batch=16, context=512, tp=4))
    comm = p.ops[p.ops["cls"] == "communication"]
    per_call = collective_time("all_reduce", 16 * model.hidden * 2, 4, system)
    assert comm["time_s"].sum() == pytest.approx(2 * model.n_layers * per_call, rel=1e-9)
