"""API shapes of the AIGRC context: asset cards, their versions, and Golden Thread checks."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aigos.server.inputs import Input


class GoldenThreadState(BaseModel):
    """A Golden Thread as AIGOS verified it: `form` says which normalisation matched (`spec` lower-cases
    the approver's email, `reference` keeps it as written, as AIGRC's reference implementation does)."""

    hash: str | None
    ticket_id: str
    verified: bool
    form: Literal["spec", "reference"] | None = None


class AssetCardSummary(BaseModel):
    """A tenant's asset card at its current version, without its document (as lists show it)."""

    id: str = Field(description="The card's own id (`aigrc-YYYY-xxxxxxxx`).")
    name: str
    risk_level: str
    status: str
    card_version: str = Field(description="The card's `version` field, as its authors number it.")
    version: int = Field(description="How many changed copies AIGOS saved under this id.")
    content_hash: str = Field(description="`sha256:` of the card's canonical JSON (keys sorted, compact).")
    source: Literal["api", "directory", "sync"]
    golden_thread: GoldenThreadState | None
    created_at: datetime
    updated_at: datetime


class AssetCardOut(AssetCardSummary):
    """A tenant's asset card at its current version."""

    document: dict[str, Any] = Field(description="The card as parsed: unknown fields kept.")


class AssetCardSaved(AssetCardOut):
    """A card after an upload: `change` says whether this upload made a new version."""

    change: Literal["created", "updated", "unchanged"]


class AssetCardVersionOut(BaseModel):
    """One saved version of a card."""

    id: str
    version: int
    content_hash: str
    source: Literal["api", "directory", "sync"]
    changed_by: str | None
    created_at: datetime
    document: dict[str, Any]


class GoldenThreadIn(Input):
    """Verify a Golden Thread: its three inputs and the stored hash, or a saved card's own."""

    model_config = ConfigDict(extra="forbid")

    ticket_id: str | None = Field(None, min_length=1, max_length=200)
    approved_by: str | None = Field(None, min_length=3, max_length=320)
    approved_at: str | None = Field(None, min_length=10, max_length=40, description="ISO 8601.")
    hash: str | None = Field(None, max_length=71, description="`sha256:` + 64 hex; omitted: only computed.")
    asset_card_id: str | None = Field(None, max_length=32, description="Verify this saved card's instead.")


class GoldenThreadOut(BaseModel):
    """The Golden Thread recomputed: the canonical string hashed, the hash in both accepted forms, and
    whether the stored hash matched one of them."""

    canonical: str = Field(description="`approved_at=…|approved_by=…|ticket_id=…`, as the spec forms it.")
    hash: str = Field(description="The spec's form (email lower-cased).")
    reference_hash: str = Field(description="AIGRC's reference implementation's form (email as written).")
    verified: bool | None = Field(description="Whether `hash` matched; null when none was given.")
    form: Literal["spec", "reference"] | None = None


class SyncRefusal(BaseModel):
    """A card of the source that was not saved, and why."""

    index: int = Field(description="Its position in the source's list.")
    id: str | None
    errors: list[dict[str, str]] = Field(description="`pointer` into the card and `detail`, each.")


class SyncOut(BaseModel):
    """One run of the AIGRC source's sync. A failed run changed nothing: the cards saved before stay."""

    outcome: Literal["success", "failure"]
    started_at: str
    fetched: int
    created: int
    updated: int
    unchanged: int
    refused: list[SyncRefusal]
    detail: str | None = Field(description="Why the run failed (the source unreachable, refused, ...).")


class DeadLetterOut(BaseModel):
    """An envelope the AIGRC webhook could not deliver after every retry."""

    seq: int = Field(description="The log entry it was made from.")
    envelope_id: str
    envelope: dict[str, Any]
    attempts: int
    error: str
    created_at: datetime


class WebhookOut(BaseModel):
    """The AIGRC webhook's progress: the last log entry it delivered or set aside, and its dead letters."""

    cursor: int
    dead_letters: int
