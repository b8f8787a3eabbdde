from httpx import AsyncClient

from tests.tenancy.conftest import TenantHandle


async def test_smoke(client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle) -> None:
    r = await client.get(f"/v1/tenants/{tenant_a.id}", headers=tenant_a.headers)
    assert r.status_code == 200, r.text
    r = await client.get(f"/v1/tenants/{tenant_b.id}", headers=tenant_a.headers)
    assert r.status_code == 404, r.text
    r = await client.post(
        "/v1/api-keys", json={"name": "ci", "scopes": ["agents:read"]}, headers=tenant_a.headers
    )
    assert r.status_code == 201, r.text
    r = await client.get("/v1/api-keys", headers=tenant_a.headers)
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 2
    print(r.headers)
    r2 = await client.post(
        f"/v1/api-keys/{tenant_a.key_id}/rotate", json={"grace_seconds": 0}, headers=tenant_a.headers
    )
    assert r2.status_code == 201, r2.text
    r = await client.get("/v1/api-keys", headers=tenant_a.headers)
    assert r.status_code == 401, r.text
    r = await client.get("/v1/api-keys", headers={"Authorization": "Bearer " + r2.json()["key"]})
    assert r.status_code == 200, r.text
