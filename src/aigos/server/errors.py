"""One exception hierarchy for everything the API refuses, each class with a stable machine-readable code.

Services raise these; ``problems.py`` renders them as RFC 9457 ``application/problem+json``. A code, once
published, never changes meaning: clients branch on it.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AigosError(Exception):
    """Base of every error the API reports to a caller on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"
    title: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        # A subclass may refine its code per case (BUDGET_EXCEEDED is a Forbidden, say) without a new class.
        self.instance_code = code or self.code
        self.headers = headers or {}
        self.extensions = extensions


class BadRequest(AigosError):
    """The request cannot be understood as sent."""

    status = 400
    code = "BAD_REQUEST"
    title = "Bad request"


class MalformedJSON(BadRequest):
    """The body is not valid JSON."""

    code = "MALFORMED_JSON"
    title = "Malformed JSON body"


class ValidationFailed(BadRequest):
    """The body or parameters parse but break the schema; ``errors`` points at each field."""

    code = "VALIDATION_FAILED"
    title = "Request validation failed"


class Unauthenticated(AigosError):
    """No credential, or one that is unknown, expired or revoked."""

    status = 401
    code = "UNAUTHENTICATED"
    title = "Authentication required"


class Forbidden(AigosError):
    """The caller is known but may not do this."""

    status = 403
    code = "FORBIDDEN"
    title = "Forbidden"


class NotFound(AigosError):
    """No such resource visible to the caller (other tenants' resources are never 'forbidden')."""

    status = 404
    code = "NOT_FOUND"
    title = "Not found"


class MethodNotAllowed(AigosError):
    """The resource exists but not with this method."""

    status = 405
    code = "METHOD_NOT_ALLOWED"
    title = "Method not allowed"


class Conflict(AigosError):
    """The request conflicts with the current state (duplicate slug, invalid status transition, ...)."""

    status = 409
    code = "CONFLICT"
    title = "Conflict"


class PreconditionFailed(AigosError):
    """A conditional request (``If-Match``) names a version that is no longer current."""

    status = 412
    code = "PRECONDITION_FAILED"
    title = "Precondition failed"


class PayloadTooLarge(AigosError):
    """The body exceeds ``AIGOS_MAX_BODY_BYTES``."""

    status = 413
    code = "PAYLOAD_TOO_LARGE"
    title = "Request body too large"


class UnsupportedMediaType(AigosError):
    """The body is not in a media type the endpoint reads."""

    status = 415
    code = "UNSUPPORTED_MEDIA_TYPE"
    title = "Unsupported media type"


class RateLimited(AigosError):
    """Too many requests; ``Retry-After`` says when to come back."""

    status = 429
    code = "RATE_LIMITED"
    title = "Too many requests"


class ServiceUnavailable(AigosError):
    """A dependency (database, Redis) is down; the request may succeed later."""

    status = 503
    code = "SERVICE_UNAVAILABLE"
    title = "Service unavailable"


class OAuthError(Exception):
    """An OAuth 2.0 refusal, answered in the RFC 6749 section 5.2 form (``error``, ``error_description``)
    rather than as a problem: OAuth clients parse that form. Not an ``AigosError`` for that reason."""

    def __init__(
        self, error: str, description: str, status: int = 400, headers: dict[str, str] | None = None
    ):
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}
