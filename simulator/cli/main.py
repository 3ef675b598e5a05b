"""`roofplan` command line: parse, call the library, print. Subcommands live in their own modules
and register through COMMANDS (imported lazily, so `roofplan hw list` never imports pulp or torch).

A command module exposes `register(subparsers)` that adds its parser(s) and sets
`func=handler` on them; `handler(args)` returns an exit code. User errors raise RoofplanError:
main() prints them on one line and exits with 2. The library names fields, not flags (a
`FieldError` says "tp = 3: ..."); main() spells the field as the flag that sets it ("--tp 3: ...").
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys

from simulator.core.errors import SHOW_CHARS, FieldError, FixError, RoofplanError, clip

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
    "simulator.cli.selfcheck",
    "simulator.cli.serve",
]


# fields whose flag is not "--" + field with "_" -> "-" (the default in flag_of)
FLAG_OF_FIELD = {
    "offload_weights": "--offload weights=",   # Job.offload_weights: --offload weights=cpu
    "gpu_mem_bytes": "--gpu-memory",           # OffloadRequest caps (the flags take GiB)
    "host_mem_bytes": "--host-memory",
    "nvme_bytes": "--nvme",
    "max_gpus": "--max-per-type",              # plan_fleet inventory caps
    "step_time_s": "--step-time",              # calibrate: wall time of a host-bound step
    "power_cap_w": "--power-cap",              # Job.power_cap_w (W per GPU)
    "power_budget_w": "--power-budget-kw",     # planners' power budget (the flag takes kW)
}


def flag_of(field: str) -> str:
    """The flag that sets `field` ("micro_batch" -> "--micro-batch")."""
    return FLAG_OF_FIELD.get(field) or "--" + field.replace("_", "-")


def _command_options(parser: argparse.ArgumentParser, func) -> set[str]:
    """Option strings of the (sub)parser(s) that dispatch to `func`, the command that ran."""
    out: set[str] = set()
    if parser.get_default("func") is func:
        out |= set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _command_options(sub, func)
    return out


def field_error_message(e: FieldError, options: set[str] | None = None) -> str:
    """`e` with its field spelled as the flag that sets it; as the library's "field =" when the
    command has no such flag (the value came from a file, e.g. a sweep grid or end_to_end.yaml)."""
    flag = flag_of(e.field)
    if options is not None and flag.split()[0] not in options:
        return str(e)
    msg = e.for_flags(flag_of)
    return msg.replace(f"{flag} ", flag, 1) if flag.endswith("=") else msg   # "--offload weights=disk"


_LONG_QUOTE = re.compile(r"'([^']{%d,})'" % (SHOW_CHARS + 1))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2, like every other user error
        # argparse quotes the bad value whole ("invalid int value: '...'"): a long one is cut
        raise RoofplanError(f"{self.prog}: {_LONG_QUOTE.sub(lambda m: repr(clip(m.group(1))), message)}")


def _epilog() -> str:
    """Where roofplan reads its data: the variables data_dir honours (simulator.core.paths)."""
    from simulator.core.paths import DATA_ENV_VARS
    vars_ = "; ".join(f"{var} replaces {folder}" for var, folder in DATA_ENV_VARS.items())
    return ("data: hardware specs and the model zoo come from the folder an environment variable names "
            f"({vars_}), else the checkout roofplan runs from, else the copy an installed wheel carries; "
            "`roofplan hw check` validates them.")


def _require_action(parser: argparse.ArgumentParser, args) -> None:
    """A command group given without its action (`roofplan`, `roofplan hw`, `roofplan plan`) is a
    one-line error naming the choices, like every other usage error (not a help page and exit 2)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(args, action.dest, None)
            if chosen is None:
                what = (action.metavar or action.dest).lower()
                raise RoofplanError(f"{parser.prog}: name the {what}: {', '.join(action.choices)} "
                                    f"(see {parser.prog} --help)")
            _require_action(action.choices[chosen], args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="roofplan", description="Analytical performance simulator and hardware planner for transformer workloads.",
                     epilog=_epilog())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in COMMANDS:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        _require_action(parser, args)
        return int(args.func(args) or 0)
    except FieldError as e:
        func = getattr(args, "func", None)
        options = _command_options(parser, func) if parser is not None and func else None
        print(f"roofplan: error: {field_error_message(e, options)}", file=sys.stderr)
        return 2
    except FixError as e:
        print(f"roofplan: error: {e.for_flags(flag_of)}", file=sys.stderr)
        return 2
    except RoofplanError as e:
        print(f"roofplan: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
