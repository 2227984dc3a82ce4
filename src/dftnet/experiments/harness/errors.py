"""The error a data reader raises for a user's data: the CLI reports it as one line, not a traceback."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(RuntimeError):
    """A dataset or corpus could not be found or failed a structural or integrity check; the message names
    the file and what is wrong with it."""
