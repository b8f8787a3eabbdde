"""The policy model's work for large tenants, in steps: costly resources tested before a check, drafts over a
compiled set, bundles encoded once. Each answers exactly what the one-go computation would."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from aigos.core import policy as core
from aigos.core.canonical import canonical


def costly_rules(count: int, shared: bool = False) -> list[dict[str, Any]]:
    """``count`` rules on ``read`` whose resource patterns each cost a search of the resource: allow, deny,
    dry-run and conditional ones, some matching ``a``-only resources, most not."""
    rules = []
    for n in range(count):
        tag = "" if shared else f"{n}"
        patterns = [f"*a*a*{tag}x*b", f"a?a?*{tag}c*", f"*{tag}q*a*a*"]
        if n % 7 == 3:
            patterns.append("a*a*a")  # matches a resource of a's
        rule: dict[str, Any] = {
            "id": f"r{n}",
            "effect": "deny" if n % 3 == 0 else "allow",
            "actions": ["read"],
            "resources": patterns,
        }
        if n % 5 == 1:
            rule["conditions"] = {"context": {"zone": "eu"}}
        rules.append(rule)
    return rules


def documents(count: int = 600, shared: bool = False) -> list[dict[str, Any]]:
    """Three policies (one dry-run) sharing ``count`` costly rules, and one of plain prefix rules."""
    rules = costly_rules(count, shared)
    third = count // 3
    return [
        {"id": "p0", "name": "p0", "rules": rules[:third]},
        {"id": "p1", "name": "p1", "priority": 2, "rules": rules[third : 2 * third]},
        {"id": "p2", "name": "p2", "mode": "dry_run", "rules": rules[2 * third :]},
        {
            "id": "p3",
            "name": "p3",
            "rules": [{"id": "plain", "effect": "allow", "actions": ["read"], "resources": ["docs/*"]}],
        },
    ]


def steps_of(steps: core.Steps[Any]) -> tuple[int, Any]:
    """How many pauses ``steps`` made, and its result."""
    pauses = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return pauses, done.value
        pauses += 1


WHO = core.Subject.of("agent")
RESOURCES = ["a" * 2048, "a" * 300, "a" * 2047 + "b", "docs/readme", "A" * 600, "aXa" * 500]


@pytest.mark.parametrize("shared", [False, True])
def test_a_costly_resource_is_tested_in_steps_and_decided_as_in_one_go(shared: bool) -> None:
    policies = core.PolicySet(1, documents(shared=shared))
    effective = policies.effective(WHO)
    for resource, context, trace in itertools.product(RESOURCES, ({}, {"zone": "eu"}), (False, True)):
        asked = core.Request.of("READ", resource, context)
        assert effective.costly(asked), resource
        pauses, narrowed = steps_of(core.narrowing(effective, asked))
        assert narrowed is not effective
        # The same decision, down to the rule reported, the dry-run findings and the trace.
        assert core.evaluate(narrowed, WHO, asked, trace=trace) == core.evaluate(
            effective, WHO, asked, trace=trace
        ), (resource, context)
        if not shared and len(resource) >= 2048:
            # 1,800+ distinct patterns, each counted nine times on 2,048 characters: many steps.
            assert pauses >= 1_800 * 9 // core.PATTERNS_PER_STEP - 1
        if shared:
            # Every rule holds one of two pattern lists: each list is tested once, in one step.
            assert pauses == 0
    # The selection itself is left as it was: the next request is decided from scratch.
    assert core.evaluate(effective, WHO, core.Request.of("read", "docs/x")).allowed


def test_a_light_selection_or_a_short_resource_is_not_costly() -> None:
    plain = core.PolicySet(1, documents()[3:]).effective(WHO)
    assert not plain.costly(core.Request.of("read", "a" * 2048))
    few = core.PolicySet(1, [{"id": "p", "name": "p", "rules": costly_rules(40)}]).effective(WHO)
    assert not few.costly(core.Request.of("read", "a" * 100))
    # 40 rules of 3 or 4 patterns, each test counted 9 times on 2,048 characters: more than one step.
    assert few.costly(core.Request.of("read", "a" * 2048))
    # Costly rules for another action or tool do not make this one costly.
    heavy = core.PolicySet(1, documents()).effective(WHO)
    assert not heavy.costly(core.Request.of("write", "a" * 2048))


def test_drafts_over_a_compiled_set_decide_as_the_whole_set_compiled() -> None:
    saved = documents(60)
    compiled = core.PolicySet(4, saved)
    drafts = [
        {"id": "p0", "name": "p0", "rules": [{"id": "now-deny", "effect": "deny", "actions": ["read"]}]},
        {"id": "p1", "name": "p1", "enabled": False, "rules": []},
        {"id": "new", "name": "new", "rules": [{"id": "w", "effect": "allow", "actions": ["write"]}]},
    ]
    _, amended = steps_of(core.PolicySet.amending(4, compiled.policies, drafts))
    whole = core.PolicySet(4, [*drafts, saved[2], saved[3]])
    assert amended.version == 4
    assert [policy.id for policy in amended.effective(WHO).policies] == [
        policy.id for policy in whole.effective(WHO).policies
    ]
    for action, resource in [("read", "docs/x"), ("read", "a" * 50), ("write", "x"), ("other", "y")]:
        asked = core.Request.of(action, resource)
        assert core.evaluate(amended, WHO, asked, trace=True) == core.evaluate(whole, WHO, asked, trace=True)
    # Once done with, the amended set is emptied in steps; the compiled set it shared is not changed.
    held = amended.rule_count
    pauses, _ = steps_of(amended.releasing())
    assert (held, amended.rule_count) == (23, 0)
    assert pauses >= 1
    assert core.evaluate(compiled, WHO, core.Request.of("write", "x")).allowed
    assert core.evaluate(compiled, WHO, core.Request.of("read", "docs/x"), trace=True) == core.evaluate(
        core.PolicySet(4, saved), WHO, core.Request.of("read", "docs/x"), trace=True
    )


def test_a_bundle_is_encoded_once_and_signs_the_bytes_of_its_payload() -> None:
    policies = core.PolicySet(7, documents(30))
    _, pieces = steps_of(policies.encoding(WHO))
    documents_json = b"".join(pieces)
    assert documents_json == canonical(policies.documents_for(WHO))
    # Kept: the next bundle only gathers the encoded documents.
    again, repeated = steps_of(policies.encoding(WHO))
    assert (again, b"".join(repeated)) == (0, documents_json)

    payload = core.bundle_payload("t", policies, WHO, "2024-06-12T10:30:00Z", "2024-06-12T10:35:00Z")
    signed = core.signed_payload("t", 7, WHO, pieces, "2024-06-12T10:30:00Z", "2024-06-12T10:35:00Z")
    assert b"".join(signed) == canonical(payload)
    content = {"version": 7, "agent": WHO.to_json(), "policies": policies.documents_for(WHO)}
    assert b"".join(core.bundle_content(7, WHO, pieces)) == canonical(content)
    assert b"".join(core.canonical_object({})) == canonical({})


def test_a_large_bundle_is_encoded_in_steps() -> None:
    padding = "x" * 1_900
    large = [
        {"id": f"p{n}", "name": f"p{n}", "description": padding, "rules": costly_rules(10)}
        for n in range(1_000)
    ]
    policies = core.PolicySet(1, large)
    pauses, pieces = steps_of(policies.encoding(WHO))
    size = len(b"".join(pieces))
    assert size > 2 * core.BYTES_PER_STEP
    assert pauses >= size // core.BYTES_PER_STEP - 1
