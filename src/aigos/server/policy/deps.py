"""FastAPI dependencies of the policy context: the objects it owns, read from the app's runtime once per
request (``async``: FastAPI runs plain ``def`` dependencies in a thread, which costs more than a check)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from aigos.server.policy.budgets import BudgetBook
from aigos.server.policy.checks import Checks
from aigos.server.policy.state import PolicyState


async def get_policy_state(request: Request) -> PolicyState:
    """The replica's compiled policy sets and agent attributes."""
    state: PolicyState = request.app.state.runtime.policy
    return state


async def get_budgets(request: Request) -> BudgetBook:
    """Budgets and rate limits at check time."""
    budgets: BudgetBook = request.app.state.runtime.budgets
    return budgets


async def get_checks(request: Request) -> Checks:
    """What deciding a check takes (see ``Checks``), built once when the app starts."""
    checks: Checks = request.app.state.policy_checks
    return checks


PolicyStateDep = Annotated[PolicyState, Depends(get_policy_state)]
BudgetsDep = Annotated[BudgetBook, Depends(get_budgets)]
