"""Security headers on every response: HSTS, CSP, nosniff, frame denial, no referrer, and no caching.

API responses are ``Cache-Control: no-store`` unless the route chose its own caching: many carry a secret
shown once (API keys, client secrets, tokens, recovery keys), and deciding per route would let a new route
that returns one forget it. What is meant to be cached (the JWKS, the discovery documents, the docs pages)
is left to the route.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The API returns JSON only: nothing may be loaded, framed or executed from it.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
# Swagger UI is served from our own files; it sets inline styles, but needs no inline script.
DOCS_CSP = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'"
)
DOCS_PREFIXES = ("/docs",)
# Public documents clients are expected to cache: the routes set (or leave out) their own Cache-Control.
CACHEABLE_PREFIXES = ("/docs", "/.well-known/", "/openapi.json")
NO_STORE = (b"cache-control", b"no-store")


class SecurityHeadersMiddleware:
    """Adds the headers a browser needs to treat our responses safely."""

    def __init__(self, app: ASGIApp, *, hsts_max_age: int = 31_536_000) -> None:
        self.app = app
        common = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]
        if hsts_max_age:
            common.append(
                (b"strict-transport-security", f"max-age={hsts_max_age}; includeSubDomains".encode())
            )
        self._api_headers = [*common, (b"content-security-policy", API_CSP.encode())]
        self._docs_headers = [*common, (b"content-security-policy", DOCS_CSP.encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        extra = self._docs_headers if path.startswith(DOCS_PREFIXES) else self._api_headers
        no_store = not path.startswith(CACHEABLE_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *extra]
                if no_store and not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append(NO_STORE)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
