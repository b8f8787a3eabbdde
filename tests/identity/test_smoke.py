from httpx import AsyncClient

from tests.tenancy.conftest import TenantHandle


async def test_register_token_heartbeat(client: AsyncClient, tenant_a: TenantHandle) -> None:
    r = await client.post("/v1/agents/register", json={"name": "bot", "capabilities": {"tools": ["web_*"], "domains": ["*.example.com"], "max_budget": 10}}, headers=tenant_a.headers)
    assert r.status_code == 201, r.text
    reg = r.json()
    token = reg["identity_token"]
    hb = await client.post(f"/v1/agents/{reg['agent_id']}/heartbeat", headers={"Authorization": f"Bearer {token}"})
    assert hb.status_code == 200, hb.text
    t = await client.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=(reg["client_id"], reg["client_secret"]))
    assert t.status_code == 200, t.text
    assert t.headers["cache-control"] == "no-store"
    at = t.json()["access_token"]
    i = await client.post("/oauth2/introspect", data={"token": at}, auth=(reg["client_id"], reg["client_secret"]))
    assert i.json()["active"] is True, i.text
    rv = await client.post("/oauth2/revoke", data={"token": at}, auth=(reg["client_id"], reg["client_secret"]))
    assert rv.status_code == 200, rv.text
    i = await client.post("/oauth2/introspect", data={"token": at}, auth=(reg["client_id"], reg["client_secret"]))
    assert i.json() == {"active": False}, i.text
    d = await client.delete(f"/v1/agents/{reg['agent_id']}", headers=tenant_a.headers)
    assert d.status_code == 204, d.text
    hb = await client.post(f"/v1/agents/{reg['agent_id']}/heartbeat", headers={"Authorization": f"Bearer {token}"})
    assert hb.status_code == 401, hb.text
    assert hb.json()["code"] == "AGENT_TERMINATED"
    meta = (await client.get("/.well-known/openid-configuration")).json()
    assert meta["token_endpoint"] == "http://testserver/oauth2/token"
    jwks = (await client.get("/.well-known/jwks.json")).json()
    assert jwks["keys"][0]["alg"] == "ES256"
