"""roofplan: an analytical performance simulator and planner for transformer workloads.

Specs (YAML) -> frozen dataclasses -> pure cost functions -> reports. Inside the library every
quantity is in SI base units (bytes, FLOP, seconds, bytes/s, FLOP/s); unit-suffixed names appear
only at the edges (YAML fields, CLI flags, printed tables).
"""
from pathlib import Path

__version__ = "0.1.0"

REPO_ROOT = Path(__file__).resolve().parent.parent
