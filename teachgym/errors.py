"""Errors that mean "the user asked for something that cannot be done".

The CLI prints these as one line and exits with status 2; any other exception
is a bug or a failure inside a run and is shown with its traceback (exit 1).
A library user can catch :class:`UserError` to tell the two apart as well.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what was asked: a config key or value, a path, a run directory."""


class ConfigError(UserError, ValueError):
    """A configuration value or key is invalid; the message names it."""


class RunError(UserError, RuntimeError):
    """A run directory cannot be used as asked (exists, missing, holds another config)."""
