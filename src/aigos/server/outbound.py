"""The one HTTP client the server calls out with (the AIGRC asset-card source, webhooks): no SSRF.

A URL is sent only if its scheme, its host name and every address the name resolves to pass the
:class:`OutboundPolicy`. The request then goes to the checked address itself, with the name kept for the
``Host`` header and for TLS (SNI and certificate verification), so a DNS answer that changes between the
check and the connection (DNS rebinding) cannot send it elsewhere. Redirects are followed by hand, each
target checked again; the body is read up to a bound; one deadline covers the whole exchange. Nothing
here logs, and no header value ever goes into an error's detail: ``Authorization`` may carry an API key.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import httpx

#: Resolves a host name (and port) to its IP addresses, as strings.
Resolve = Callable[[str, int], Awaitable[list[str]]]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Sent only while a redirect stays on the origin they were given for.
_CREDENTIALS = ("authorization", "cookie")
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Cloud metadata services (AWS, GCP, Azure; AWS over IPv6; Alibaba): never, not even with ``allow_private``,
#: since they hand out the host's cloud credentials and no AIGRC source or webhook lives there.
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


class OutboundRefused(Exception):
    """The request was not sent, or its answer not read, because a rule forbids it (or it could not be made).

    ``code`` is stable (``HOST_NOT_ALLOWED``, ``ADDRESS_NOT_ALLOWED``, ``SCHEME_NOT_ALLOWED``, ``TOO_LARGE``,
    ``TOO_MANY_REDIRECTS``, ``TIMEOUT``, ``UNREACHABLE``, ``BAD_URL``); ``detail`` is for people and never
    holds a header value, a URL's user information, path or query.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class OutboundPolicy:
    """What the server may call out to, and how much of the answer it reads."""

    #: Exact host names or IP addresses (lower-case), or ``*.example.com`` patterns, which match names under
    #: ``example.com`` but not ``example.com`` itself. Empty: nothing is allowed.
    allowed_hosts: frozenset[str]
    #: Private, loopback, link-local, unique-local, CGNAT, multicast, reserved and unspecified addresses.
    allow_private: bool = False
    allow_http: bool = False
    #: The most body bytes read.
    max_bytes: int = 1_048_576
    max_redirects: int = 3
    #: Seconds for the whole exchange: resolution, connections, redirects, the body.
    timeout: float = 10.0


@dataclass(frozen=True)
class OutboundResponse:
    """A complete answer: its status, headers (lower-case names), body and the URL it finally came from."""

    status: int
    headers: dict[str, str]
    body: bytes
    url: str


def policy_from_settings(
    hosts: str | Iterable[str], *, allow_private: bool = False, allow_http: bool = False
) -> OutboundPolicy:
    """A policy allowing ``hosts``: ``"a.example.com, *.corp.example"`` or an iterable of entries; an entry
    may also be a URL, whose host is taken (``https://api.aigrc.dev/x`` allows ``api.aigrc.dev``).

    Raises ``ValueError`` for an entry that is neither a host name, an IP address nor a ``*.`` pattern.
    """
    entries = re.split(r"[\s,]+", hosts) if isinstance(hosts, str) else list(hosts)
    allowed = frozenset(_host_pattern(entry.strip()) for entry in entries if entry.strip())
    return OutboundPolicy(allowed, allow_private=allow_private, allow_http=allow_http)


def address_allowed(address: str, *, allow_private: bool = False) -> bool:
    """Whether a connection to ``address`` (an IP address) may be made: a public unicast address, or with
    ``allow_private`` any address but a cloud metadata service's. Anything that does not parse is refused."""
    ip = _ip(address)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        # These IPv6 forms reach the IPv4 address they carry: that is the one to judge.
        if ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
        else:
            ip = ip.ipv4_mapped or ip.sixtofour or ip
    if ip in _METADATA:
        return False
    return allow_private or not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or ip in _CGNAT
    )


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address, without its IPv6 zone (``%eth0``): with one, the address compares unequal
    to the same address without, which would hide it from the metadata check."""
    try:
        return ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class Outbound:
    """Makes requests that the policy allows, and nothing else (see the module's documentation).

    ``transport`` replaces httpx's default; it must speak HTTP/1.1 only (HTTP/2 would multiplex requests for
    several names over one connection, verified for one of them). Whichever is used is closed by
    :meth:`aclose`. ``resolve`` replaces the system resolver.
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        user_agent: str = "aigos",
        resolve: Resolve | None = None,
    ) -> None:
        self._policy = policy
        self._transport = transport or httpx.AsyncHTTPTransport(retries=0)
        self._user_agent = user_agent
        self._resolve = resolve or _getaddrinfo

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the transport and its connections."""
        await self._transport.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> OutboundResponse:
        """Sends ``method url`` and reads the whole answer, following redirects; raises
        :class:`OutboundRefused` if a rule forbids any of it, or it fails or takes too long."""
        try:
            async with asyncio.timeout(self._policy.timeout):
                return await self._exchange(method.upper(), _parse(url), httpx.Headers(headers), content)
        except TimeoutError:
            raise OutboundRefused("TIMEOUT", f"no complete answer within {self._policy.timeout} s") from None

    async def _exchange(
        self, method: str, url: httpx.URL, headers: httpx.Headers, content: bytes | None
    ) -> OutboundResponse:
        for _ in range(self._policy.max_redirects + 1):
            try:
                response, body = await self._hop(method, url, headers, content)
            except httpx.TimeoutException:
                raise OutboundRefused("TIMEOUT", f"{_origin(url)} did not answer in time") from None
            except httpx.ConnectError as exc:
                # Its text is the system's or TLS's (refused, no route, certificate not valid), never ours.
                raise OutboundRefused("UNREACHABLE", f"{_origin(url)}: {exc}") from exc
            except httpx.TransportError as exc:
                # Only the kind: a protocol error's text can quote the header it found malformed.
                raise OutboundRefused("UNREACHABLE", f"{_origin(url)}: {type(exc).__name__}") from None
            location = response.headers.get("location")
            if response.status_code not in _REDIRECTS or location is None:
                return OutboundResponse(response.status_code, dict(response.headers.items()), body, str(url))
            target = _parse(location, base=url)
            if (target.scheme, _host(target), target.port) != (url.scheme, _host(url), url.port):
                for name in _CREDENTIALS:
                    headers.pop(name, None)
            if method != "HEAD" and (
                response.status_code in (302, 303) or (response.status_code == 301 and method == "POST")
            ):
                # As browsers (and httpx) do: the redirected request is a GET, without the body.
                method, content = "GET", None
                for name in ("content-type", "content-length", "transfer-encoding"):
                    headers.pop(name, None)
            url = target
        raise OutboundRefused("TOO_MANY_REDIRECTS", f"more than {self._policy.max_redirects} redirects")

    async def _hop(
        self, method: str, url: httpx.URL, headers: httpx.Headers, content: bytes | None
    ) -> tuple[httpx.Response, bytes]:
        """One request and its answer: the body read, or not if it is a redirect."""
        host = _host(url)
        if url.scheme == "http" and not self._policy.allow_http:
            raise OutboundRefused("SCHEME_NOT_ALLOWED", f"{_origin(url)}: only https is allowed")
        if not _host_allowed(host, self._policy.allowed_hosts):
            raise OutboundRefused("HOST_NOT_ALLOWED", f"{host} is not in the allowed hosts")
        addresses = await self._addresses(host, url.port or (443 if url.scheme == "https" else 80))
        sent = httpx.Headers(headers)
        sent["host"] = url.netloc.decode("ascii")
        # Connections are pooled by the address they were made to: one kept after a request for one name,
        # TLS-verified for that name, would carry the next request for another name on the same address
        # without verifying it. So none is kept, whatever the transport.
        sent["connection"] = "close"
        sent.setdefault("user-agent", self._user_agent)
        # The limit counts what is read; an encoded body could expand far past it once decoded.
        sent.setdefault("accept-encoding", "identity")
        response = await self._send(method, url, host, addresses, sent, content)
        try:
            if method == "HEAD" or (response.status_code in _REDIRECTS and "location" in response.headers):
                return response, b""
            return response, await self._read(response, url)
        finally:
            await response.aclose()

    async def _addresses(self, host: str, port: int) -> list[str]:
        """The addresses of ``host``, every one of them checked; refused if any is not allowed."""
        try:
            found = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                found = await self._resolve(host, port)
            except OSError as exc:
                raise OutboundRefused("UNREACHABLE", f"{host} did not resolve: {exc}") from exc
        if not found:
            raise OutboundRefused("UNREACHABLE", f"{host} did not resolve")
        checked = []
        for address in found:
            # All of them: any may be the one connected to (and a name with one private address among
            # public ones is an attempt, not an accident).
            if not address_allowed(address, allow_private=self._policy.allow_private):
                raise OutboundRefused("ADDRESS_NOT_ALLOWED", f"{host} resolves to {address}, not allowed")
            checked.append(str(_ip(address)))
        return checked

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        host: str,
        addresses: list[str],
        headers: httpx.Headers,
        content: bytes | None,
    ) -> httpx.Response:
        """Sends to the checked addresses in turn (the name is never resolved again) until one connects."""

        async def to(address: str) -> httpx.Response:
            # The URL names the address, so that is where the transport connects; TLS checks the name.
            request = httpx.Request(
                method,
                url.copy_with(host=address),
                headers=headers,
                content=content,
                extensions={"sni_hostname": host},
            )
            return await self._transport.handle_async_request(request)

        for address in addresses[:-1]:
            try:
                return await to(address)
            except httpx.ConnectError:
                continue  # another address of the name may answer (an IPv6 one without a route, say)
        return await to(addresses[-1])

    async def _read(self, response: httpx.Response, url: httpx.URL) -> bytes:
        limit = self._policy.max_bytes
        declared = response.headers.get("content-length", "")
        # A number that long is over any limit (and need not be converted).
        if declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
            raise OutboundRefused("TOO_LARGE", f"{_origin(url)} sends {declared} bytes, more than {limit}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise OutboundRefused("TOO_LARGE", f"{_origin(url)} sends more than {limit} bytes")
        return bytes(body)


def _parse(text: str, base: httpx.URL | None = None) -> httpx.URL:
    """``text`` as an absolute http(s) URL with a host and no user information (relative to ``base``)."""
    try:
        url = base.join(text) if base is not None else httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError):
        # Not the text itself: a URL can carry a credential.
        raise OutboundRefused("BAD_URL", "not a valid URL") from None
    if not url.scheme:
        raise OutboundRefused("BAD_URL", "not an absolute URL")
    if url.scheme not in ("http", "https"):
        raise OutboundRefused("SCHEME_NOT_ALLOWED", f"scheme {url.scheme!r}: only http(s) is")
    if url.userinfo:
        raise OutboundRefused("BAD_URL", "a URL with user information is refused")
    _host(url)
    return url


def _host(url: httpx.URL) -> str:
    """The URL's host, normalized (lower-case, no final dot, an IP address in its canonical form)."""
    host = _normal_host(url.raw_host.decode("ascii", "replace"))
    if host is None:
        raise OutboundRefused("BAD_URL", "the URL has no valid host")
    return host


def _normal_host(host: str) -> str | None:
    host = host.lower().removesuffix(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host if _HOST_NAME.fullmatch(host) else None


def _host_allowed(host: str, allowed: frozenset[str]) -> bool:
    return any(
        host == pattern.lower() or (pattern.startswith("*.") and host.endswith(pattern[1:].lower()))
        for pattern in allowed
    )


def _host_pattern(entry: str) -> str:
    """An allowed-hosts entry, normalized: a host name, an IP address or ``*.`` and a host name."""
    wildcard = entry.startswith("*.")
    rest = entry.removeprefix("*.")
    try:
        host = _normal_host(str(ipaddress.ip_address(rest.strip("[]"))))
    except ValueError:
        try:
            url = httpx.URL(rest if "://" in rest else f"https://{rest}")
            host = _normal_host(url.raw_host.decode("ascii", "replace"))
        except httpx.InvalidURL:
            host = None
    if host is None or (wildcard and "://" in rest):
        raise ValueError(f"not a host name, an IP address or a *. pattern: {entry!r}")
    return f"*.{host}" if wildcard else host


def _origin(url: httpx.URL) -> str:
    """Scheme, host and port only: what a detail may say of a URL."""
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"
