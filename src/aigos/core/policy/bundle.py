"""Bundles: an agent's effective policy as signed and served for local evaluation, and the canonical bytes
its ETag and signature cover.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aigos.core.canonical import canonical
from aigos.core.policy.decision import Decision
from aigos.core.policy.evaluate import evaluate
from aigos.core.policy.policyset import PolicySet
from aigos.core.policy.request import Request, Subject


@dataclass(frozen=True)
class Bundle:
    """An agent's effective policy as served by ``GET /v1/policies/bundle``, ready for local evaluation."""

    tenant_id: str
    version: int
    subject: Subject
    policies: PolicySet
    issued_at: str
    expires_at: str

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Bundle:
        """The bundle for a (signature-verified) payload."""
        return cls(
            tenant_id=str(payload["tenant_id"]),
            version=int(payload["version"]),
            subject=Subject.from_json(payload["agent"]),
            policies=PolicySet(int(payload["version"]), payload.get("policies") or []),
            issued_at=str(payload["issued_at"]),
            expires_at=str(payload["expires_at"]),
        )

    def evaluate(
        self,
        request: Request,
        *,
        status: str | None = None,
        spent: Mapping[str, float] | None = None,
        trace: bool = False,
    ) -> Decision:
        """Decide ``request`` locally (``status`` overrides the bundle's, after a kill-switch command)."""
        subject = self.subject if status is None else self.subject.with_status(status)
        return evaluate(self.policies, subject, request, spent=spent, trace=trace)


def bundle_payload(
    tenant_id: str,
    policies: PolicySet,
    subject: Subject,
    issued_at: str,
    expires_at: str,
) -> dict[str, Any]:
    """The signed content of an agent's bundle."""
    return {
        "tenant_id": tenant_id,
        "version": policies.version,
        "agent": subject.to_json(),
        "policies": [dict(document) for document in policies.documents_for(subject)],
        "issued_at": issued_at,
        "expires_at": expires_at,
    }


#: Canonical JSON as the pieces ``b"".join`` makes it of (see ``PolicySet.encoding``).
Pieces = list[bytes]


def bundle_content(version: int, subject: Subject, documents: Pieces) -> Pieces:
    """What a bundle's ETag hashes: canonical ``{"version", "agent", "policies"}``, the policies' documents
    given as ``PolicySet.encoding`` made them."""
    return canonical_object(
        {"version": canonical(version), "agent": canonical(subject.to_json()), "policies": documents}
    )


def signed_payload(
    tenant_id: str, version: int, subject: Subject, documents: Pieces, issued_at: str, expires_at: str
) -> Pieces:
    """``canonical(bundle_payload(...))``, which a bundle's signature covers, with the policies' documents
    given as ``PolicySet.encoding`` made them (they are most of a large bundle)."""
    members: dict[str, bytes | Pieces] = {
        "tenant_id": canonical(tenant_id),
        "version": canonical(version),
        "agent": canonical(subject.to_json()),
        "policies": documents,
        "issued_at": canonical(issued_at),
        "expires_at": canonical(expires_at),
    }
    return canonical_object(members)


def canonical_object(members: Mapping[str, bytes | Pieces]) -> Pieces:
    """``canonical`` of a JSON object whose members' values are canonical JSON already (bytes, or pieces),
    as pieces: names sorted, no spaces, as ``canonical`` writes an object. Nothing large is copied."""
    pieces: Pieces = []
    for name in sorted(members):
        pieces.append((b"{" if not pieces else b",") + canonical(name) + b":")
        value = members[name]
        if isinstance(value, bytes):
            pieces.append(value)
        else:
            pieces += value
    pieces.append(b"}" if pieces else b"{}")
    return pieces
