"""An agent's signed policy bundle (``GET /v1/policies/bundle``) and the keys that sign bundles.

A bundle holds the documents of the policies that apply to the agent, signed with an Ed25519 key derived
from the server secret (the same on every replica), for local evaluation with ``aigos.core.policy``. Its
ETag hashes what it says (version, agent, policies), not when it was signed, so an unchanged bundle is
revalidated without being signed again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aigos.core import policy as core
from aigos.core.canonical import canonical
from aigos.core.signing import Signer, b64url, derive_seed
from aigos.server.identity.agent_auth import AgentPrincipal
from aigos.server.policy import limits
from aigos.server.policy.pieces import in_pieces
from aigos.server.policy.state import PolicyState
from aigos.server.tenancy.plans import MAX_BUNDLE_BYTES

#: How long a bundle may be used offline before the SDK must fetch it again.
BUNDLE_TTL = timedelta(minutes=5)
#: Bundles of more policy bytes than this are hashed and signed in a thread.
OFF_LOOP_BYTES = 256 * 1024
T = TypeVar("T")


@functools.lru_cache(maxsize=4)
def bundle_signer(pepper: bytes) -> Signer:
    """The Ed25519 key that signs policy bundles, derived from the server secret (same on every replica)."""
    return Signer.from_seed(derive_seed(pepper, "policy-bundle"))


def public_keys(pepper: bytes) -> dict[str, Any]:
    """The public keys that sign policy bundles, as ``GET /v1/policies/keys`` lists them."""
    signer = bundle_signer(pepper)
    return {"keys": [{"key_id": signer.key_id, "alg": "Ed25519", "public_key": b64url(signer.public_key)}]}


@dataclass(frozen=True, slots=True)
class ServedBundle:
    """A bundle as served: its ETag, and its body as the pieces of canonical JSON it is written from
    (``None`` when the caller's ``If-None-Match`` already names this ETag)."""

    etag: str
    body: list[bytes] | None


async def signed_bundle(
    state: PolicyState, pepper: bytes, agent: AgentPrincipal, if_none_match: str | None
) -> ServedBundle:
    """The calling agent's bundle, signed (``limits.bundle_too_large`` past ``MAX_BUNDLE_BYTES``)."""
    state.ensure_live()
    subject = await state.subject(agent.tenant_id, agent.agent_id, agent.status.value, agent.claims)
    policies = await state.policy_set(agent.tenant_id)
    if policies.cached(subject) is None:
        await in_pieces(policies.selecting(subject), freezing=True)
    documents = await in_pieces(policies.encoding(subject))
    # Hashing, joining and signing tens of MiB: in a thread when large (each releases the GIL; nothing is
    # copied but by ``bytes.join``, which does too).
    large = sum(map(len, documents)) > OFF_LOOP_BYTES

    def digest() -> tuple[int, str]:
        hashed, size = hashlib.sha256(), 0
        for piece in core.bundle_content(policies.version, subject, documents):
            hashed.update(piece)
            size += len(piece)
        return size, hashed.hexdigest()[:32]

    size, digested = await _off_loop(large, digest)
    if size > MAX_BUNDLE_BYTES:
        raise limits.bundle_too_large(size, MAX_BUNDLE_BYTES)
    etag = f'"{digested}"'
    if if_none_match is not None and etag in {tag.strip() for tag in if_none_match.split(",")}:
        return ServedBundle(etag, None)
    now = datetime.now(UTC).replace(microsecond=0)
    signer = bundle_signer(pepper)

    def signed() -> list[bytes]:
        payload = b"".join(
            core.signed_payload(
                str(agent.tenant_id),
                policies.version,
                subject,
                documents,
                now.isoformat().replace("+00:00", "Z"),
                (now + BUNDLE_TTL).isoformat().replace("+00:00", "Z"),
            )
        )
        signature = b64url(signer.private_key.sign(payload))  # Signer.sign, over bytes already canonical
        fields = {"key_id": signer.key_id, "alg": "Ed25519", "signature": signature}
        body = {"payload": payload, **{name: canonical(value) for name, value in fields.items()}}
        return core.canonical_object(body)

    return ServedBundle(etag, await _off_loop(large, signed))


async def _off_loop(large: bool, work: Callable[[], T]) -> T:
    """``work()``, in a thread when ``large`` (work that releases the GIL)."""
    return await asyncio.to_thread(work) if large else work()
