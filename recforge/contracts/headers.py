"""HTTP headers the fleet's balancer and its clients agree on."""

from __future__ import annotations

from collections.abc import Mapping

NODE_HEADER = "X-RecForge-Node"  # set by the balancer on every answer: the name of the node that served it


def served_by(headers: Mapping[str, str]) -> str | None:
    """The fleet node that served a response through the balancer (its ``X-RecForge-Node`` header), or None."""
    return headers.get(NODE_HEADER)
