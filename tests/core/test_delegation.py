"""Delegation chains of exchanged tokens: read back exactly as issued, bounded, malformed ones refused."""

from __future__ import annotations

from typing import Any

import pytest

from aigos.core.delegation import ANCESTORS_CLAIM, MAX_CHAIN, Chain, MalformedChain, delegated, escalations


def test_an_undelegated_token_has_an_empty_chain() -> None:
    assert Chain.of({"sub": "a", "jti": "1"}) == Chain()


def test_each_hop_nests_the_actor_and_prepends_the_parent_token() -> None:
    root = {"sub": "p", "jti": "j0"}
    child = {"sub": "c", "jti": "j1", **delegated(root, "p")}
    grandchild = {"sub": "g", "jti": "j2", **delegated(child, "c")}
    assert grandchild["act"] == {"sub": "c", "act": {"sub": "p"}}
    assert Chain.of(grandchild) == Chain(actors=("c", "p"), ancestor_jtis=("j1", "j0"))


@pytest.mark.parametrize(
    "claims",
    [
        {"act": "p"},
        {"act": {"sub": 1}},
        {"act": {"sub": "p", "act": []}},
        {ANCESTORS_CLAIM: "j0"},
        {ANCESTORS_CLAIM: [1]},
        {ANCESTORS_CLAIM: ["j"] * (MAX_CHAIN + 1)},
    ],
)
def test_malformed_chains_are_refused(claims: dict[str, Any]) -> None:
    with pytest.raises(MalformedChain):
        Chain.of(claims)


def test_a_chain_deeper_than_the_bound_is_refused_without_walking_it_all() -> None:
    act: dict[str, Any] = {"sub": "root"}
    for hop in range(10_000):
        act = {"sub": f"a{hop}", "act": act}
    with pytest.raises(MalformedChain, match="longer than"):
        Chain.of({"act": act})


def test_escalations_name_what_exceeds_the_parent() -> None:
    parent = {"tools": ["web_*"], "domains": ["*.example.com"], "max_budget": 10}
    assert escalations(parent, {"tools": ["web_search"], "max_budget": 5}) == []
    assert escalations(parent, {"tools": ["shell"], "domains": ["evil.com"]}) == [
        "tool 'shell'",
        "domain 'evil.com'",
        "max_budget None above 10",
    ]
