"""Serving workloads (workloads/serving/*.yaml): a request rate and input/output length
histograms (independent marginals -> input x output buckets, Melange-style) or explicit samples.

    name: chat
    source: "..."                      # where the distribution comes from
    request_rate_rps: 8
    input_tokens:  {edges: [1, 64, 256, 1024], shares: [0.4, 0.4, 0.2]}
    output_tokens: {edges: [1, 128, 512, 2048], shares: [0.3, 0.5, 0.2]}
  or
    samples: [[in, out], ...]          # each an equally likely request
A bucket's representative size is its bin midpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.core.paths import REPO_ROOT
from simulator.core.errors import RoofplanError, did_you_mean
from simulator.serving.simulate import RequestMix
from simulator.core.specs import read_yaml


@dataclass(frozen=True)
class Bucket:
    in_lo: int
    in_hi: int
    out_lo: int
    out_hi: int
    share: float

    @property
    def in_tokens(self) -> int:
        return int(round((self.in_lo + self.in_hi) / 2))

    @property
    def out_tokens(self) -> int:
        return max(1, int(round((self.out_lo + self.out_hi) / 2)))

    @property
    def label(self) -> str:
        return f"in {self.in_lo}-{self.in_hi} / out {self.out_lo}-{self.out_hi}"


@dataclass(frozen=True)
class ServingWorkload:
    name: str
    rate_rps: float
    buckets: tuple[Bucket, ...]
    source: str

    def mix(self) -> RequestMix:
        return RequestMix.of([b.in_tokens for b in self.buckets], [b.out_tokens for b in self.buckets],
                             [b.share for b in self.buckets])

    def bucket_rates_rps(self) -> np.ndarray:
        return np.array([b.share for b in self.buckets]) * self.rate_rps


def workloads_dir() -> Path:
    return REPO_ROOT / "workloads" / "serving"


def _hist(path, data, key):
    h = data.get(key)
    if not isinstance(h, dict) or "edges" not in h or "shares" not in h:
        raise RoofplanError(f"{path}: field '{key}' must be a mapping {{edges: [...], shares: [...]}}")
    edges, shares = h["edges"], h["shares"]
    if (not isinstance(edges, list) or not isinstance(shares, list) or len(edges) != len(shares) + 1
            or not shares):
        raise RoofplanError(f"{path}: field '{key}' needs len(edges) == len(shares) + 1 (got {len(edges)} edges, {len(shares)} shares)")
    if any(not isinstance(e, int) or e < 1 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise RoofplanError(f"{path}: field '{key}.edges' must be increasing positive integers (got {edges})")
    if any(not isinstance(s, (int, float)) or s < 0 for s in shares) or sum(shares) <= 0:
        raise RoofplanError(f"{path}: field '{key}.shares' must be numbers >= 0 with a positive sum (got {shares})")
    tot = float(sum(shares))
    return [(edges[i], edges[i + 1], shares[i] / tot) for i in range(len(shares))]


def parse_workload(data, path) -> ServingWorkload:
    if not isinstance(data, dict):
        raise RoofplanError(f"{path}: expected a YAML mapping with request_rate_rps and input_tokens/output_tokens or samples")
    if not data.get("source"):
        raise RoofplanError(f"{path}: field 'source' is missing; say where the length distribution comes from")
    rate = data.get("request_rate_rps")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0:
        raise RoofplanError(f"{path}: field 'request_rate_rps' must be a number > 0 (got {rate!r})")
    if "samples" in data:
        s = data["samples"]
        if (not isinstance(s, list) or not s or any(not isinstance(p, list) or len(p) != 2 or
                any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in p) for p in s)):
            raise RoofplanError(f"{path}: field 'samples' must be a list of [input_tokens, output_tokens] positive integer pairs")
        buckets = tuple(Bucket(i, i, o, o, 1.0 / len(s)) for i, o in s)
    else:
        ins, outs = _hist(path, data, "input_tokens"), _hist(path, data, "output_tokens")
        buckets = tuple(Bucket(a, b, c, d, p * q) for a, b, p in ins for c, d, q in outs if p * q > 0)
    return ServingWorkload(name=str(data.get("name", Path(path).stem)), rate_rps=float(rate),
                           buckets=buckets, source=str(data["source"]))


def load_serving_workload(name_or_path: str) -> ServingWorkload:
    """By name (workloads/serving/<name>.yaml) or path."""
    p = Path(name_or_path)
    if not p.suffix:
        p = workloads_dir() / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(x.stem for x in workloads_dir().glob("*.yaml"))
        raise RoofplanError(f"workload '{name_or_path}' not found{did_you_mean(p.stem, known)}; "
                            f"use one of {', '.join(known)} or a path to a .yaml file")
    return parse_workload(read_yaml(p), p)
