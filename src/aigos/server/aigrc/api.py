"""Routes of the AIGRC context: asset cards (upload, list, read, versions) and Golden Thread checks."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import asdict
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from aigos.core import assetcard, compliance_report, goldenthread
from aigos.server.aigrc import compliance, export, lifecycle, service
from aigos.server.aigrc.schemas import (
    AssetCardOut,
    AssetCardSaved,
    AssetCardSummary,
    AssetCardVersionOut,
    DeadLetterOut,
    GoldenThreadIn,
    GoldenThreadOut,
    SyncOut,
    WebhookOut,
)
from aigos.server.aigrc.sync import CardSync
from aigos.server.aigrc.webhook import Webhook
from aigos.server.audit.events import by
from aigos.server.deps import DatabaseDep, EventsDep, RuntimeDep, SessionDep
from aigos.server.errors import Conflict, NotFound, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from aigos.server.identity.deps import IdentityStateDep
from aigos.server.policy.deps import PolicyStateDep
from aigos.server.principal import Principal
from aigos.server.routing import RawBodyRoute, ValidatedRoute, parse_json
from aigos.server.runtime import Runtime
from aigos.server.schemas import Page
from aigos.server.tenancy.deps import require_tenant
from aigos.server.tenancy.plans import plan_of

router = APIRouter(prefix="/v1/aigrc", tags=["aigrc"], route_class=ValidatedRoute)

Reader = Annotated[Principal, Depends(require_tenant("aigrc:read"))]
Writer = Annotated[Principal, Depends(require_tenant("aigrc:write"))]
PageNo = Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1.")]
Limit = Annotated[int, Query(ge=1, le=100, description="Items per page.")]

#: What an upload may be sent as: YAML (as AIGRC keeps cards) or JSON.
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})


def _tenant(principal: Principal) -> uuid.UUID:
    assert principal.tenant_id is not None
    return principal.tenant_id


def card_from(body: bytes, media_type: str | None) -> assetcard.AssetCard:
    """The asset card a request body holds, held to the schema and to what the databases store alike.

    400 ``VALIDATION_FAILED`` naming every field in error (JSON pointers into the card), 413 past
    ``MAX_CARD_BYTES``, 415 for a body neither YAML nor JSON.
    """
    if len(body) > assetcard.MAX_CARD_BYTES:
        raise PayloadTooLarge(f"An asset card may be at most {assetcard.MAX_CARD_BYTES:,} bytes.")
    try:
        if media_type in YAML_TYPES:
            card = assetcard.parse(body)
        elif media_type is None or media_type == "application/json":
            card = assetcard.validate(parse_json(body)) if body else assetcard.validate(None)
        else:
            raise UnsupportedMediaType("Send the card as YAML (application/yaml) or JSON (application/json).")
    except assetcard.CardInvalid as invalid:
        errors = [{"pointer": error.pointer, "detail": error.detail} for error in invalid.errors]
        first = errors[0] if errors else {"pointer": "", "detail": "invalid"}
        raise ValidationFailed(
            f"{first['pointer'] or 'the card'}: {first['detail']}", errors=errors
        ) from None
    return card


async def upload_card(
    request: Request,
    response: Response,
    events: EventsDep,
    session: SessionDep,
    identity: IdentityStateDep,
    policies: PolicyStateDep,
    principal: Writer,
    source: Annotated[
        Literal["api", "directory"],
        Query(
            description="`directory` when the card comes from a `.aigrc/cards` directory (the CLI's import)."
        ),
    ] = "api",
) -> AssetCardSaved:
    """Save an asset card (YAML or JSON, as AIGRC writes it), keyed by its `id`.

    A new id is version 1 (201); a changed card a new version (200, `change` `updated`); the same card
    again changes nothing (200, `unchanged`). Unknown fields are kept. Every version stays readable.
    A change that narrows the card's `runtime.capabilities` narrows its live agents' at once
    (`asset_card.agents_narrowed`); `constraints.runtime.maxCostPerRequestUsd` becomes a policy targeting
    the card's agents (`policy.*`), replaced as the card changes.
    """
    header = request.headers.get("content-type")
    media_type = header.split(";", 1)[0].strip().lower() if header else None
    # Off the event loop: a pathological card at the size limit takes most of a second to read.
    card = await asyncio.to_thread(card_from, await request.body(), media_type)
    saved = await service.save(
        session,
        events,
        _tenant(principal),
        plan_of(principal.plan_tier),
        card,
        source=source,
        recorded_as=partial(by, principal),
        changed_by=principal.actor_id,
    )
    await lifecycle.after_save(
        session, events, identity, policies, saved, card, plan_of(principal.plan_tier), partial(by, principal)
    )
    if saved.change == "created":
        response.status_code = status.HTTP_201_CREATED
    return AssetCardSaved(**service.to_out(saved.record).model_dump(), change=saved.change)


_CARD_BODY = {
    "required": True,
    "content": {
        "application/yaml": {"schema": {"type": "string", "description": "An AIGRC asset card (YAML)."}},
        "application/json": {"schema": {"type": "object", "description": "An AIGRC asset card."}},
    },
}
router.add_api_route(
    "/asset-cards",
    upload_card,
    methods=["POST"],
    response_model=AssetCardSaved,
    summary="Upload an asset card",
    responses={201: {"description": "A new card, version 1."}, 413: {}, 415: {}},
    openapi_extra={"requestBody": _CARD_BODY},
    route_class_override=RawBodyRoute,
)


@router.get("/asset-cards", response_model=Page[AssetCardSummary], summary="List asset cards")
async def list_cards(
    session: SessionDep,
    principal: Reader,
    page: PageNo = 1,
    limit: Limit = 20,
    risk_level: Annotated[str | None, Query(pattern="^(minimal|limited|high|unacceptable)$")] = None,
    status_: Annotated[
        str | None,
        Query(alias="status", pattern="^(draft|linked|approved|production|deprecated|revoked)$"),
    ] = None,
) -> dict[str, Any]:
    """The tenant's cards, most recently changed first (documents left out: `GET` one for it)."""
    rows, total = await service.page(
        session, _tenant(principal), page=page, limit=limit, risk_level=risk_level, status=status_
    )
    data = [AssetCardSummary(**service.to_out(row).model_dump(exclude={"document"})) for row in rows]
    return {"data": data, "page": page, "limit": limit, "total": total}


@router.get("/asset-cards/{card_id}", response_model=AssetCardOut, summary="Get an asset card")
async def get_card(card_id: str, session: SessionDep, principal: Reader) -> AssetCardOut:
    """The card at its current version, with its document."""
    return service.to_out(await service.get(session, _tenant(principal), card_id))


@router.get(
    "/asset-cards/{card_id}/versions",
    response_model=list[AssetCardVersionOut],
    summary="List an asset card's versions",
)
async def list_versions(card_id: str, session: SessionDep, principal: Reader) -> list[AssetCardVersionOut]:
    """Every version of the card AIGOS saved, newest first, each with its document and source."""
    return await service.versions(session, _tenant(principal), card_id)


@router.get(
    "/asset-cards/{card_id}/export",
    response_class=StreamingResponse,
    summary="Export an asset card's runtime record for AIGRC",
    responses={
        200: {
            "description": "NDJSON: one AIGRC EVT-001 envelope per line.",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    },
)
async def export_card(
    card_id: str, session: SessionDep, database: DatabaseDep, principal: Reader
) -> Response:
    """What AIGOS knows at runtime about the card, as AIGRC tooling reads it: each live agent of the card
    (`agent.live`), then their registrations, decisions, violations and kill-switch commands in log order,
    each an EVT-001 envelope (its `id` stable, its `hash` over the rest, its `goldenThread` the card's)."""
    record = await service.get(session, _tenant(principal), card_id)
    return StreamingResponse(
        export.lines(database, _tenant(principal), record),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{card_id}.aigos.ndjson"'},
    )


@router.post("/verify-golden-thread", response_model=GoldenThreadOut, summary="Verify a Golden Thread")
async def verify_golden_thread(
    body: GoldenThreadIn, session: SessionDep, principal: Reader
) -> GoldenThreadOut:
    """Recompute a Golden Thread (SPEC-PRT-001) as the spec and AIGRC's reference implementation form it,
    and compare a stored hash in constant time: for CI and tools. Give the three inputs (and `hash`), or a
    saved card's `asset_card_id` to check the thread it carries."""
    ticket, approver, approved_at, stored = body.ticket_id, body.approved_by, body.approved_at, body.hash
    if body.asset_card_id is not None:
        record = await service.get(session, _tenant(principal), body.asset_card_id)
        thread = service.card_of(record).golden_thread
        if thread is None:
            raise ValidationFailed(
                "That asset card has no golden_thread.",
                errors=[{"pointer": "/asset_card_id", "detail": "the card has no golden_thread"}],
            )
        ticket, approver, approved_at, stored = (
            thread.ticket_id,
            thread.approved_by,
            thread.approved_at,
            thread.hash,
        )
    missing = [
        name
        for name, value in (("ticket_id", ticket), ("approved_by", approver), ("approved_at", approved_at))
        if not value
    ]
    if missing:
        errors = [{"pointer": f"/{name}", "detail": "required without asset_card_id"} for name in missing]
        raise ValidationFailed(f"/{missing[0]}: required without asset_card_id", errors=errors)
    assert ticket is not None
    assert approver is not None
    assert approved_at is not None
    try:
        canonical = goldenthread.canonical_string(ticket, approver, approved_at)
    except ValueError as exc:
        detail = f"not an ISO 8601 date-time: {exc}"
        raise ValidationFailed(
            f"/approved_at: {detail}", errors=[{"pointer": "/approved_at", "detail": detail}]
        ) from None
    result = goldenthread.verify(stored, ticket, approver, approved_at) if stored else None
    return GoldenThreadOut(
        canonical=canonical,
        hash=goldenthread.compute(ticket, approver, approved_at),
        reference_hash=goldenthread.compute(ticket, approver, approved_at, lower_email=False),
        verified=None if result is None else result.verified,
        form=None if result is None else result.form,
    )


@router.get(
    "/compliance/{card_id}",
    summary="Get an asset card's compliance status",
    responses={
        200: {
            "description": "The report as JSON, or as a printable HTML page with `format=html`.",
            "content": {"application/json": {"schema": {"type": "object"}}, "text/html": {}},
        }
    },
)
async def compliance_status(
    card_id: str,
    session: SessionDep,
    principal: Reader,
    profile: Annotated[
        list[str] | None,
        Query(
            max_length=10,
            description="Assess these profiles (`eu-ai-act`, `nist-ai-rmf`, `iso-42001`, "
            "`us-omb-m24`) instead of those the card declares.",
        ),
    ] = None,
    format: Annotated[
        Literal["json", "html"], Query(description="`html`: a report to print or file.")
    ] = "json",
) -> Response:
    """The card's risk classification and, per compliance profile, which controls are met or missing, with
    the evidence: what the card claims and what the event log observed of its live agents (decisions
    logged, violations, kill-switch triggers and acknowledgements, Golden Thread state). Deterministic:
    the same card and log give the same report and `report_hash`."""
    body = await compliance.report(session, _tenant(principal), card_id, profile)
    if format == "html":
        return HTMLResponse(compliance_report.html(body))
    return JSONResponse(body)


def _sync_of(runtime: Runtime, principal: Principal) -> CardSync:
    sync = runtime.aigrc
    if sync is None or sync.tenant_id != principal.tenant_id:
        raise Conflict(
            "No AIGRC source is configured for this tenant (AIGRC_API_URL and AIGOS_AIGRC_TENANT_ID).",
            code="AIGRC_SOURCE_NOT_CONFIGURED",
        )
    return sync


@router.post("/sync", response_model=SyncOut, summary="Sync asset cards from the AIGRC source now")
async def sync_now(runtime: RuntimeDep, principal: Writer) -> dict[str, Any]:
    """Fetch the AIGRC source's cards and save each as an upload would (`source` `sync`). A card the
    schema refuses is named in `refused`, the others saved; a source that fails changes nothing (the last
    good copy of every card stays) and says why in `detail`. Recorded as `aigrc.synced`."""
    result = await _sync_of(runtime, principal).run()
    return asdict(result)


@router.get("/sync", response_model=SyncOut, summary="Get the last sync from the AIGRC source")
async def last_sync(runtime: RuntimeDep, principal: Reader) -> dict[str, Any]:
    """The last run of the sync on the server that answers (each replica syncs on its own timer; every
    run is on the log as `aigrc.synced`). 404 `NO_SYNC_YET` before the first."""
    last = _sync_of(runtime, principal).last
    if last is None:
        raise NotFound("The source has not been synced yet on this server.", code="NO_SYNC_YET")
    return asdict(last)


def _webhook_of(runtime: Runtime, principal: Principal) -> Webhook:
    webhook = runtime.aigrc_webhook
    if webhook is None or webhook.tenant_id != principal.tenant_id:
        raise Conflict(
            "No AIGRC webhook is configured for this tenant "
            "(AIGOS_AIGRC_WEBHOOK_URL and AIGOS_AIGRC_TENANT_ID).",
            code="AIGRC_WEBHOOK_NOT_CONFIGURED",
        )
    return webhook


@router.get("/webhook", response_model=WebhookOut, summary="Get the AIGRC webhook's progress")
async def webhook_progress(runtime: RuntimeDep, session: SessionDep, principal: Reader) -> WebhookOut:
    """How far the webhook has delivered the tenant's log (the `seq` it reached) and how many envelopes
    it set aside as dead letters."""
    _webhook_of(runtime, principal)
    cursor, dead = await service.webhook_state(session, _tenant(principal))
    return WebhookOut(cursor=cursor, dead_letters=dead)


@router.get(
    "/webhook/dead-letters",
    response_model=Page[DeadLetterOut],
    summary="List the AIGRC webhook's dead letters",
)
async def list_dead_letters(
    runtime: RuntimeDep, session: SessionDep, principal: Reader, page: PageNo = 1, limit: Limit = 20
) -> dict[str, Any]:
    """Envelopes the receiver did not take after every retry, newest first, each with the last error."""
    _webhook_of(runtime, principal)
    rows, total = await service.dead_letters(session, _tenant(principal), page=page, limit=limit)
    data = [
        DeadLetterOut(
            seq=row.seq,
            envelope_id=row.envelope_id,
            envelope=row.envelope,
            attempts=row.attempts,
            error=row.error,
            created_at=row.created_at,
        )
        for row in rows
    ]
    return {"data": data, "page": page, "limit": limit, "total": total}
