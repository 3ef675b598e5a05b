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
from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from simulator.core.paths import data_dir
from simulator.core.errors import RoofplanError, did_you_mean
from simulator.serving.simulate import RequestMix
from simulator.core.schema import Name, NonNegative, Positive, Strict, Text, check, read_yaml


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
    return data_dir("ROOFPLAN_SERVING_DIR", "workloads", "serving")


MAX_TOKENS = 10_000_000     # beyond any context window: a typo, not a request


Tokens = Annotated[int, Field(ge=1, le=MAX_TOKENS)]


class Histogram(Strict):
    edges: list[Tokens] = Field(min_length=2)   # bin edges, tokens
    shares: list[NonNegative] = Field(min_length=1)                                # of requests per bin

    @model_validator(mode="after")
    def _bins(self):
        if len(self.edges) != len(self.shares) + 1:
            raise ValueError(f"needs one more edge than shares (got {len(self.edges)} edges, {len(self.shares)} shares)")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError(f"'edges' must increase (got {self.edges})")
        if sum(self.shares) <= 0:
            raise ValueError("'shares' must have a positive sum")
        return self

    def bins(self) -> list[tuple[int, int, float]]:
        tot = float(sum(self.shares))
        return [(self.edges[i], self.edges[i + 1], self.shares[i] / tot) for i in range(len(self.shares))]


class ServingWorkloadFile(Strict):
    name: Name | None = None
    description: Text | None = None
    source: Text                                       # where the length distribution comes from
    request_rate_rps: Positive
    input_tokens: Histogram | None = None
    output_tokens: Histogram | None = None
    samples: list[Annotated[list[Tokens], Field(min_length=2, max_length=2)]] | None = \
        Field(None, min_length=1)                      # [input, output] tokens, each equally likely

    @model_validator(mode="after")
    def _one_form(self):
        hist = self.input_tokens is not None or self.output_tokens is not None
        if (self.samples is not None) == hist or (hist and (self.input_tokens is None or self.output_tokens is None)):
            raise ValueError("give either samples: [[in, out], ...] or both input_tokens and output_tokens histograms")
        return self


def parse_workload(data, path) -> ServingWorkload:
    f = check(ServingWorkloadFile, data, path, fix="see workloads/serving/chat.yaml")
    if f.samples is not None:
        buckets = tuple(Bucket(i, i, o, o, 1.0 / len(f.samples)) for i, o in f.samples)
    else:
        buckets = tuple(Bucket(a, b, c, d, p * q) for a, b, p in f.input_tokens.bins()
                        for c, d, q in f.output_tokens.bins() if p * q > 0)
    return ServingWorkload(name=f.name or Path(path).stem, rate_rps=float(f.request_rate_rps), buckets=buckets,
                           source=f.source)


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
