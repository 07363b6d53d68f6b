"""SIGTERM and SIGINT: the first one raises or is recorded, a second one ends the process."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from tests.conftest import REPO_ROOT


def run_script(source: str) -> subprocess.CompletedProcess[str]:
    """Run `source` in a Python process of its own, whose signals the test may end it with."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# Sends SIGTERM twice inside `sigterm_as_interrupt`: the first raises `Terminated`, the second
# comes while the command is still reporting what it saved.
TWO_SIGTERMS = """
import os, signal, time
from hiertcn.errors import Terminated
from hiertcn.signals import sigterm_as_interrupt

def wait_for_signal():
    for _ in range(500):
        time.sleep(0.01)

with sigterm_as_interrupt():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for_signal()
        print("first SIGTERM ignored", flush=True)
    except Terminated:
        print("first SIGTERM raised", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for_signal()
        print("second SIGTERM ignored", flush=True)
"""


def test_second_sigterm_ends_process() -> None:
    completed = run_script(TWO_SIGTERMS)

    assert completed.stdout == "first SIGTERM raised\n", completed.stderr
    assert completed.returncode == -signal.SIGTERM


def test_handler_restored_after_block() -> None:
    from hiertcn.errors import Terminated
    from hiertcn.signals import sigterm_as_interrupt

    def previous(signum: int, frame: object) -> None:
        raise AssertionError("the previous handler ran")

    original = signal.signal(signal.SIGTERM, previous)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is not previous
        assert signal.getsignal(signal.SIGTERM) is previous
        try:
            with sigterm_as_interrupt():
                signal.raise_signal(signal.SIGTERM)
        except Terminated:
            pass
        else:
            raise AssertionError("SIGTERM did not raise Terminated")
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, original)


# Sends SIGINT twice inside `sigterm_as_interrupt`: the first raises KeyboardInterrupt, the second
# comes during the clean-up and ends the process without raising into it.
TWO_SIGINTS = """
import os, signal, time
from hiertcn.signals import sigterm_as_interrupt

# A test run in a shell's background job inherits an ignored SIGINT, which the block keeps.
signal.signal(signal.SIGINT, signal.default_int_handler)

def wait_for_signal():
    for _ in range(500):
        time.sleep(0.01)

try:
    with sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGINT)
        wait_for_signal()
        print("first SIGINT ignored", flush=True)
except KeyboardInterrupt:
    print("first SIGINT raised", flush=True)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        wait_for_signal()
        print("second SIGINT ignored", flush=True)
    except KeyboardInterrupt:
        print("second SIGINT raised", flush=True)
"""


def test_second_sigint_ends_process() -> None:
    completed = run_script(TWO_SIGINTS)

    assert completed.stdout == "first SIGINT raised\n", completed.stderr
    assert completed.returncode == -signal.SIGINT
    assert "Traceback" not in completed.stderr


def test_sigint_handler_restored_after_block() -> None:
    from hiertcn.signals import sigterm_as_interrupt

    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, original)


def test_ignored_sigint_stays_ignored() -> None:
    from hiertcn.signals import sigterm_as_interrupt

    original = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, original)


# Sends SIGTERM twice inside `stop_requests`: the first is recorded, the second ends the process.
RECORDED_SIGTERMS = """
import os, signal, time
from hiertcn.errors import Terminated
from hiertcn.signals import stop_requests

with stop_requests() as request:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(500):
        if request.signum is not None:
            break
        time.sleep(0.01)
    print("recorded", request.signum == signal.SIGTERM, flush=True)
try:
    request.raise_interrupt()
except Terminated:
    print("raised Terminated", flush=True)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(5)
print("second SIGTERM ignored", flush=True)
"""


def test_stop_request_recorded_then_second_signal_ends_process() -> None:
    completed = run_script(RECORDED_SIGTERMS)

    assert completed.stdout == "recorded True\nraised Terminated\n", completed.stderr
    assert completed.returncode == -signal.SIGTERM


def test_stop_requests_restore_handlers_and_keep_ignored_signals() -> None:
    from hiertcn.signals import stop_requests

    def previous(signum: int, frame: object) -> None:
        raise AssertionError("the previous handler ran")

    original_term = signal.signal(signal.SIGTERM, previous)
    original_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_requests() as request:
            assert signal.getsignal(signal.SIGTERM) is not previous
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
        assert request.signum is None
        assert signal.getsignal(signal.SIGTERM) is previous
        request.raise_interrupt()  # nothing recorded, nothing raised
    finally:
        signal.signal(signal.SIGTERM, original_term)
        signal.signal(signal.SIGINT, original_int)
