"""Collective communication time: alpha-beta model over a two-level topology (GPUs in a node on
the node's GPU fabric, nodes on `network_count` NICs each).

Message size S is the full buffer per rank (NCCL's `count x dtype`); n ranks, k of them per
node (N = n / k nodes). Per-rank bandwidths (bytes/s, one direction, times the achieved
efficiency below):
  B_intra = System.peer_link (NVLink/NVSwitch, or PCIe)
  B_inter = network x network_count / gpu_count x k_share   (the NICs of a node are shared by the
            gpu_count / k groups that run the same collective at once, e.g. the 8 DP groups of
            a node with tp x pp = 8 each own 1 NIC)

  ring all-reduce       t = 2 (n-1)/n S / B + 2 (n-1) alpha       B = B_intra if N = 1 else
                                                                  min(B_intra, k B_nic)
  hierarchical          reduce-scatter in the node, all-reduce of S/k across the N nodes over
  all-reduce            each rank's NIC share, all-gather in the node:
                        t = 2 (k-1)/k S / B_intra + 2 (N-1)/N (S/k) / B_nic + 2 (k-1 + N-1) alpha
  all-gather,           t = (n-1)/n S / B + (n-1) alpha  (S = the gathered output)
  reduce-scatter
  all-to-all            t = max((k-1)/n S / B_intra, (n-k)/n S / B_nic) + (n-1) alpha
  p2p (send/recv)       t = S / B + alpha  (B = B_intra inside a node, one NIC share across)

Bus bandwidth (NCCL tests' convention, which makes it comparable with the link speed):
busbw = algbw x 2(n-1)/n for all-reduce, x (n-1)/n for all-gather, reduce-scatter and
all-to-all, x 1 for p2p, with algbw = S / t.

Achieved efficiency: nccl-tests' large-message bus bandwidth over the nominal link speed.
NVLink: DGX A100 all_reduce_perf reaches ~230-240 GB/s busbw on 300 GB/s NVLink 3, DGX H100
~360 GB/s (without NVLS) on 450 GB/s NVLink 4 -> 0.80. InfiniBand: multi-node DGX A100
all_reduce_perf reaches ~185 GB/s busbw on 8 x 25 GB/s HDR -> 0.92 (NVIDIA, "DGX SuperPOD
reference architecture" and nccl-tests results in NVIDIA's "Doubling all2all performance with
NCCL 2.12" blog, https://developer.nvidia.com/blog/doubling-all2all-performance-with-nvidia-collective-communication-library-2-12/).
PCIe / Ethernet: 0.80 (host-staged copies; conservative).
"""
from __future__ import annotations

import numpy as np

from simulator.core.errors import RoofplanError
from simulator.core.specs import Link, System

EFFICIENCY_BY_LINK_TYPE = {"nvlink": 0.80, "infinity-fabric": 0.80, "pcie": 0.80,
                           "infiniband": 0.92, "ethernet": 0.80}
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "p2p")
ALGORITHMS = ("auto", "ring", "hierarchical")


def link_efficiency(link: Link) -> float:
    """Achieved / nominal bandwidth for large NCCL messages on this kind of link (see module doc)."""
    return EFFICIENCY_BY_LINK_TYPE.get(link.type, 0.80)


def intra_bw_Bps(system: System) -> float:
    link = system.peer_link
    return link.bw_Bps * link_efficiency(link)


def nic_bw_per_gpu_Bps(system: System) -> float:
    """Achieved network bandwidth each GPU of a node gets when all GPUs talk across nodes."""
    if system.network is None or system.network_count == 0:
        return 0.0
    return system.network.bw_Bps * system.network_count / system.gpu_count * link_efficiency(system.network)


def _latencies(system: System):
    a_in = system.peer_link.latency_s
    a_out = system.network.latency_s if system.network is not None else a_in
    return a_in, a_out


def collective_time(op: str, nbytes, n, system: System, ranks_per_node=None, algorithm: str = "auto"):
    """Seconds for one collective of `nbytes` (per rank, see module doc) over `n` ranks placed
    `ranks_per_node` to a node (default: packed, min(n, gpu_count)). Vectorised over nbytes, n
    and ranks_per_node (numpy broadcasting); returns a float for scalar input."""
    if op not in COLLECTIVES:
        raise RoofplanError(f"unknown collective '{op}'; use one of {', '.join(COLLECTIVES)}")
    if algorithm not in ALGORITHMS:
        raise RoofplanError(f"unknown algorithm '{algorithm}'; use one of {', '.join(ALGORITHMS)}")
    S = np.asarray(nbytes, float)
    n_arr = np.asarray(n, float)
    k = np.minimum(n_arr, system.gpu_count) if ranks_per_node is None else np.asarray(ranks_per_node, float)
    k = np.clip(k, 1, np.maximum(n_arr, 1))
    nodes = np.ceil(n_arr / k)
    multi = nodes > 1
    b_in = intra_bw_Bps(system)
    b_nic = nic_bw_per_gpu_Bps(system)
    if np.any(multi) and b_nic <= 0:
        raise RoofplanError(f"{system.name} has no network in its spec, so groups cannot span nodes; "
                            f"add network/network_count to hardware_specs/systems/{system.name}.yaml or use fewer GPUs")
    a_in, a_out = _latencies(system)
    b_nic_safe = max(b_nic, 1e-30)
    # a ring through N nodes crosses each node boundary on k parallel rings (one per local rank)
    b_ring = np.where(multi, np.minimum(b_in, k * b_nic_safe), b_in)
    alpha = np.where(multi, np.maximum(a_in, a_out), a_in)
    nm1 = np.maximum(n_arr - 1, 0)
    frac = nm1 / np.maximum(n_arr, 1)
    if op == "all_reduce":
        ring = 2 * frac * S / b_ring + 2 * nm1 * alpha
        hier = (2 * (k - 1) / k * S / b_in + 2 * (nodes - 1) / nodes * (S / k) / b_nic_safe
                + 2 * (k - 1) * a_in + 2 * (nodes - 1) * a_out)
        hier = np.where(multi, hier, ring)
        t = {"ring": ring, "hierarchical": hier, "auto": np.minimum(ring, hier)}[algorithm]
    elif op in ("all_gather", "reduce_scatter"):
        t = frac * S / b_ring + nm1 * alpha
    elif op == "all_to_all":
        t = np.maximum((k - 1) / np.maximum(n_arr, 1) * S / b_in,
                       np.where(multi, (n_arr - k) / np.maximum(n_arr, 1) * S / b_nic_safe, 0.0)) + nm1 * alpha
    else:  # p2p between two ranks: same node when k >= 2
        t = np.where(multi, S / b_nic_safe + a_out, S / b_in + a_in)
    t = np.where(n_arr <= 1, 0.0, t)
    return float(t) if np.ndim(t) == 0 else t


def bus_bandwidth_Bps(op: str, nbytes, n, time_s):
    """NCCL tests' bus bandwidth: algbw x (2(n-1)/n all-reduce | (n-1)/n gather/scatter/all-to-all | 1 p2p)."""
    algbw = np.asarray(nbytes, float) / np.asarray(time_s, float)
    n = np.asarray(n, float)
    factor = {"all_reduce": 2 * (n - 1) / n, "p2p": np.ones_like(n)}.get(op, (n - 1) / n)
    out = algbw * factor
    return float(out) if np.ndim(out) == 0 else out

