"""The `hiertcn` command: data statistics, training, evaluation, export and experiments.

Each subcommand lives in its own module that exposes `register(subparsers)`. Modules import
their heavy dependencies (torch, onnx) inside the handlers, so `hiertcn --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from hiertcn.errors import HierTCNError, Terminated

logger = logging.getLogger(__name__)

# Modules whose `register(subparsers)` adds one top-level subcommand each.
_COMMAND_MODULES = (
    "hiertcn.commands.data",
    "hiertcn.commands.train",
    "hiertcn.commands.evaluate",
    "export.command",
    "hiertcn.commands.experiment",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="hiertcn",
        description="Train, evaluate and export HierTCN recommenders on interaction logs.",
    )
    _add_verbose_flag(parser, default=0)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.register(subparsers)
    # -v also works after a subcommand (`hiertcn data stats log.csv -v`). A subcommand sets it
    # only when given, because a default there would replace the value given before the
    # subcommand.
    for subcommand in _subcommand_parsers(parser):
        if "-v" not in subcommand._option_string_actions:
            _add_verbose_flag(subcommand, default=argparse.SUPPRESS)
    return parser


def _add_verbose_flag(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default,
        help="log at DEBUG level, including the traceback of a reported error "
        "(default: INFO level)",
    )


def _subcommand_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Yield the parser of every subcommand below `parser`, at any depth, once each."""
    seen: set[int] = set()
    pending = [parser]
    while pending:
        current = pending.pop()
        for action in current._actions:
            if not isinstance(action, argparse._SubParsersAction):
                continue
            for subcommand in action.choices.values():
                if id(subcommand) not in seen:
                    seen.add(id(subcommand))
                    pending.append(subcommand)
                    yield subcommand


def configure_logging(verbosity: int) -> None:
    """Set up the one logging configuration that every entry point shares."""
    level = logging.WARNING if verbosity < 0 else (logging.INFO, logging.DEBUG)[min(verbosity, 1)]
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    # A second SIGTERM, e.g. from a supervisor that escalates, ends the process at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Raise `Terminated`, a KeyboardInterrupt, on SIGTERM in the body; restore the handler after.

    Python installs signal handlers only in the main thread, so elsewhere the body runs with
    the handler unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `hiertcn` command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        with sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except HierTCNError as error:
        logger.debug("command failed", exc_info=True)
        print(f"hiertcn: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as interrupt:
        # A command may raise KeyboardInterrupt with a message on what it saved. SIGTERM
        # (`Terminated`) gets the same message and the exit code of a process it ended.
        detail = f": {interrupt}" if str(interrupt) else ""
        print(f"hiertcn: interrupted{detail}", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(interrupt, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
