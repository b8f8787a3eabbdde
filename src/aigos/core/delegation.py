"""Delegation chains of exchanged tokens (RFC 8693): who acts through a token, and what it came from.

A token exchanged from a parent's token names the parent in ``act`` (nested for every earlier hop, RFC 8693
section 4.1) and lists the ``jti`` of every token it descends from in ``aigos:ancestor_jtis``, nearest
first. A verifier refuses the token when any actor may no longer act or any ancestor token was revoked, so
a delegation dies with its delegator; and it never outlives the token it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aigos.core.agents import Capabilities

ANCESTORS_CLAIM = "aigos:ancestor_jtis"
#: Longest chain a token may carry: the deepest lineage the server can be configured to allow.
MAX_CHAIN = 32


class MalformedChain(ValueError):
    """A token's ``act`` or ancestor claim is not one this server issues."""


@dataclass(frozen=True, slots=True)
class Chain:
    """The delegation a token carries: its actors and the tokens it descends from, nearest first."""

    actors: tuple[str, ...] = ()
    ancestor_jtis: tuple[str, ...] = ()

    @classmethod
    def of(cls, claims: Mapping[str, Any]) -> Chain:
        """The chain of a verified claim set; ``MalformedChain`` when it is not well formed or too long."""
        actors: list[str] = []
        act = claims.get("act")
        while act is not None:
            if not isinstance(act, Mapping) or not isinstance(act.get("sub"), str):
                raise MalformedChain("act must be an object naming its sub")
            actors.append(act["sub"])
            if len(actors) > MAX_CHAIN:
                raise MalformedChain(f"the delegation chain is longer than {MAX_CHAIN}")
            act = act.get("act")
        ancestors = claims.get(ANCESTORS_CLAIM, [])
        if not isinstance(ancestors, list) or not all(isinstance(jti, str) for jti in ancestors):
            raise MalformedChain(f"{ANCESTORS_CLAIM} must be a list of token ids")
        if len(ancestors) > MAX_CHAIN:
            raise MalformedChain(f"the delegation chain is longer than {MAX_CHAIN}")
        return cls(tuple(actors), tuple(ancestors))


def delegated(parent: Mapping[str, Any], parent_agent_id: str) -> dict[str, Any]:
    """The delegation claims of a token exchanged from ``parent`` (a verified claim set of that agent).

    ``act`` names the parent and nests the parent's own ``act``; the ancestor list puts the parent's
    ``jti`` before the parent's ancestors.
    """
    chain = Chain.of(parent)
    act: dict[str, Any] = {"sub": parent_agent_id}
    if "act" in parent:
        act["act"] = parent["act"]
    return {"act": act, ANCESTORS_CLAIM: [str(parent["jti"]), *chain.ancestor_jtis]}


def capabilities_of(claim: Mapping[str, Any]) -> Capabilities:
    """Capabilities from their claim or stored form (``tools``, ``domains``, ``max_budget``)."""
    return Capabilities(
        tools=tuple(claim.get("tools") or ()),
        domains=tuple(claim.get("domains") or ()),
        max_budget=claim.get("max_budget"),
    )


def escalations(parent: Mapping[str, Any], child: Mapping[str, Any]) -> list[str]:
    """Why capabilities ``child`` would exceed a parent holding ``parent`` (empty when they would not)."""
    return capabilities_of(parent).covers(capabilities_of(child))
