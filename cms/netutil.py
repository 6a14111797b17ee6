"""Small socket helpers shared by the fleet, the demo, `cms doctor`, the lab and the tests."""

from __future__ import annotations

import socket


def bindable(address: str, port: int) -> bool:
    """Whether a TCP socket can bind (address, port) in this network namespace right now."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, port))
            return True
        except OSError:
            return False


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port on `address` that nothing listens on right now (the kernel's choice)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]
