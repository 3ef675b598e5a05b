"""Planners: searches over plans that score each candidate with the simulator's cost functions.

Every planner registers a subcommand of `roofplan plan` through `plan_subparsers`, which creates
the `plan` command once and hands back its subparsers (several planner modules share it).
"""
from __future__ import annotations


def plan_subparsers(sub):
    """The subparsers of `roofplan plan`, created on first use."""
    plan = sub.choices.get("plan")
    if plan is None:
        plan = sub.add_parser("plan", help="search plans: `roofplan plan parallel ...`")
        plan.set_defaults(func=lambda args: (plan.print_help(), 2)[1])
        plan._roofplan_sub = plan.add_subparsers(dest="planner", metavar="PLANNER")
    return plan._roofplan_sub
