"""roofplan: an analytical performance simulator and planner for transformer workloads.

Specs (YAML) -> frozen dataclasses -> pure cost functions -> reports. Inside the library every
quantity is in SI base units (bytes, FLOP, seconds, bytes/s, FLOP/s); unit-suffixed names appear
only at the edges (YAML fields, CLI flags, printed tables).

Layers (enforced by import-linter contracts in pyproject.toml, checked by `make test`):
  simulator.cli                          command line: parse flags, call the library, print
  planners                               ILP/search planners (offload, parallelism, fleet)
  simulator.sweep, .serving, .calibration, .executor
                                         front ends over the cost model (independent of each other)
  simulator.report                       tables and figures
  simulator.core                         specs, models, ops, roofline, comm, memory, step assembly
A layer imports only the layers below it.
"""

__version__ = "0.1.0"
