"""Exceptions of the `stream` package. Each message names the bad value and the fix."""

from __future__ import annotations


class StreamError(Exception):
    """Base class for errors that `hiertcn-stream` reports without a traceback."""

    exit_code = 1


class ConfigError(StreamError):
    """A flag, environment variable or librdkafka setting is invalid."""

    exit_code = 2
