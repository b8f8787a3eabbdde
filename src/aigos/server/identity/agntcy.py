"""AGNTCY alignment: an agent as an OASF record (Open Agentic Schema Framework) and back, and its signature.

Pure mapping functions, no I/O. ``docs/agntcy-alignment.md`` is the field-by-field description:

- ``name``, ``version``, ``description`` map one to one (a missing description is ``""`` in OASF, which
  requires the field; a ``v`` before an imported semantic version is dropped).
- ``authors`` is ``[owner]``; on import the first author becomes the owner.
- ``skills``: each capability tool pattern is one skill ``{"name": <tool>}`` (no OASF taxonomy id).
- AIGOS's capability *domains* are network host patterns, not OASF subject-area domains, so they travel
  as the annotation ``aigos.domains`` (comma-separated) and OASF ``domains`` stays empty.
- ``annotations`` (OASF: string to string) carry what OASF has no field for, under the ``aigos.`` prefix:
  ids, agent type, deployment environment, status, budget, asset card, Golden Thread, and where to
  find the JWKS. Other annotations of an imported record are kept in the agent's metadata and exported
  again.

The record is signed as a compact JWS (RFC 7515) over its canonical JSON with the active token-signing
key, so anyone can check it against the server's JWKS (``/.well-known/jwks.json``) by ``kid``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pydantic import ConfigDict, Field, ValidationError

from aigos.core.agents import is_semver
from aigos.core.canonical import canonical
from aigos.server.errors import ValidationFailed
from aigos.server.identity.keys import ALGORITHMS, LoadedKey
from aigos.server.identity.models import Agent
from aigos.server.identity.schemas import AgentIn
from aigos.server.inputs import Input

#: The OASF record schema version the exported records follow (the core record of OASF 0.7).
SCHEMA_VERSION = "0.7.0"
#: The ``typ`` header of a record signature.
SIGNATURE_TYPE = "oasf-record+jws"
#: Annotations AIGOS writes and reads start with this; any other annotation is the record owner's.
PREFIX = "aigos."
#: Where imported foreign annotations are kept in the agent's metadata (and exported from again).
METADATA_KEY = "oasf"


class OasfSkill(Input):
    """An OASF skill: a taxonomy name (here: an AIGOS tool pattern) and an optional taxonomy id."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=100)
    id: int | None = None


class OasfRecord(Input):
    """The OASF agent record fields AIGOS reads; any other field is accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=255)
    version: str = Field(min_length=1, max_length=64, description="Semantic version (`v` prefix allowed).")
    schema_version: str = Field(SCHEMA_VERSION, max_length=32, description="OASF schema version.")
    description: str = Field("", max_length=2_000)
    authors: list[str] = Field(default_factory=list, max_length=50)
    created_at: str | None = Field(None, description="RFC 3339; not imported (the server assigns it).")
    annotations: dict[str, str] = Field(default_factory=dict, max_length=100)
    skills: list[OasfSkill] = Field(default_factory=list, max_length=200)
    domains: list[dict[str, Any]] = Field(default_factory=list, description="Not imported.")
    locators: list[dict[str, Any]] = Field(default_factory=list, description="Not imported.")
    modules: list[dict[str, Any]] = Field(default_factory=list, description="Not imported.")


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _budget(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def to_record(agent: Agent, issuer: str) -> dict[str, Any]:
    """The OASF record of ``agent``; ``issuer`` is this server's base URL (for the JWKS location)."""
    capabilities = agent.capabilities or {}
    stored = (agent.metadata_ or {}).get(METADATA_KEY)
    foreign = stored.get("annotations") if isinstance(stored, dict) else None
    annotations: dict[str, str] = {
        key: value
        for key, value in (foreign if isinstance(foreign, dict) else {}).items()
        if isinstance(key, str) and isinstance(value, str) and not key.startswith(PREFIX)
    }
    annotations.update(
        {
            "aigos.agent_id": str(agent.id),
            "aigos.tenant_id": str(agent.tenant_id),
            "aigos.agent_type": agent.agent_type,
            "aigos.deployment_env": agent.deployment_env,
            "aigos.status": agent.status,
            "aigos.issuer": issuer,
            "aigos.jwks_uri": issuer + "/.well-known/jwks.json",
        }
    )
    domains = list(capabilities.get("domains") or [])
    if domains:
        annotations["aigos.domains"] = ",".join(domains)
    if capabilities.get("max_budget") is not None:
        annotations["aigos.max_budget"] = _budget(capabilities["max_budget"])
    if agent.asset_card_id:
        annotations["aigos.asset_card_id"] = agent.asset_card_id
    if agent.parent_id is not None:
        annotations["aigos.parent_id"] = str(agent.parent_id)
    if agent.golden_thread:
        annotations["aigos.golden_thread.hash"] = str(agent.golden_thread.get("hash"))
        annotations["aigos.golden_thread.ticket_id"] = str(agent.golden_thread.get("ticket_id"))
        annotations["aigos.golden_thread.verified"] = str(bool(agent.golden_thread.get("verified"))).lower()
    return {
        "name": agent.name,
        "version": agent.version,
        "schema_version": SCHEMA_VERSION,
        "description": agent.description or "",
        "authors": [agent.owner] if agent.owner else [],
        "created_at": _rfc3339(agent.created_at),
        "skills": [{"name": tool} for tool in capabilities.get("tools") or []],
        "domains": [],
        "annotations": annotations,
    }


# Where a field of AgentIn came from in the record, to point validation errors at the caller's input.
_SOURCES = {
    "name": "/name",
    "version": "/version",
    "description": "/description",
    "owner": "/authors/0",
    "agent_type": "/annotations/aigos.agent_type",
    "deployment_env": "/annotations/aigos.deployment_env",
    "asset_card_id": "/annotations/aigos.asset_card_id",
    "golden_thread": "/annotations/aigos.golden_thread.hash",
    "metadata": "/annotations",
}


def _pointer(loc: tuple[int | str, ...]) -> str:
    if loc[:2] == ("capabilities", "tools"):
        return "/skills"
    if loc[:2] == ("capabilities", "domains"):
        return "/annotations/aigos.domains"
    if loc[:2] == ("capabilities", "max_budget"):
        return "/annotations/aigos.max_budget"
    return _SOURCES.get(str(loc[0]), "") if loc else ""


def _invalid(errors: list[dict[str, str]]) -> ValidationFailed:
    first = errors[0]
    return ValidationFailed(f"{first['pointer'] or 'the record'}: {first['detail']}", errors=errors)


def from_record(record: OasfRecord) -> AgentIn:
    """The registration an OASF record describes; ``ValidationFailed`` naming the record's field if none.

    Server-assigned facts (ids, tenant, status, creation time, parent) are never taken from a record.
    """
    notes = record.annotations
    version = record.version
    if version[:1] in ("v", "V") and is_semver(version[1:]):
        version = version[1:]
    tools = list(dict.fromkeys(skill.name for skill in record.skills))
    domains = [part.strip() for part in notes.get("aigos.domains", "").split(",") if part.strip()]
    budget: float | None = None
    if notes.get("aigos.max_budget"):
        try:
            budget = float(notes["aigos.max_budget"])
        except ValueError:
            raise _invalid([{"pointer": "/annotations/aigos.max_budget", "detail": "not a number"}]) from None
    foreign = {key: value for key, value in notes.items() if not key.startswith(PREFIX)}
    spec: dict[str, Any] = {
        "name": record.name,
        "version": version,
        "description": record.description or None,
        "owner": record.authors[0] if record.authors else None,
        "agent_type": notes.get("aigos.agent_type", "generic"),
        "deployment_env": notes.get("aigos.deployment_env", "development"),
        "capabilities": {"tools": tools, "domains": domains, "max_budget": budget},
        "asset_card_id": notes.get("aigos.asset_card_id"),
        "metadata": {METADATA_KEY: {"schema_version": record.schema_version, "annotations": foreign}},
    }
    if notes.get("aigos.golden_thread.hash") and notes.get("aigos.golden_thread.ticket_id"):
        spec["golden_thread"] = {
            "hash": notes["aigos.golden_thread.hash"],
            "ticket_id": notes["aigos.golden_thread.ticket_id"],
        }
    try:
        return AgentIn.model_validate(spec)
    except ValidationError as exc:
        raise _invalid(
            [{"pointer": _pointer(tuple(err["loc"])), "detail": str(err["msg"])} for err in exc.errors()]
        ) from None


def sign_record(record: dict[str, Any], key: LoadedKey) -> str:
    """A compact JWS whose payload is ``canonical(record)``, signed with ``key`` (header names its kid)."""
    header = {"alg": key.alg, "kid": key.kid, "typ": SIGNATURE_TYPE, "cty": "application/json"}
    return jws.serialize_compact(header, canonical(record), key.key, algorithms=[key.alg])


def verify_record(record: dict[str, Any], signature: str, jwks: dict[str, Any]) -> bool:
    """Whether ``signature`` is a valid JWS over exactly ``record`` by a key of the JWK Set ``jwks``."""
    try:
        keyset = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        verified = jws.deserialize_compact(signature, keyset, algorithms=list(ALGORITHMS))
    except (JoseError, ValueError, TypeError):
        return False
    return verified.headers().get("typ") == SIGNATURE_TYPE and verified.payload == canonical(record)
