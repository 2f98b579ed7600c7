"""Local ports for tests: one free to listen on, which nothing listens on either."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port() -> int:
    """A port of 127.0.0.1 the system just handed out and took back: a server may bind it, and
    until one does, a connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
