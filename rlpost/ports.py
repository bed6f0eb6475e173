"""Free TCP ports for processes this one is about to start.

Asking the kernel for an ephemeral port and closing the socket is racy twice over: the
kernel may hand the same port to the next caller in this process (two roles of one run got
the same port, and the second failed with "Address already in use"), and another process
may take it before the child binds it. The first race is closed here: a port is handed out
at most once per process. The second is left to the child's own error.
"""

from __future__ import annotations

import socket
import threading

_handed: set[int] = set()
_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now and not handed out before by this process."""
    with _lock:
        for _ in range(256):
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _handed:
                _handed.add(port)
                return port
    raise RuntimeError("no free TCP port that this process has not handed out already")
