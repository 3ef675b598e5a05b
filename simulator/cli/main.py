"""`roofplan` command line: parse, call the library, print. Subcommands live in their own modules
and register through COMMANDS (imported lazily, so `roofplan hw list` never imports pulp or torch).

A command module exposes `register(subparsers)` that adds its parser(s) and sets
`func=handler` on them; `handler(args)` returns an exit code. User errors raise RoofplanError:
main() prints them on one line and exits with 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from simulator.core.errors import RoofplanError

# module paths of command groups; each registers its own subcommands
COMMANDS = [
    "simulator.cli.predict",
    "simulator.cli.hw",
    "simulator.cli.whatif",
    "simulator.cli.plan_offload",
    "simulator.cli.plan_parallel",
    "simulator.cli.plan_fleet",
    "simulator.cli.sweep",
    "simulator.cli.calibrate",
    "simulator.cli.validate",
    "simulator.cli.run",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2, like every other user error
        raise RoofplanError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="roofplan", description="Analytical performance simulator and hardware planner for transformer workloads.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in COMMANDS:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except RoofplanError as e:
        print(f"roofplan: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
