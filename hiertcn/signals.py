"""SIGTERM as a KeyboardInterrupt, for the commands of `hiertcn` and `hiertcn-stream`.

A command that stops on Ctrl-C with a message on what it saved stops the same way on SIGTERM,
the signal that supervisors and orchestrators send. This module imports neither torch nor
numpy, so the serving side (`stream`) may import it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from hiertcn.errors import Terminated


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
