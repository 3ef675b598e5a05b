"""`roofplan plan <planner>`: the shared command group every planner module registers under."""
from __future__ import annotations


def plan_subparsers(sub):
    """The `plan` command's own subparsers, created once and shared by every planner module."""
    import argparse
    parser = sub.choices.get("plan")
    if parser is None:
        parser = sub.add_parser("plan", help="search for the best plan (offload, parallelism, ...)")
        parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    for action in parser._actions:          # another planner module may have made them already
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="planner", metavar="PLANNER", parser_class=type(parser))
