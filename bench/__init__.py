"""Benchmarks: each script prints its figures and how it was run (see README, Benchmarks)."""

import socket

# A load generator is one address opening thousands of connections for a few users, each
# sending as fast as it can: the gateway's abuse limits would measure themselves, not it.
UNLIMITED = {
    "RATE_LIMIT_EVENTS": "1000000",
    "RATE_LIMIT_DISCONNECT": "1000000",
    "RATE_LIMIT_CONNECTIONS": "1000000",
    "MAX_CONNECTIONS_PER_USER": "1000000",
    "MAX_ROOMS_PER_SOCKET": "10000",
}


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on (for a server about to start)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
