"""Errors that carry a message meant for a person: what was wrong and what to do.

Entry points catch :class:`RecForgeError` and print its message on one line instead of a traceback.
"""


class RecForgeError(Exception):
    """Base class of every error RecForge raises on purpose."""


class ConfigError(RecForgeError):
    """A configuration value or CLI argument is invalid."""


class DataError(RecForgeError):
    """Input data is missing, unreadable or does not match its checksum."""


class DataCheckError(RecForgeError):
    """A data-quality suite failed; the run must stop before training."""

    def __init__(self, message: str, failed: list[str] | None = None, data_docs: str | None = None):
        super().__init__(message)
        self.failed = failed or []
        self.data_docs = data_docs


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``err``'s message (at most ``limit`` characters), or its type's name when the
    message is empty: what a one-line report of a caught error shows."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(err).__name__
