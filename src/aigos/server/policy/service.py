"""Policies: create, read, list, replace and delete, each change a new version.

Every change raises the tenant's policy-set version in the same transaction, so the replicas' compiled
snapshots are named by a number that only grows; the caller announces the new version after the commit.
Each change is held to the tenant's plan (``aigos.server.policy.limits``; the totals sum each policy's
stored size and rule count, never its document), and only the newest
``versions_kept`` versions of a policy are kept: older ones are pruned in the same transaction (every
change stays in the audit log, with who made it).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete as delete_rows
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import policy as core
from aigos.server.audit.events import NewEvent, by
from aigos.server.audit.log import EventLog
from aigos.server.db.commit_hooks import after_commit
from aigos.server.db.paging import paged
from aigos.server.db.types import utcnow
from aigos.server.errors import NotFound, PreconditionFailed, ValidationFailed
from aigos.server.identity import subjects
from aigos.server.policy import limits
from aigos.server.policy.models import Policy, PolicySetVersion, PolicyVersion
from aigos.server.policy.pieces import in_pieces
from aigos.server.policy.schemas import PolicyIn, PolicyOut, PolicyVersionOut
from aigos.server.principal import Principal
from aigos.server.tenancy.locks import lock_tenant
from aigos.server.tenancy.plans import Plan

if TYPE_CHECKING:  # the state reads policies through this module
    from aigos.server.policy.state import PolicyState


def document_of(policy_id: uuid.UUID, spec: PolicyIn) -> dict[str, Any]:
    """The stored (and compiled) form of a policy: the API fields, rule ids filled in, the policy id."""
    document = spec.model_dump(mode="json", exclude={"id"} if hasattr(spec, "id") else None)
    for index, rule in enumerate(document["rules"]):
        rule["id"] = rule.get("id") or f"rule-{index + 1}"
    document["id"] = str(policy_id)
    return document


async def check_document(document: dict[str, Any], pointer: str = "") -> None:
    """Refuse a document whose patterns, windows or rule ids the evaluator cannot take, naming each field
    (in pieces: a document may hold tens of thousands of patterns)."""
    errors = await in_pieces(core.validating(document))
    if errors:
        first_pointer, first_detail = errors[0]
        raise ValidationFailed(
            f"{pointer}{first_pointer}: {first_detail}",
            errors=[{"pointer": pointer + where, "detail": detail} for where, detail in errors],
        )


def to_out(policy: Policy) -> PolicyOut:
    """The API form of a stored policy."""
    return PolicyOut.model_validate(
        {
            **policy.document,
            "id": policy.id,
            "tenant_id": policy.tenant_id,
            "version": policy.version,
            "created_at": policy.created_at,
            "updated_at": policy.updated_at,
        }
    )


async def _check_target(
    session: AsyncSession, tenant_id: uuid.UUID, spec: PolicyIn, pointer: str = ""
) -> None:
    if spec.target.kind != "agent":
        return
    assert spec.target.agent_id is not None  # the schema requires it for a target of kind agent
    if not await subjects.exists(session, tenant_id, spec.target.agent_id):
        raise ValidationFailed(
            f"{pointer}/target/agent_id: no agent {spec.target.agent_id} in this tenant",
            errors=[{"pointer": f"{pointer}/target/agent_id", "detail": "no such agent in this tenant"}],
        )


async def _next_set_version(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    # The tenant lock serialises changes, so two replicas never hand out one version twice.
    await lock_tenant(session, tenant_id)
    row = await session.get(PolicySetVersion, tenant_id)
    if row is None:
        row = PolicySetVersion(tenant_id=tenant_id, version=0)
        session.add(row)
    row.version += 1
    row.updated_at = utcnow()
    return row.version


#: Bytes of documents read and decoded in one go while a tenant's policies are loaded: decoding holds the
#: event loop in proportion to the bytes, and the enterprise plan allows 32 MiB.
BATCH_BYTES = 512 * 1024
#: Policies read in one go at most (small documents).
BATCH_POLICIES = 500


async def document_batches(
    session: AsyncSession, tenant_id: uuid.UUID
) -> AsyncIterator[list[dict[str, Any]]]:
    """The documents of the tenant's policies as they stand, in batches of about ``BATCH_BYTES``.

    The caller lets other work in between batches. Each batch is its own statement: a change committed
    meanwhile may show in a later batch, but it also raised the set's version, read before the batches,
    so the set read here is replaced as soon as that change is announced.
    """
    alive = (Policy.tenant_id == tenant_id, Policy.deleted_at.is_(None))
    sizes = (
        await session.execute(select(Policy.id, Policy.document_bytes).where(*alive).order_by(Policy.id))
    ).all()
    batch: list[uuid.UUID] = []
    size = 0
    for index, (policy_id, document_bytes) in enumerate(sizes):
        batch.append(policy_id)
        size += document_bytes
        if size >= BATCH_BYTES or len(batch) >= BATCH_POLICIES or index == len(sizes) - 1:
            found = await session.scalars(select(Policy.document).where(*alive, Policy.id.in_(batch)))
            yield list(found.all())
            batch, size = [], 0


async def set_version(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """The tenant's current policy-set version (0 before any policy)."""
    version = await session.scalar(
        select(PolicySetVersion.version).where(PolicySetVersion.tenant_id == tenant_id)
    )
    return int(version or 0)


async def _keep(session: AsyncSession, policy: Policy, change: str, actor: str | None, plan: Plan) -> None:
    """Save the policy's new version and prune the ones past the plan's ``versions_kept``."""
    session.add(
        PolicyVersion(
            policy_id=policy.id,
            version=policy.version,
            tenant_id=policy.tenant_id,
            change=change,
            document=policy.document,
            changed_by=actor,
            created_at=utcnow(),
        )
    )
    oldest_kept = policy.version - plan.policy.versions_kept + 1
    if oldest_kept > 1:
        await session.execute(
            delete_rows(PolicyVersion).where(
                PolicyVersion.tenant_id == policy.tenant_id,
                PolicyVersion.policy_id == policy.id,
                PolicyVersion.version < oldest_kept,
            )
        )


async def _check_totals(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    plan: Plan,
    document: dict[str, Any],
    size: int,
    replacing: Policy | None = None,
) -> None:
    # Read under the tenant lock (taken by the caller), so two writers cannot both pass the last slot. The
    # columns, not the documents: summing them costs the same for 5 policies or 5,000.
    where = [Policy.tenant_id == tenant_id, Policy.deleted_at.is_(None)]
    if replacing is not None:
        where.append(Policy.id != replacing.id)
    counted = select(
        func.count(),
        func.coalesce(func.sum(Policy.rule_count), 0),
        func.coalesce(func.sum(Policy.document_bytes), 0),
    ).where(*where)
    others = limits.Totals(*(int(value) for value in (await session.execute(counted)).one()))
    before = others.plus(replacing.rule_count, replacing.document_bytes) if replacing is not None else None
    limits.check_totals(plan, others.plus(_rule_count(document), size), before)


def _rule_count(document: dict[str, Any]) -> int:
    return len(document.get("rules") or ())


async def create(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    spec: PolicyIn,
    actor: str | None,
    plan: Plan,
    policy_id: uuid.UUID | None = None,
) -> tuple[Policy, int]:
    """Save a new policy (version 1); returns it and the tenant's new policy-set version."""
    policy_id = policy_id or uuid.uuid4()
    document = document_of(policy_id, spec)
    size = limits.check_document(plan, document)
    await check_document(document)
    await _check_target(session, tenant_id, spec)
    set_version = await _next_set_version(session, tenant_id)
    await _check_totals(session, tenant_id, plan, document, size)
    now = utcnow()
    policy = Policy(
        id=policy_id,
        tenant_id=tenant_id,
        version=1,
        created_at=now,
        updated_at=now,
        **_columns(document, spec, size),
    )
    session.add(policy)
    await _keep(session, policy, "created", actor, plan)
    await session.flush()
    return policy, set_version


def _columns(document: dict[str, Any], spec: PolicyIn, size: int) -> dict[str, Any]:
    return {
        "document_bytes": size,
        "rule_count": _rule_count(document),
        "name": spec.name,
        "description": spec.description,
        "target_kind": spec.target.kind,
        "target_agent_id": spec.target.agent_id,
        "mode": spec.mode,
        "enabled": spec.enabled,
        "priority": spec.priority,
        "document": document,
    }


async def changed(
    events: EventLog,
    state: PolicyState,
    session: AsyncSession,
    principal: Principal | Callable[[str, dict[str, Any]], NewEvent],
    event_type: str,
    policy: Policy,
    set_version: int,
) -> None:
    """Record a change in the event log (in the change's transaction) and, once committed, announce the
    tenant's new policy-set version to every replica. ``principal`` made the change, or makes its event
    (``(event_type, data) -> NewEvent``) for changes no one requested (a policy an asset card derives)."""
    data = {
        "policy_id": str(policy.id),
        "name": policy.name,
        "version": policy.version,
        "mode": policy.mode,
        "policy_set_version": set_version,
    }
    made = (
        by(principal, event_type, data) if isinstance(principal, Principal) else principal(event_type, data)
    )
    await events.record(made, session)
    tenant_id = policy.tenant_id

    async def announce() -> None:
        # After the commit, so a replica that reloads on hearing it reads the new version.
        await state.announce(tenant_id, set_version)

    after_commit(session, announce)


async def get(session: AsyncSession, tenant_id: uuid.UUID, policy_id: uuid.UUID) -> Policy:
    """The tenant's (not deleted) policy; 404 ``POLICY_NOT_FOUND`` otherwise."""
    policy = await session.scalar(
        select(Policy).where(
            Policy.id == policy_id, Policy.tenant_id == tenant_id, Policy.deleted_at.is_(None)
        )
    )
    if policy is None:
        raise NotFound(f"No policy {policy_id}.", code="POLICY_NOT_FOUND")
    return policy


async def replace(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    policy_id: uuid.UUID,
    spec: PolicyIn,
    actor: str | None,
    plan: Plan,
    if_match: int | None = None,
) -> tuple[Policy, int]:
    """Replace the policy with ``spec`` as a new version (``if_match``: only if still at that version)."""
    document = document_of(policy_id, spec)
    size = limits.check_document(plan, document)
    policy = await _locked(session, tenant_id, policy_id)
    if if_match is not None and policy.version != if_match:
        raise PreconditionFailed(
            f"The policy is at version {policy.version}, not {if_match}.", current_version=policy.version
        )
    await check_document(document)
    await _check_target(session, tenant_id, spec)
    set_version = await _next_set_version(session, tenant_id)
    await _check_totals(session, tenant_id, plan, document, size, replacing=policy)
    for column, value in _columns(document, spec, size).items():
        setattr(policy, column, value)
    policy.version += 1
    policy.updated_at = utcnow()
    await _keep(session, policy, "updated", actor, plan)
    await session.flush()
    return policy, set_version


async def delete(
    session: AsyncSession, tenant_id: uuid.UUID, policy_id: uuid.UUID, actor: str | None, plan: Plan
) -> tuple[Policy, int]:
    """Delete the policy (its kept versions stay readable, a last ``deleted`` version is added)."""
    policy = await _locked(session, tenant_id, policy_id)
    set_version = await _next_set_version(session, tenant_id)
    policy.version += 1
    policy.deleted_at = policy.updated_at = utcnow()
    await _keep(session, policy, "deleted", actor, plan)
    await session.flush()
    return policy, set_version


async def _locked(session: AsyncSession, tenant_id: uuid.UUID, policy_id: uuid.UUID) -> Policy:
    # Lock first, read second: two concurrent changes must produce versions n+1 and n+2, not two n+1.
    await lock_tenant(session, tenant_id)
    policy = await get(session, tenant_id, policy_id)
    await session.refresh(policy)
    return policy


async def page(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    page: int,
    limit: int,
    agent_id: uuid.UUID | None = None,
    mode: str | None = None,
    enabled: bool | None = None,
) -> tuple[list[Policy], int]:
    """One page of the tenant's policies, most recently changed first."""
    where: list[Any] = [Policy.tenant_id == tenant_id, Policy.deleted_at.is_(None)]
    if agent_id is not None:
        where.append(Policy.target_agent_id == agent_id)
    if mode is not None:
        where.append(Policy.mode == mode)
    if enabled is not None:
        where.append(Policy.enabled == enabled)
    stmt = select(Policy).where(*where).order_by(Policy.updated_at.desc(), Policy.id)
    return await paged(session, stmt, page, limit)


async def versions(
    session: AsyncSession, tenant_id: uuid.UUID, policy_id: uuid.UUID
) -> list[PolicyVersionOut]:
    """Every kept version of a policy, deleted or not, oldest first."""
    rows = (
        await session.scalars(
            select(PolicyVersion)
            .where(PolicyVersion.policy_id == policy_id, PolicyVersion.tenant_id == tenant_id)
            .order_by(PolicyVersion.version)
        )
    ).all()
    if not rows:
        raise NotFound(f"No policy {policy_id}.", code="POLICY_NOT_FOUND")
    return [
        PolicyVersionOut(
            policy_id=row.policy_id,
            version=row.version,
            change=row.change,
            changed_by=row.changed_by,
            created_at=row.created_at,
            document=row.document,
        )
        for row in rows
    ]
