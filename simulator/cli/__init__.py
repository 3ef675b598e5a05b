"""The command line: the only layer that knows flags (see simulator/__init__.py for the layers).

One naming rule: `roofplan <command>` lives in `simulator/cli/<command>.py` (`roofplan plan
<planner>` in `plan_<planner>.py`); each module has `register(subparsers)`, which adds its
parser(s), and one handler per (sub)command named `cmd_<command>[_<subcommand>]` that parses,
calls the library, prints and returns an exit code. `main.py` registers every module and turns a
library error into one line: a FieldError is spelled with the flag that sets its field.
"""
