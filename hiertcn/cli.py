"""The `hiertcn` command: data statistics, training, evaluation, export and experiments.

Each subcommand lives in its own module that exposes `register(subparsers)`. Modules import
their heavy dependencies (torch, onnx) inside the handlers, so `hiertcn --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from hiertcn import command_line
from hiertcn.errors import HierTCNError, Terminated
from hiertcn.signals import sigterm_as_interrupt

logger = logging.getLogger(__name__)

# The -v help of every parser level.
_VERBOSE_HELP = (
    "log at DEBUG level, including the traceback of a reported error (default: INFO level)"
)

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
    return command_line.build_parser(
        "hiertcn",
        "Train, evaluate and export HierTCN recommenders on interaction logs.",
        _COMMAND_MODULES,
        lambda name: _VERBOSE_HELP,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `hiertcn` command and return its exit code."""
    parser = build_parser()
    args = command_line.parse_arguments(parser, argv)
    command_line.configure_logging(command_line.verbosity(args))
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
