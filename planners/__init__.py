"""Planners: search a space of plans with a solver, scoring each plan with the core cost model."""
