"""API shapes of the policy context: the policy document, its versions, checks, simulations and bundles.

The document's bounds, literals and field checks are core's (``aigos.core.policy.document``), written there
once; what is written here is how the API names and nests them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar, get_type_hints

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from aigos.core import policy as core
from aigos.server.identity.schemas import CapabilitiesIn
from aigos.server.inputs import Input
from aigos.server.telemetry.schemas import TelemetryEvent

#: Outcomes one check may carry (the SDK sends what completed since its previous check).
MAX_CARRIED_EVENTS = 100

_T = TypeVar("_T")


def _refusing(check: Callable[[object], str | None]) -> AfterValidator:
    """A pydantic validator refusing what a core check finds wrong, with the check's own words."""

    def refuse(value: _T) -> _T:
        problem = check(value)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(refuse)


Pattern = Annotated[str, Field(min_length=1, max_length=core.MAX_PATTERN)]
RuleId = Annotated[str, Field(pattern=core.RULE_ID)]
Money = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Priority = Annotated[int, Field(ge=-core.MAX_PRIORITY, le=core.MAX_PRIORITY)]
#: Checked by core's check (its message), shown to clients as the pattern it checks.
Clock = Annotated[str, _refusing(core.hhmm_error), WithJsonSchema({"type": "string", "pattern": core.HHMM})]
TimeZone = Annotated[str, _refusing(core.zone_error)]


class Strict(Input):
    """Unknown fields are refused: a misspelt condition must not silently match everything."""

    model_config = ConfigDict(extra="forbid")


class Selector(Strict):
    """Agent attributes; every attribute given must match (labels: every pair, from the agent's metadata)."""

    agent_type: list[str] | None = Field(default=None, max_length=core.MAX_SELECTOR_VALUES)
    owner: list[str] | None = Field(default=None, max_length=core.MAX_SELECTOR_VALUES)
    deployment_env: list[str] | None = Field(default=None, max_length=core.MAX_SELECTOR_ENVS)
    labels: dict[str, str] | None = None


class Target(Strict):
    """Which agents a policy applies to: the whole tenant, one agent, or agents selected by attributes."""

    kind: core.TargetKind = "tenant"
    agent_id: uuid.UUID | None = None
    selector: Selector | None = None

    @model_validator(mode="after")
    def _complete(self) -> Target:
        if self.kind == "agent" and self.agent_id is None:
            raise ValueError("a target of kind 'agent' needs agent_id")
        if self.kind == "selector" and self.selector is None:
            raise ValueError("a target of kind 'selector' needs selector")
        return self


class DomainPatterns(Strict):
    """Domain globs (``api.company.com``, ``*.company.com``, ``*``): deny wins; allow, if given, limits."""

    allow: list[Pattern] = Field(default_factory=list, max_length=core.MAX_DOMAIN_PATTERNS)
    deny: list[Pattern] = Field(default_factory=list, max_length=core.MAX_DOMAIN_PATTERNS)


class CostCondition(Strict):
    """Bounds on the request's ``estimated_cost`` (missing cost counts as 0)."""

    gt: Money | None = None
    gte: Money | None = None
    lt: Money | None = None
    lte: Money | None = None


class TimeWindow(Strict):
    """When a rule applies: days of week and a HH:MM range in a time zone (a range may cross midnight)."""

    days: list[core.Day] | None = None
    start: Clock | None = None
    end: Clock | None = None
    timezone: TimeZone = "UTC"

    @model_validator(mode="after")
    def _span(self) -> TimeWindow:
        problem = core.span_error(self.start, self.end)
        if problem:
            raise ValueError(problem[1])
        return self


class Conditions(Strict):
    """What else must hold for a rule to match; all given conditions must."""

    tools: list[Pattern] | None = Field(default=None, max_length=core.MAX_CONDITION_PATTERNS)
    domains: list[Pattern] | None = Field(default=None, max_length=core.MAX_CONDITION_PATTERNS)
    cost: CostCondition | None = None
    time: TimeWindow | None = None
    agent: Selector | None = None
    context: dict[str, str | list[str]] | None = None


class Rule(Strict):
    """One rule: ``effect`` on requests whose action and resource match and whose conditions all hold."""

    id: RuleId | None = Field(default=None, description="Unique within the policy; `rule-N` when omitted.")
    effect: core.Effect
    actions: list[Pattern] = Field(
        default_factory=lambda: ["*"], min_length=1, max_length=core.MAX_RULE_PATTERNS
    )
    resources: list[Pattern] = Field(
        default_factory=lambda: ["*"], min_length=1, max_length=core.MAX_RULE_PATTERNS
    )
    conditions: Conditions | None = None
    priority: Priority = 0
    description: str | None = Field(default=None, max_length=core.MAX_RULE_DESCRIPTION)


class BudgetSpec(Strict):
    """A spending limit on ``estimated_cost``: per agent, or shared by every agent the policy targets."""

    limit: Money
    period: core.Period = "lifetime"
    scope: core.Scope = "agent"


class RateLimitSpec(Strict):
    """At most ``requests`` checks per ``per_seconds`` (bursts up to ``requests``), per agent or shared."""

    requests: int = Field(ge=core.MIN_RATE_REQUESTS, le=core.MAX_RATE_REQUESTS)
    per_seconds: float = Field(gt=0, le=core.MAX_RATE_SECONDS, allow_inf_nan=False)
    scope: core.Scope = "agent"


class PolicyIn(Strict):
    """A policy as written by an administrator."""

    name: str = Field(min_length=1, max_length=core.MAX_NAME)
    description: str | None = Field(default=None, max_length=core.MAX_DESCRIPTION)
    target: Target = Field(default_factory=Target)
    mode: core.Mode = "enforce"
    enabled: bool = True
    priority: Priority = 0
    default_effect: core.Effect = "allow"
    domains: DomainPatterns | None = None
    budget: BudgetSpec | None = None
    rate_limit: RateLimitSpec | None = None
    rules: list[Rule] = Field(default_factory=list, max_length=core.MAX_RULES)


class PolicyOut(PolicyIn):
    """A stored policy at its current version."""

    model_config = ConfigDict(extra="ignore")

    id: uuid.UUID
    tenant_id: uuid.UUID
    version: int
    created_at: datetime
    updated_at: datetime


class PolicyPage(BaseModel):
    """One page of policies."""

    policies: list[PolicyOut]
    total: int
    page: int
    limit: int


class PolicyVersionOut(BaseModel):
    """A saved version of a policy: what it said, who changed it and how."""

    policy_id: uuid.UUID
    version: int
    change: Literal["created", "updated", "deleted"]
    changed_by: str | None
    created_at: datetime
    document: dict[str, Any]


class CheckContext(Input):
    """The seed's check context; other keys are kept for rules' `context` conditions."""

    model_config = ConfigDict(extra="allow")

    tool: str | None = Field(default=None, max_length=256)
    domain: str | None = Field(default=None, max_length=2048)
    estimated_cost: Money | None = None


class CheckIn(Input):
    """`POST /v1/policies/check`: may the calling agent do this?"""

    action: str = Field(min_length=1, max_length=256)
    resource: str = Field(min_length=1, max_length=2048)
    context: CheckContext = Field(default_factory=CheckContext)
    trace: bool = Field(default=False, description="Return each stage's result.")
    telemetry: list[TelemetryEvent] = Field(
        default_factory=list,
        max_length=MAX_CARRIED_EVENTS,
        description=(
            "Events the agent completed since its previous check (tool outcomes), carried here instead of "
            "a separate `POST /v1/telemetry`; recorded exactly as that route records them (needs the "
            "`telemetry:write` scope)."
        ),
    )


# -- decisions: made from core's definition (``aigos.core.policy.decision``), not written again ------------


def _answer(name: str, doc: str, shape: type, **more: Any) -> type[BaseModel]:
    """A response model named ``name`` with ``shape``'s fields first (a core dataclass or typed dict), each
    required as the API always sends it (unless the typed dict may leave it out), then ``more`` (pydantic
    field definitions, which may also redefine one of ``shape``'s in its place)."""
    optional: frozenset[str] = getattr(shape, "__optional_keys__", frozenset())
    fields: dict[str, Any] = {
        field: (hint, None if field in optional else ...) for field, hint in get_type_hints(shape).items()
    }
    fields.update(more)
    return create_model(name, __doc__=doc, **fields)


WouldDenyOut = _answer("WouldDenyOut", "A denial a dry-run policy would have made.", core.WouldDeny)
TraceStep = _answer("TraceStep", "One stage of the evaluation chain.", core.TraceStep)
_CODES = [code.value for code in core.Code]
CheckOut = _answer(
    "CheckOut",
    "The decision (the seed's fields, plus the denial code and stage, dry-run findings and ids).",
    core.Verdict,
    code=(str | None, Field(description=f"Why not: {', '.join(_CODES[:-1])} or {_CODES[-1]}.")),
    would_deny=(list[WouldDenyOut], ...),  # type: ignore[valid-type]
    decision_id=(uuid.UUID, ...),
    policy_version=(int, ...),
    latency_ms=(float, ...),
    trace=(list[TraceStep] | None, ...),  # type: ignore[valid-type]
)


class SimulatedAgent(Strict):
    """A hypothetical agent, for simulating before the agent exists."""

    status: Literal["active", "paused", "suspended", "terminated", "archived"] = "active"
    capabilities: dict[str, Any] = Field(default_factory=dict, description="As a registered agent's.")
    agent_type: str | None = None
    owner: str | None = None
    deployment_env: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Held to what a registered agent may hold: `{"max_budget": "inf"}` would otherwise simulate an
        # unbounded budget, and a budget that is no number would fail the evaluation.
        return CapabilitiesIn.model_validate(value).model_dump(exclude_none=True)


class DraftPolicy(PolicyIn):
    """A policy not saved yet; with ``id`` it stands in for that saved policy."""

    id: uuid.UUID | None = None


class SimulateIn(Strict):
    """Evaluate a request for an agent against the saved policies, drafts, or both."""

    agent_id: uuid.UUID | None = Field(
        default=None, description="A registered agent (its status, capabilities)."
    )
    agent: SimulatedAgent | None = Field(default=None, description="Or a hypothetical one.")
    request: CheckIn
    policies: list[DraftPolicy] = Field(default_factory=list, max_length=100)
    only_drafts: bool = Field(default=False, description="Ignore the saved policies.")
    at: datetime | None = Field(default=None, description="Evaluate as of this time (time windows, periods).")

    @model_validator(mode="after")
    def _one_agent(self) -> SimulateIn:
        if (self.agent_id is None) == (self.agent is None):
            raise ValueError("give exactly one of agent_id and agent")
        return self


SimulateOut = _answer(
    "SimulateOut",
    "A simulated decision with its full trace; no budget is spent and nothing is recorded.",
    core.Verdict,
    would_deny=(list[WouldDenyOut], ...),  # type: ignore[valid-type]
    trace=(list[TraceStep], ...),  # type: ignore[valid-type]
    policy_version=(int, ...),
)


class SignedBundle(BaseModel):
    """An agent's effective policy, signed (Ed25519 over the canonical JSON of ``payload``)."""

    payload: dict[str, Any]
    key_id: str
    alg: Literal["Ed25519"] = "Ed25519"
    signature: str


class PublicKey(BaseModel):
    """A public key that signs bundles."""

    key_id: str
    alg: Literal["Ed25519"] = "Ed25519"
    public_key: str = Field(description="The raw 32-byte key, base64url.")


class PublicKeys(BaseModel):
    """The keys a bundle's signature may be checked against."""

    keys: list[PublicKey]
