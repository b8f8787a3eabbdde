"""Security headers on every response: HSTS, CSP, nosniff, frame denial, no referrer."""

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
        extra = self._docs_headers if scope["path"].startswith(DOCS_PREFIXES) else self._api_headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
