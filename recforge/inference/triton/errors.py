"""The error a Triton server raises here: it could not be started, did not become ready, or refused a request."""

from __future__ import annotations

from recforge.core.errors import RecForgeError


class TritonError(RecForgeError):
    """The Triton server could not be started, did not become ready, or refused a request."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status

