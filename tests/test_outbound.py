"""The outbound client against a real HTTP(S) server on loopback: what it refuses, and where it connects.

The server runs in a thread and records every request it gets. Host names are answered by a resolver
function given to the client, so nothing here depends on DNS or leaves the machine. For the rules that
need a public address, ``LoopbackNat`` (an httpx transport) stands in for the internet: a connection to
``PUBLIC`` reaches the local server, any other fails.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aigos.server.outbound import (
    Outbound,
    OutboundPolicy,
    OutboundRefused,
    Resolve,
    address_allowed,
    policy_from_settings,
)
from tests.server_process import free_port

#: An address the rules take for public; ``LoopbackNat`` connects it to the local server.
PUBLIC = "93.184.216.34"
SECRET = "Bearer s3cret-api-key"


@dataclass
class Seen:
    """One request the server got."""

    method: str
    path: str
    host: str | None
    authorization: str | None
    body: bytes


@dataclass
class Server:
    """The local server: its port, what it got, and an event that releases the handlers that wait."""

    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


class Httpd(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` that carries the test's ``Server`` record."""

    state: Server


class Handler(BaseHTTPRequestHandler):
    """Answers by path: ``/ok``, ``/echo``, ``/bytes/N``, ``/chunked/N``, ``/declare`` (a big
    Content-Length, then nothing), ``/slow``, ``/chain/K`` (K redirects), ``/to?url=U&status=S``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        state.seen.append(
            Seen(self.command, self.path, self.headers.get("host"), self.headers.get("authorization"), body)
        )
        path, _, query = self.path.partition("?")
        kind, _, arg = path.strip("/").partition("/")
        if kind == "ok":
            self.reply(200, b"hello")
        elif kind == "echo":
            echoed = {"host": self.headers.get("host"), "user-agent": self.headers.get("user-agent")}
            self.reply(200, json.dumps(echoed).encode(), "application/json")
        elif kind == "bytes":
            self.reply(200, b"x" * int(arg))
        elif kind == "chunked":
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for start in range(0, int(arg), 1000):
                size = min(int(arg) - start, 1000)
                self.wfile.write(b"%x\r\n%s\r\n" % (size, b"x" * size))
            self.wfile.write(b"0\r\n\r\n")
        elif kind == "declare":
            self.send_response(200)
            self.send_header("content-length", "10000000")
            self.end_headers()
            self.wfile.flush()
            state.stop.wait(10)
        elif kind == "slow":
            state.stop.wait(10)
            self.reply(200, b"late")
        elif kind == "chain":
            if int(arg):
                self.redirect(302, f"/chain/{int(arg) - 1}")
            else:
                self.reply(200, b"end")
        elif kind == "to":
            params = parse_qs(query)
            self.redirect(int(params.get("status", ["302"])[0]), params["url"][0])
        else:
            self.reply(404, b"")

    def do_POST(self) -> None:
        self.do_GET()

    def reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, status: int, location: str) -> None:
        self.send_response(status)
        self.send_header("location", location)
        self.send_header("content-length", "0")
        self.end_headers()


@contextlib.contextmanager
def serving(tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    """The handler served on a free loopback port (over TLS with ``tls``) in a thread."""
    httpd = Httpd(("127.0.0.1", 0), Handler)
    state = httpd.state = Server(port=httpd.server_address[1])
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: state.sni.append(name)
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    with serving() as state:
        yield state


@dataclass
class Tls:
    """A server's TLS context (a certificate for ``pinned.test`` only) and a client's that trusts it."""

    server: ssl.SSLContext
    client: ssl.SSLContext


def certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    """A certificate for ``subject`` (a CA's when it is its own issuer) valid for the next hour."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if subject == issuer:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("test CA", ca_key, "test CA", ca_key)
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(
        certificate("pinned.test", key, "test CA", ca_key).public_bytes(serialization.Encoding.PEM)
    )
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    client_ctx = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return Tls(server_ctx, client_ctx)


def resolving(table: dict[str, list[str]], calls: list[str] | None = None) -> Resolve:
    """A resolver answering from ``table`` (other names do not resolve); notes each name in ``calls``."""

    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


class LoopbackNat(httpx.AsyncHTTPTransport):
    """The internet, for a test: a connection to ``PUBLIC`` reaches the local server, any other fails.
    Notes each (address, TLS name) it is asked to connect to."""

    def __init__(self) -> None:
        super().__init__(retries=0)
        self.connects: list[tuple[str, object]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.connects.append((request.url.host, request.extensions.get("sni_hostname")))
        if request.url.host != PUBLIC:
            raise httpx.ConnectError("no route in this test", request=request)
        request.url = request.url.copy_with(host="127.0.0.1")
        return await super().handle_async_request(request)


def local(*hosts: str, **rules: Any) -> OutboundPolicy:
    """A policy for the loopback server: ``hosts`` (by default 127.0.0.1), private addresses and http."""
    return OutboundPolicy(
        frozenset(hosts or {"127.0.0.1"}), **{"allow_private": True, "allow_http": True, **rules}
    )


async def refused(client: Outbound, url: str, **kwargs: Any) -> OutboundRefused:
    """The refusal of ``GET url``, which must be refused."""
    with pytest.raises(OutboundRefused) as caught:
        await client.request("GET", url, **kwargs)
    return caught.value


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("0.0.0.0", False),
        ("::", False),
        ("224.0.0.1", False),
        ("ff02::1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("not an address", False),
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::808:808", True),
        (PUBLIC, True),
    ],
)
def test_address_classification(address: str, allowed: bool) -> None:
    assert address_allowed(address) is allowed


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("10.0.0.1", True),
        ("fe80::1", True),
        ("169.254.169.254", False),
        ("::ffff:169.254.169.254", False),
        ("fd00:ec2::254", False),
        ("not an address", False),
    ],
)
def test_allow_private_never_opens_the_metadata_service(address: str, allowed: bool) -> None:
    assert address_allowed(address, allow_private=True) is allowed


def test_policy_from_settings() -> None:
    policy = policy_from_settings("a.example.com, *.Corp.Example  https://api.aigrc.dev/x,,", allow_http=True)
    assert policy.allowed_hosts == frozenset({"a.example.com", "*.corp.example", "api.aigrc.dev"})
    assert policy.allow_http
    assert not policy.allow_private
    listed = policy_from_settings(["[::1]", "127.0.0.1", "host.test:8443"], allow_private=True)
    assert listed.allowed_hosts == frozenset({"::1", "127.0.0.1", "host.test"})
    assert policy_from_settings("").allowed_hosts == frozenset()
    for wrong in ("*", "a.*.com", "*.https://x.test", "a b", "http://"):
        with pytest.raises(ValueError):
            policy_from_settings([wrong])


async def test_loopback_refused_by_default(server: Server) -> None:
    url = f"http://127.0.0.1:{server.port}/ok"
    async with Outbound(
        OutboundPolicy(frozenset({"127.0.0.1", "localhost", "::ffff:7f00:1"}), allow_http=True)
    ) as client:
        assert (await refused(client, url)).code == "ADDRESS_NOT_ALLOWED"
        assert (await refused(client, f"http://localhost:{server.port}/ok")).code == "ADDRESS_NOT_ALLOWED"
        mapped = await refused(client, f"http://[::ffff:127.0.0.1]:{server.port}/ok")
        assert mapped.code == "ADDRESS_NOT_ALLOWED"
    assert server.seen == []


async def test_loopback_allowed_when_private_http_and_the_host_are(server: Server) -> None:
    async with Outbound(local("127.0.0.1", "localhost"), user_agent="aigos-test") as client:
        response = await client.request("GET", f"http://127.0.0.1:{server.port}/echo")
        # By the system resolver: localhost may answer ::1 first, where nothing listens; 127.0.0.1 does.
        by_name = await client.request("GET", f"http://LOCALHOST:{server.port}/ok")
    assert response.status == 200
    assert response.url == f"http://127.0.0.1:{server.port}/echo"
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body) == {"host": f"127.0.0.1:{server.port}", "user-agent": "aigos-test"}
    assert by_name.body == b"hello"


async def test_host_not_in_the_list_refused_before_any_connection(server: Server) -> None:
    calls: list[str] = []
    resolve = resolving({"other.test": ["127.0.0.1"], "example.test": ["127.0.0.1"]}, calls)
    async with Outbound(local("allowed.test", "*.example.test"), resolve=resolve) as client:
        for url in (
            f"http://other.test:{server.port}/ok",
            f"http://127.0.0.1:{server.port}/ok",
            f"http://example.test:{server.port}/ok",
            f"http://badexample.test:{server.port}/ok",
        ):
            assert (await refused(client, url)).code == "HOST_NOT_ALLOWED"
    assert calls == []
    assert server.seen == []


async def test_wildcard_patterns_match_names_below(server: Server) -> None:
    resolve = resolving({"a.example.test": ["127.0.0.1"], "a.b.example.test": ["127.0.0.1"]})
    async with Outbound(local("*.example.test"), resolve=resolve) as client:
        for name in ("a.example.test", "A.B.Example.Test."):
            assert (await client.request("GET", f"http://{name}:{server.port}/ok")).status == 200
    assert [seen.host for seen in server.seen] == [
        f"a.example.test:{server.port}",
        f"a.b.example.test.:{server.port}",
    ]


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file:///etc/passwd", "SCHEME_NOT_ALLOWED"),
        ("ftp://127.0.0.1/x", "SCHEME_NOT_ALLOWED"),
        ("gopher://127.0.0.1:70/_x", "SCHEME_NOT_ALLOWED"),
        ("javascript:alert(1)", "SCHEME_NOT_ALLOWED"),
        ("http://user:s3cret-api-key@127.0.0.1/", "BAD_URL"),
        ("http:///no-host", "BAD_URL"),
        ("/relative", "BAD_URL"),
        ("http://a b/", "BAD_URL"),
        ("http://[::1/", "BAD_URL"),
    ],
)
async def test_bad_urls_and_schemes_refused(url: str, code: str) -> None:
    async with Outbound(local()) as client:
        error = await refused(client, url)
    assert error.code == code
    assert "s3cret" not in str(error)


async def test_https_only_by_default(server: Server) -> None:
    async with Outbound(local(allow_http=False)) as client:
        assert (await refused(client, f"http://127.0.0.1:{server.port}/ok")).code == "SCHEME_NOT_ALLOWED"
    assert server.seen == []


async def test_body_over_the_limit_refused(server: Server) -> None:
    base = f"http://127.0.0.1:{server.port}"
    async with Outbound(local(max_bytes=1000, timeout=3)) as client:
        assert (await client.request("GET", f"{base}/bytes/1000")).body == b"x" * 1000
        assert (await client.request("GET", f"{base}/chunked/1000")).body == b"x" * 1000
        assert (await refused(client, f"{base}/bytes/1001")).code == "TOO_LARGE"
        assert (await refused(client, f"{base}/chunked/5000")).code == "TOO_LARGE"
        # The server declares ten megabytes and sends none: refused on the header, not after a wait.
        started = time.monotonic()
        assert (await refused(client, f"{base}/declare")).code == "TOO_LARGE"
        assert time.monotonic() - started < 1


async def test_redirects_followed_up_to_the_limit(server: Server) -> None:
    base = f"http://127.0.0.1:{server.port}"
    async with Outbound(local(max_redirects=3)) as client:
        response = await client.request("GET", f"{base}/chain/3")
        assert (response.status, response.body, response.url) == (200, b"end", f"{base}/chain/0")
        assert (await refused(client, f"{base}/chain/4")).code == "TOO_MANY_REDIRECTS"
    assert len(server.seen) == 4 + 4


async def test_redirect_targets_checked_by_every_rule(server: Server) -> None:
    calls: list[str] = []
    resolve = resolving({"inside.test": ["10.0.0.1"]}, calls)
    base = f"http://127.0.0.1:{server.port}/to?url="
    policy = local("127.0.0.1", "169.254.169.254", "inside.test")
    async with Outbound(policy, resolve=resolve) as client:
        assert (await refused(client, f"{base}http://evil.test/")).code == "HOST_NOT_ALLOWED"
        metadata = await refused(client, f"{base}http://169.254.169.254/latest/meta-data/")
        assert metadata.code == "ADDRESS_NOT_ALLOWED"
    async with Outbound(local(allow_http=False)) as client:
        assert (await refused(client, f"{base}ftp://127.0.0.1/")).code == "SCHEME_NOT_ALLOWED"
    assert calls == []
    assert [seen.path.partition("?")[0] for seen in server.seen] == ["/to", "/to"]


async def test_redirect_to_a_private_address_refused(server: Server) -> None:
    nat = LoopbackNat()
    resolve = resolving({"origin.test": [PUBLIC], "inside.test": ["10.0.0.1"]})
    policy = policy_from_settings("origin.test inside.test 10.0.0.1 [::ffff:10.0.0.1]", allow_http=True)
    base = f"http://origin.test:{server.port}"
    async with Outbound(policy, transport=nat, resolve=resolve) as client:
        assert (await client.request("GET", f"{base}/ok")).body == b"hello"
        for target in ("http://10.0.0.1/", "http://inside.test/", "http://[::ffff:10.0.0.1]/"):
            assert (await refused(client, f"{base}/to?url={target}")).code == "ADDRESS_NOT_ALLOWED"
    assert {address for address, _ in nat.connects} == {PUBLIC}


async def test_https_to_http_redirect_refused(tls: Tls) -> None:
    resolve = resolving({"pinned.test": ["127.0.0.1"]})
    transport = httpx.AsyncHTTPTransport(verify=tls.client)
    with serving(tls.server) as server:
        policy = local("pinned.test", allow_http=False)
        async with Outbound(policy, transport=transport, resolve=resolve) as client:
            base = f"https://pinned.test:{server.port}"
            assert (await client.request("GET", f"{base}/ok")).body == b"hello"
            downgrade = await refused(client, f"{base}/to?url=http://pinned.test:{server.port}/ok")
            assert downgrade.code == "SCHEME_NOT_ALLOWED"
    assert len(server.seen) == 2


async def test_authorization_dropped_when_a_redirect_changes_host(server: Server) -> None:
    resolve = resolving({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]})
    headers = {"Authorization": SECRET}
    async with Outbound(local("a.test", "b.test"), resolve=resolve) as client:
        await client.request("GET", f"http://a.test:{server.port}/to?url=/echo", headers=headers)
        await client.request(
            "GET", f"http://a.test:{server.port}/to?url=http://b.test:{server.port}/echo", headers=headers
        )
        error = await refused(client, f"http://a.test:{server.port}/to?url=http://c.test/", headers=headers)
    assert [(seen.host, seen.authorization) for seen in server.seen] == [
        (f"a.test:{server.port}", SECRET),
        (f"a.test:{server.port}", SECRET),
        (f"a.test:{server.port}", SECRET),
        (f"b.test:{server.port}", None),
        (f"a.test:{server.port}", SECRET),
    ]
    assert error.code == "HOST_NOT_ALLOWED"
    assert "s3cret" not in str(error)


async def test_redirect_methods(server: Server) -> None:
    async with Outbound(local()) as client:
        for status in (307, 302):
            response = await client.request(
                "POST", f"http://127.0.0.1:{server.port}/to?url=/ok&status={status}", content=b"payload"
            )
            assert response.status == 200
    assert [(seen.method, seen.body) for seen in server.seen] == [
        ("POST", b"payload"),
        ("POST", b"payload"),
        ("POST", b"payload"),
        ("GET", b""),
    ]


async def test_slow_server_times_out(server: Server) -> None:
    started = time.monotonic()
    async with Outbound(local(timeout=0.3)) as client:
        assert (await refused(client, f"http://127.0.0.1:{server.port}/slow")).code == "TIMEOUT"
    assert time.monotonic() - started < 2


async def test_closed_port_or_unknown_name_unreachable() -> None:
    async with Outbound(local("127.0.0.1", "nowhere.test"), resolve=resolving({})) as client:
        assert (await refused(client, f"http://127.0.0.1:{free_port()}/")).code == "UNREACHABLE"
        assert (await refused(client, "http://nowhere.test/")).code == "UNREACHABLE"


async def test_connection_goes_to_the_checked_address(server: Server) -> None:
    # The first answer is public, every later one loopback: a client that resolved the name again to
    # connect (as a plain client does) would reach loopback.
    calls: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return [PUBLIC] if len(calls) == 1 else ["127.0.0.1"]

    nat = LoopbackNat()
    policy = OutboundPolicy(frozenset({"rebind.test"}), allow_http=True)
    async with Outbound(policy, transport=nat, resolve=rebinding) as client:
        response = await client.request("GET", f"http://rebind.test:{server.port}/echo")
        assert json.loads(response.body)["host"] == f"rebind.test:{server.port}"
        # The next exchange resolves again, and the loopback answer is checked like any.
        assert (await refused(client, f"http://rebind.test:{server.port}/echo")).code == "ADDRESS_NOT_ALLOWED"
    assert nat.connects == [(PUBLIC, "rebind.test")]
    assert calls == ["rebind.test", "rebind.test"]


async def test_every_resolved_address_checked_and_only_those_connected(server: Server) -> None:
    nat = LoopbackNat()
    resolve = resolving({"mixed.test": [PUBLIC, "127.0.0.1"], "two.test": ["127.0.0.2", "127.0.0.1"]})
    async with Outbound(
        OutboundPolicy(frozenset({"mixed.test"}), allow_http=True), transport=nat, resolve=resolve
    ) as client:
        assert (await refused(client, f"http://mixed.test:{server.port}/ok")).code == "ADDRESS_NOT_ALLOWED"
    assert nat.connects == []
    # The default transport: no system resolver knows two.test, so the answer proves the connection went
    # to the addresses checked, the first (nothing listens on 127.0.0.2) and then the next.
    async with Outbound(local("two.test"), resolve=resolve) as client:
        assert (await client.request("GET", f"http://two.test:{server.port}/ok")).body == b"hello"
    assert [seen.host for seen in server.seen] == [f"two.test:{server.port}"]


async def test_tls_verifies_the_name_while_connecting_to_the_address(tls: Tls) -> None:
    resolve = resolving({"pinned.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    transport = httpx.AsyncHTTPTransport(verify=tls.client)
    with serving(tls.server) as server:
        async with Outbound(
            local("pinned.test", "other.test"), transport=transport, resolve=resolve
        ) as client:
            response = await client.request("GET", f"https://pinned.test:{server.port}/echo")
            # The same address, whose certificate is not for this name: refused, though a connection to
            # that address was just made (none is kept to be reused).
            wrong = await refused(client, f"https://other.test:{server.port}/ok")
    assert json.loads(response.body)["host"] == f"pinned.test:{server.port}"
    assert server.sni[0] == "pinned.test"
    assert wrong.code == "UNREACHABLE"
    assert "certificate" in wrong.detail.lower()
