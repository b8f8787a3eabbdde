"""Asset cards the tests upload: written from the public AIGRC spec, as an outside team would write them."""

from __future__ import annotations

from typing import Any

from httpx import AsyncClient, Response

from tests.helpers import TenantHandle

#: The spec's own public Golden Thread vector.
SPEC_HASH = "sha256:bb085280036c278a6478b90f67d09cfcb6bcc7484d13229d7eba509bdb4685f7"

CARD = """\
id: aigrc-2025-0a1b2c3d
name: Support triage agent
version: 1.10
created: 2025-01-15T10:30:00Z
updated: 2025-02-01T08:00:00Z
ownership:
  owner:
    name: Dana Ops
    email: dana@corp.com
technical:
  type: agent
  framework: langchain
classification:
  riskLevel: limited
  riskFactors:
    customerFacing: true
    piiProcessing: "yes"
  jurisdictions: [EU]
intent:
  linked: true
  ticketId: FIN-1234
  businessJustification: Faster first answers.
governance:
  status: approved
  approvals:
    - {role: ciso, name: C. Iso, email: ciso@corp.com, date: 2025-01-15T10:30:00Z}
golden_thread:
  ticket_id: FIN-1234
  approved_by: ciso@corp.com
  approved_at: 2025-01-15T10:30:00Z
  hash: {hash}
runtime:
  verification_failure_mode: {mode}
  capabilities:
    allowed_tools: [{tools}]
    allowed_domains: ["*.corp.com"]
    max_budget: 50
x-team-notes:
  kept: [1, 2]
"""
YAML = {"Content-Type": "application/yaml"}


def card(
    *, tools: str = "web_*, ticket_read", hash: str = SPEC_HASH, mode: str = "SANDBOX", **replace: str
) -> str:
    """The card above, with its capabilities, Golden Thread hash and failure mode set, and any other
    text replaced (``{"riskLevel: limited": "riskLevel: high"}``)."""
    text = CARD.replace("{tools}", tools).replace("{hash}", hash).replace("{mode}", mode)
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


async def upload(client: AsyncClient, tenant: TenantHandle, text: str) -> Response:
    """``POST /v1/aigrc/asset-cards`` with a YAML card."""
    return await client.post("/v1/aigrc/asset-cards", content=text, headers={**tenant.headers, **YAML})


def unbounded(card_id: str) -> str:
    """A valid card named ``card_id`` that puts no bounds on its agents' capabilities."""
    text = card().replace("id: aigrc-2025-0a1b2c3d", f"id: {card_id}")
    return text[: text.index("  capabilities:")] + text[text.index("x-team-notes:") :]


async def uploaded(client: AsyncClient, tenant: TenantHandle, card_id: str) -> dict[str, Any]:
    """Upload ``unbounded(card_id)``; asserts it was saved."""
    response = await upload(client, tenant, unbounded(card_id))
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body
