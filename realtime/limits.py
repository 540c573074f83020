"""What one client may cost: its outgoing queue's bounds, token buckets (events per connection,
connections per address, failed logins) and the client's address as a trusted proxy names
it."""

from __future__ import annotations

import collections
import dataclasses
import enum
import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping

BUCKETS_MAX = 100_000  # addresses remembered; past it, the idle ones are forgotten
# failed Admin UI logins: from one client address, and from all of them together
LOGIN_FAILURES_PER_ADDRESS_PER_MINUTE = 5
LOGIN_FAILURES_PER_ADDRESS_BURST = 10
LOGIN_FAILURES_PER_MINUTE = 30
LOGIN_FAILURES_BURST = 60


@dataclasses.dataclass(frozen=True, slots=True)
class Bounds:
    """How much may wait in one client's outgoing queue, in packets and in bytes."""

    packets: int
    bytes: int


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; each admitted thing takes one."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, now: float):
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = now

    def take(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def idle(self, now: float) -> bool:
        """Full again: forgetting it changes nothing."""
        return self._tokens + (now - self._stamp) * self._rate >= self._burst

    def give_back(self) -> None:
        """Return the token last taken (what it admitted did not count after all)."""
        self._tokens = min(self._burst, self._tokens + 1.0)


class KeyedBuckets:
    """A bucket per key (a client address), bounded in number: when `BUCKETS_MAX` are kept,
    the full ones are forgotten (an address that waited a burst's time starts afresh), and if
    none is, the least recently used (a flood of addresses does not reset a busy one)."""

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        most: int = BUCKETS_MAX,
    ):
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._most = most
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def take(self, key: str) -> bool:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._most:
                self._forget_idle(now)
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, now)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def give_back(self, key: str) -> None:
        """Return the token `take(key)` last took."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.give_back()

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, bucket in self._buckets.items() if bucket.idle(now)]:
            del self._buckets[key]
        while len(self._buckets) >= self._most:  # all busy: the least recently used go
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


class LoginGuard:
    """Failed logins (the Admin UI's), counted per client address and over all addresses:
    while either has had its fill, every login is refused before its credentials are even
    compared, so that guessing costs the same from one connection, many connections or many
    addresses. Someone who fails on purpose can keep the door shut for a while; nobody can
    guess through it. A login takes its allowance before it is compared, and a good one gives
    it back: logins at once cannot all pass the check before any failure is counted."""

    def __init__(self, trusted: tuple[Network, ...], clock: Callable[[], float] = time.monotonic):
        self._trusted = trusted
        self._clock = clock
        self._addresses = KeyedBuckets(
            LOGIN_FAILURES_PER_ADDRESS_PER_MINUTE / 60,
            LOGIN_FAILURES_PER_ADDRESS_BURST,
            clock=clock,
        )
        self._overall = TokenBucket(LOGIN_FAILURES_PER_MINUTE / 60, LOGIN_FAILURES_BURST, clock())

    def address(self, environ: Mapping[str, str]) -> str:
        return address_key(client_address(environ, self._trusted))

    def try_login(self, environ: Mapping[str, str]) -> bool:
        """Take one login's allowance for this client: False (nothing taken) when there is
        none left, here or overall. Give it back with `succeeded` if the login is good."""
        now, address = self._clock(), self.address(environ)
        if not self._overall.take(now):
            return False
        if not self._addresses.take(address):
            self._overall.give_back()
            return False
        return True

    def succeeded(self, environ: Mapping[str, str]) -> None:
        """The login `try_login` admitted was good: it does not count as a failure."""
        self._overall.give_back()
        self._addresses.give_back(self.address(environ))


# the answer to a connection past its address's rate, in its handshake or its 429
TOO_MANY_CONNECTIONS = "too many new connections from this address: retry shortly"


class Admission(enum.Enum):
    """What becomes of a new connection, by its address's rate."""

    ADMITTED = "admitted"
    REFUSED = "refused"  # it opens, and its Socket.IO handshake is refused `rate_limited`
    TURNED_AWAY = "turned away"  # refused before it opens (HTTP 429)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(proxies: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def client_address(environ: Mapping[str, str], trusted: tuple[Network, ...]) -> str:
    """The client's address: the TCP peer, or, when the peer is a trusted proxy, the nearest
    address in X-Forwarded-For that is not one (what a client writes there itself is only
    believed behind proxies that are all trusted)."""
    peer = environ.get("REMOTE_ADDR", "")
    if not trusted or not _within(peer, trusted):
        return peer
    forwarded = [part.strip() for part in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    for address in reversed([part for part in forwarded if part]):
        if not _within(address, trusted):
            parsed = _parsed(address)
            return str(parsed) if parsed is not None else peer
    return peer


def address_key(address: str) -> str:
    """What an address's limits are kept by: an IPv6 address by its /64 (one host is given a
    whole /64, and could take a new address per connection), an IPv4 address by itself."""
    parsed = _parsed(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed) if parsed is not None else address


def _parsed(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as proxies write it: maybe `[v6]:port` or `v4:port`, maybe v4 mapped in v6."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    parsed = _parsed(address)
    return parsed is not None and any(parsed in network for network in networks)


def _is_address(text: str) -> bool:
    return _parsed(text) is not None
