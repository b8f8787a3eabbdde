"""One listening socket per worker process, so the kernel spreads connections evenly over the workers.

With one socket shared by every worker, whichever worker wakes first accepts every connection waiting
(asyncio and libuv accept in a loop until none is left): a burst of keep-alive connections, as a pool of
agents opens, can all land in one worker while the others stay idle, and the server works at one core's
speed. With ``SO_REUSEPORT`` each worker listens on a socket of its own on the same address, and the kernel
hands each new connection to one of them by a hash of its addresses.

The supervisor binds the address once (a bound socket that never listens: it keeps the port, receives no
connection) and hands it to each worker it starts; what a worker receives is a new socket of its own on
that address (``ReusePortSocket.__reduce_ex__``), also when the supervisor restarts a worker.
"""

from __future__ import annotations

import socket
from typing import Any

#: Whether this platform balances connections over sockets sharing a port (Linux does, since 3.9).
AVAILABLE = hasattr(socket, "SO_REUSEPORT")


class ReusePortSocket(socket.socket):
    """A TCP socket bound with ``SO_REUSEPORT``; sent to another process, it arrives as a new one there."""

    @classmethod
    def bind_to(cls, host: str, port: int) -> ReusePortSocket:
        """A socket bound to ``host``:``port`` (0: any free port) that other sockets may bind to as well."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = cls(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return sock

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # multiprocessing would otherwise send a duplicate of this very socket (one accept queue for all).
        host, port = self.getsockname()[:2]
        return (ReusePortSocket.bind_to, (host, port))
