"""The plan's limits on policies, on both backends: sizes, counts, drafts per simulation, versions kept.

Tenants start on the free plan; its limits are read from ``PLANS`` so the tests follow the documented
numbers.
"""

from __future__ import annotations

from httpx import AsyncClient

from aigos.server.tenancy.plans import PLANS
from tests.helpers import TenantHandle
from tests.identity.helpers import assert_problem
from tests.policy.helpers import assert_limit, create_policy, rules

FREE = PLANS["free"].policy


async def test_one_policy_is_held_to_the_plans_rules_and_bytes(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    too_many = {"name": "p", "rules": rules(FREE.rules_per_policy + 1)}
    response = await client.post("/v1/policies", json=too_many, headers=tenant_a.headers)
    assert_limit(response, 413, "rules_per_policy", FREE.rules_per_policy)

    # Few rules, but long ones: 100 action patterns of 250 characters each.
    wide = [{"effect": "deny", "actions": [f"{n:03}" + "a" * 247 for n in range(100)]}]
    too_big = {"name": "p", "rules": wide * 3}
    response = await client.post("/v1/policies", json=too_big, headers=tenant_a.headers)
    assert_limit(response, 413, "document_bytes", FREE.document_bytes)

    created = await create_policy(client, tenant_a, rules=rules(FREE.rules_per_policy))
    response = await client.put(f"/v1/policies/{created['id']}", json=too_big, headers=tenant_a.headers)
    assert_limit(response, 413, "document_bytes", FREE.document_bytes)
    assert (await client.get(f"/v1/policies/{created['id']}", headers=tenant_a.headers)).json()[
        "version"
    ] == 1


async def test_a_tenants_policies_are_held_to_the_plans_totals(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    full = FREE.rules // FREE.rules_per_policy
    saved = [await create_policy(client, tenant_a, rules=rules(FREE.rules_per_policy)) for _ in range(full)]
    response = await client.post(
        "/v1/policies", json={"name": "one more", "rules": rules(1)}, headers=tenant_a.headers
    )
    assert_limit(response, 422, "rules", FREE.rules)
    # Replacing a policy with one as large is no addition; deleting one makes room.
    replaced = await client.put(
        f"/v1/policies/{saved[0]['id']}",
        json={"name": "same size", "rules": rules(FREE.rules_per_policy)},
        headers=tenant_a.headers,
    )
    assert replaced.status_code == 200, replaced.text
    assert (
        await client.delete(f"/v1/policies/{saved[0]['id']}", headers=tenant_a.headers)
    ).status_code == 204
    await create_policy(client, tenant_a, rules=rules(1))
    # Another tenant's policies count for nothing here.
    await create_policy(client, tenant_b, rules=rules(FREE.rules_per_policy))

    for _ in range(FREE.policies - 1):
        await create_policy(client, tenant_b)
    response = await client.post("/v1/policies", json={"name": "one more"}, headers=tenant_b.headers)
    assert_limit(response, 422, "policies", FREE.policies)


async def test_a_tenants_policies_are_held_to_the_plans_total_bytes(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    # Two rules of 100 actions of 250 characters: about 52 KB a policy, under one document's limit.
    wide = [{"effect": "deny", "actions": [f"{n:03}" + "a" * 247 for n in range(100)]}] * 2
    fits = FREE.total_bytes // 53_000
    for _ in range(fits):
        await create_policy(client, tenant_a, rules=wide)
    response = None
    for _ in range(3):
        response = await client.post(
            "/v1/policies", json={"name": "p", "rules": wide}, headers=tenant_a.headers
        )
        if response.status_code != 201:
            break
    assert_limit(response, 422, "total_bytes", FREE.total_bytes)


async def test_a_simulation_is_held_to_the_plans_drafts_and_rules(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    ask = {"agent": {}, "request": {"action": "read", "resource": "doc"}, "only_drafts": True}
    drafts = [{"name": f"d{n}", "rules": rules(2)} for n in range(FREE.drafts + 1)]
    response = await client.post(
        "/v1/policies/simulate", json={**ask, "policies": drafts}, headers=tenant_a.headers
    )
    assert_limit(response, 413, "drafts", FREE.drafts)

    large = [{"name": "ok"}, {"name": "large", "rules": rules(FREE.rules_per_policy + 1)}]
    response = await client.post(
        "/v1/policies/simulate", json={**ask, "policies": large}, headers=tenant_a.headers
    )
    body = assert_problem(response, 413, "POLICY_LIMIT_EXCEEDED")
    assert body["limit"] == "rules_per_policy"
    assert "/policies/1/rules" in body["detail"]

    allowed = [{"name": f"d{n}", "rules": rules(FREE.rules_per_policy)} for n in range(FREE.drafts)]
    response = await client.post(
        "/v1/policies/simulate",
        json={**ask, "policies": allowed, "request": {"action": "action_3", "resource": "doc"}},
        headers=tenant_a.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["code"] == "CUSTOM_DENIED"


async def test_only_the_newest_versions_are_kept(client: AsyncClient, tenant_a: TenantHandle) -> None:
    created = await create_policy(client, tenant_a)
    changes = FREE.versions_kept + 4
    for n in range(changes):
        response = await client.put(
            f"/v1/policies/{created['id']}", json={"name": f"p{n}"}, headers=tenant_a.headers
        )
        assert response.status_code == 200, response.text
    newest = changes + 1
    versions = (await client.get(f"/v1/policies/{created['id']}/versions", headers=tenant_a.headers)).json()
    assert [item["version"] for item in versions] == list(range(newest - FREE.versions_kept + 1, newest + 1))
    assert versions[-1]["document"]["name"] == f"p{changes - 1}"
    gone = await client.get(f"/v1/policies/{created['id']}/versions/1", headers=tenant_a.headers)
    assert_problem(gone, 404, "POLICY_VERSION_NOT_FOUND")
    # Deleting adds a version and prunes too; the kept ones stay readable.
    assert (await client.delete(f"/v1/policies/{created['id']}", headers=tenant_a.headers)).status_code == 204
    versions = (await client.get(f"/v1/policies/{created['id']}/versions", headers=tenant_a.headers)).json()
    assert len(versions) == FREE.versions_kept
    assert versions[-1]["change"] == "deleted"
