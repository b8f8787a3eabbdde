"""FastAPI dependencies of the policy context: the objects it owns, read from the app's runtime once per
request (``async``: FastAPI runs plain ``def`` dependencies in a thread, which costs more than a check)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from aigos.server.audit.log import EventLog
from aigos.server.policy.budgets import BudgetBook
from aigos.server.policy.checks import Checks
from aigos.server.policy.state import PolicyState
from aigos.server.tenancy.usage import UsageMeter


async def get_policy_state(request: Request) -> PolicyState:
    """The replica's compiled policy sets and agent attributes."""
    state: PolicyState = request.app.state.runtime.policy
    return state


async def get_budgets(request: Request) -> BudgetBook:
    """Budgets and rate limits at check time."""
    budgets: BudgetBook = request.app.state.runtime.budgets
    return budgets


async def get_checks(request: Request) -> Checks:
    """What deciding a check takes (see ``Checks``): made per check, as cheap as reading its parts."""
    runtime = request.app.state.runtime
    state: PolicyState = runtime.policy
    budgets: BudgetBook = runtime.budgets
    events: EventLog = runtime.events
    usage: UsageMeter = runtime.usage
    return Checks(state, budgets, events, usage)


PolicyStateDep = Annotated[PolicyState, Depends(get_policy_state)]
BudgetsDep = Annotated[BudgetBook, Depends(get_budgets)]
