"""Fetching only from public addresses: the rule (`refusal`) and the httpx transport that applies it.

Output URLs come from providers' reports, so a forged or compromised report could point the storage
handler at this machine or its network (a metadata service, an admin port). The check sits in the
connection itself, as an httpcore network backend: the backend resolves the name once, refuses what
the rule refuses and connects to the vetted address, so a DNS answer that changes between a check
and the connection (rebinding) cannot slip through, and every redirect hop, being a new request,
is checked the same way. TLS still verifies the URL's host name (httpcore passes it as SNI and the
Host header is untouched), as the address is only where the bytes go.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import httpcore
import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Refusal = Callable[[Address], str | None]
Resolve = Callable[[str, int], Awaitable[list[str]]]

_V4 = [
    ("0.0.0.0/8", "unspecified"),  # "this network"; Linux connects 0.0.0.0 to this machine
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "shared"),  # carrier-grade NAT; Alibaba Cloud's metadata service lives here
    ("169.254.169.254/32", "metadata"),
    ("169.254.0.0/16", "link-local"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "reserved"),
    ("198.18.0.0/15", "reserved"),
    ("198.51.100.0/24", "reserved"),
    ("203.0.113.0/24", "reserved"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # with the broadcast address
]
_V6 = [
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "reserved"),  # IPv4-compatible addresses, deprecated
    ("fd00:ec2::254/128", "metadata"),
    ("fc00::/7", "private"),  # unique local addresses
    ("fe80::/10", "link-local"),
    ("fec0::/10", "private"),  # site-local, deprecated
    ("ff00::/8", "multicast"),
    ("100::/64", "reserved"),
    ("2001::/23", "reserved"),  # IETF protocol assignments, Teredo among them
    ("2001:db8::/32", "reserved"),
    ("64:ff9b:1::/48", "reserved"),  # local-use NAT64
]
_V4_NETS = [(ipaddress.IPv4Network(net), reason) for net, reason in _V4]
_V6_NETS = [(ipaddress.IPv6Network(net), reason) for net, reason in _V6]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def refusal(address: Address) -> str | None:
    """Why an address is not fetched from by default ("loopback", "private", ...), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:  # reaches (or is translated to) an IPv4 address: judge that one
            return refusal(embedded)
        nets: Iterable[tuple[Any, str]] = _V6_NETS
    else:
        nets = _V4_NETS
    for net, reason in nets:
        if address in net:
            return reason
    return None if address.is_global else "reserved"


class AddressRefused(Exception):
    """A connection the rule refused; the message names the address and why, never the URL."""

    def __init__(self, address: Address, reason: str) -> None:
        super().__init__(
            f"refusing to fetch from {address} ({reason} address); "
            "set allow_private_hosts = true to allow private hosts"
        )


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses of a name in the system resolver's order (an address literal stands for itself)."""
    answers = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in answers))


class PublicOnlyBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses `refusal` allows, trying a name's addresses in turn."""

    def __init__(self, refusal: Refusal = refusal, resolve: Resolve = system_resolve) -> None:
        self._refusal = refusal
        self._resolve = resolve
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  # httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                found = await self._resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        refused: AddressRefused | None = None
        failure: Exception | None = None
        for text in found:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            reason = self._refusal(address)
            if reason is not None:
                refused = refused or AddressRefused(address, reason)
                continue
            try:
                stream = await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            await self._check_peer(stream)
            return stream
        if failure is not None:
            raise failure
        raise refused or httpcore.ConnectError(f"{host} has no address")

    async def _check_peer(self, stream: httpcore.AsyncNetworkStream) -> None:
        """The address the socket is actually connected to passes the rule too."""
        peer = stream.get_extra_info("server_addr")
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0]) if peer else None
        reason = "unknown" if address is None else self._refusal(address)
        if reason is not None:
            await stream.aclose()
            raise AddressRefused(address or ipaddress.IPv4Address(0), reason)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PublicOnlyTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool on a PublicOnlyBackend.

    httpx takes no network backend, so the pool it builds is replaced by one built the same way (its
    defaults, no proxy: the client that uses this must not read proxy settings, or the proxy would
    do the connecting out of this check's sight).
    """

    def __init__(self, *, refusal: Refusal = refusal, resolve: Resolve = system_resolve) -> None:
        super().__init__()
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PublicOnlyBackend(refusal, resolve),
        )
