"""SIGTERM as a KeyboardInterrupt, for the commands of `hiertcn` and `hiertcn-stream`.

A command that stops on Ctrl-C with a message on what it saved stops the same way on SIGTERM,
the signal that supervisors and orchestrators send. A second signal of the same kind ends the
process at once. The helpers at the end let a process with workers (`stream.pool`) hold the
stop signals back while it starts one, and ignore them once its exit code is known. This
module imports neither torch nor numpy, so the serving side (`stream`) may import it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from hiertcn.errors import Terminated

# The signals that ask a command to stop: from supervisors and orchestrators, and from Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    # A second SIGTERM, e.g. from a supervisor that escalates, ends the process at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # A second Ctrl-C ends the process at once, with the status of a SIGINT. Raised again, it
    # would land in whatever clean-up code runs, such as a weakref callback during garbage
    # collection, which prints a traceback and goes on.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Raise `Terminated`, a KeyboardInterrupt, on SIGTERM in the body; restore the handlers after.

    The first SIGINT raises KeyboardInterrupt as Python's own handler does, and a second
    SIGINT, like a second SIGTERM, ends the process. A SIGINT that the process ignores, as a
    shell's background job does, stays ignored. Python installs signal handlers only in the main
    thread, so elsewhere the body runs with the handlers unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_term = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        # After a first SIGINT the default action stays, so that a second one during the
        # command's report still ends the process instead of raising in it.
        if signal.getsignal(signal.SIGINT) is _raise_interrupt:
            signal.signal(signal.SIGINT, previous_int)


class StopRequest:
    """The stop signal that `stop_requests` recorded, if any."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def raise_interrupt(self) -> None:
        """Raise what `sigterm_as_interrupt` raises for the recorded signal: `Terminated` for
        SIGTERM, KeyboardInterrupt for SIGINT. Do nothing when none was recorded."""
        if self.signum == signal.SIGTERM:
            raise Terminated
        if self.signum is not None:
            raise KeyboardInterrupt


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Record the first SIGTERM or SIGINT in the body in the yielded `StopRequest`, instead of
    raising it wherever the main thread happens to be. A second one ends the process at once.

    A loop that checks the request between its steps stops at a step's end, so bookkeeping
    such as counting a delivery report is never cut in two. A signal that the process ignores
    stays ignored. Elsewhere than in the main thread the body runs with the handlers unchanged.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def record(signum: int, frame: FrameType | None) -> None:
        if request.signum is None:
            request.signum = signum
        signal.signal(signum, signal.SIG_DFL)

    previous = {
        signum: signal.signal(signum, record)
        for signum in STOP_SIGNALS
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    try:
        yield request
    finally:
        # A signal that came keeps its default action, so that a second one during the
        # command's report ends the process, as after `sigterm_as_interrupt`.
        for signum, handler in previous.items():
            if signal.getsignal(signum) is record:
                signal.signal(signum, handler)


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGTERM and SIGINT in the calling thread for the body, and deliver after it those
    that arrived meanwhile.

    A process started in the body inherits the blocked signals through fork and exec, so a
    stop signal sent to it stays pending until it unblocks them with `unblock_stop_signals`,
    after it has installed its handlers.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def unblock_stop_signals() -> None:
    """Unblock SIGTERM and SIGINT in the calling thread, which handles a pending one at once."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def ignore_signals(signums: tuple[int, ...] = STOP_SIGNALS) -> None:
    """Ignore `signums` for the rest of the process, whose exit code is known.

    When the interpreter finalizes, Python gives every signal that has a Python handler its
    default action back, so a SIGINT or SIGTERM in that window would end the process with the
    signal's status in place of its exit code. An ignored signal stays ignored.
    """
    for signum in signums:
        signal.signal(signum, signal.SIG_IGN)
