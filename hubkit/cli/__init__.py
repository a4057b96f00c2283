"""The `hubkit` command. Exit code 0 on success, 1 with a one-line reason on stderr on failure."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import HubkitError
from . import _hub, _models, _optimize, _plant, _plant_data, _search, _segma, _serve  # noqa: F401  (importing them registers their commands, in this order)
from ._registry import COMMANDS, GROUPS, SHARED, Arg, Command, arg, command, group

__all__ = ["COMMANDS", "GROUPS", "SHARED", "Arg", "Command", "arg", "build_parser", "command", "group", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every registered command, in declaration order (groups where their first command is)."""
    parser = argparse.ArgumentParser(prog="hubkit", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, cmd in COMMANDS.items():
        head, _, _ = name.partition(" ")
        if head in GROUPS and head not in groups:
            p = sub.add_parser(head, help=GROUPS[head])
            groups[head] = p.add_subparsers(dest=f"{head}_command", required=True, metavar="SUBCOMMAND")
        cmd.add_to(groups.get(head, sub))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command: exit 0, or 1 with a one-line reason on stderr (-vv also logs the traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from .._logging import install_redaction, redact

    install_redaction()
    if not args.verbose:  # library notices (a slower processor fallback) would break the one-line contract
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if getattr(args, "offline", False):
        os.environ["HF_HUB_OFFLINE"] = "1"

    def fail(err: BaseException) -> int:
        logging.getLogger("hubkit.cli").debug("hubkit %s failed", args.command, exc_info=err)
        notes = " ".join(getattr(err, "__notes__", []))
        reason = " ".join(f"{err} {notes}".split()) or type(err).__name__  # one line, whatever the library wrote
        print(f"hubkit {args.command}: {redact(reason)}", file=sys.stderr)
        return 1

    def stdout_closed() -> bool:
        """True if stdout is a pipe nobody reads any more (`hubkit ls | head -1`); then point it at devnull."""
        import select

        try:
            fd = sys.stdout.fileno()
            poller = select.poll()  # a pipe whose reader is gone polls as an error
            poller.register(fd, select.POLLOUT)
            if not any(event & select.POLLERR for _, event in poller.poll(0)):
                return False  # the broken pipe was another one (a socket, a subprocess)
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)  # so Python's flush at exit does not report it either
        except (OSError, ValueError, AttributeError):  # stdout is no real file (captured): the pipe was another
            return False
        return True

    try:
        code = COMMANDS[args._command].run(args) or 0
        sys.stdout.flush()  # a closed pipe surfaces here, not in Python's shutdown, which would print it
        return code
    except BrokenPipeError as err:  # the reader went away: quiet, like `git log | head -1`, but exit 0 as promised
        return 0 if stdout_closed() else fail(err)
    except (HubkitError, OSError, ValueError) as err:  # ours, then disk full / permissions / a library's refusal
        return fail(err)
    except KeyboardInterrupt:
        print(f"hubkit {args.command}: interrupted", file=sys.stderr)
        return 130
