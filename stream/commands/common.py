"""Parts that the `run` and `replay` commands share: the bundle load, option parsing and help."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.errors import ConfigError

if TYPE_CHECKING:
    from export.bundle import ModelBundle

# The part of --publish-on-session-close's help that `run` and `replay` share.
SESSION_CLOSE_HELP = (
    "when a timer closes an idle session (the event-time watermark has passed the session's "
    "last event time plus the session gap), also publish the recommendation for the first "
    "event of the user's next session: one extra output per timer close, with the fields of "
    "an event output, event_id null, ts the event time at which the session expired, session "
    'the number of the next session, and trigger "session_close". A session that the user\'s '
    "next event closes (a gap close) gets no extra output, and event outputs are unchanged."
)


def argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap an option parser so that argparse shows its message, not only its name."""

    def parse_flag(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    parse_flag.__name__ = getattr(parse, "__name__", "value")
    return parse_flag


def open_bundle(path: Path, device: str, device_source: str = "--device") -> ModelBundle:
    """Load the model bundle at `path`; a bundle error becomes a `ConfigError` for the CLI.

    `device_source` is the flag or the environment variable that set `device`, which the
    advice for an unusable CUDA device names in place of the Python API's device='cpu'.
    """
    from export.bundle import load_bundle
    from export.errors import CudaUnavailableError, ExportError

    if path.is_file():
        raise ConfigError(
            f"cannot load the model bundle {path}, because it is a file: pass the bundle folder "
            "that `hiertcn export` wrote, which contains manifest.json"
        )
    try:
        return load_bundle(path, device=device)
    except CudaUnavailableError as error:
        if device_source.startswith("-"):
            fix = f"Pass {device_source} cpu or auto"
        else:
            fix = f"Set {device_source}=cpu or auto"
        raise ConfigError(
            f"cannot load the model bundle {path}: device 'cuda' requested, but {error.reason}. "
            f"{fix}, or {error.remedy}"
        ) from error
    except ExportError as error:
        raise ConfigError(f"cannot load the model bundle {path}: {error}") from error
