"""``Capabilities.narrowed_to``: an asset card's bounds cut an agent's capabilities down, never widen them."""

from __future__ import annotations

from aigos.core.agents import Capabilities


def test_patterns_within_the_bounds_stay_and_wider_ones_give_way_to_the_bounds() -> None:
    agent = Capabilities(tools=("web_*", "db_read", "shell"), domains=("*.example.com",), max_budget=50.0)
    card = Capabilities(
        tools=("web_search", "db_*"), domains=("api.example.com", "other.org"), max_budget=20.0
    )
    narrowed = agent.narrowed_to(card)
    assert narrowed.tools == ("db_read", "web_search")
    assert narrowed.domains == ("api.example.com",)
    assert narrowed.max_budget == 20.0
    assert card.covers(narrowed) == []


def test_narrowing_within_the_bounds_changes_nothing() -> None:
    agent = Capabilities(tools=("web_search",), domains=(), max_budget=None)
    card = Capabilities(tools=("web_*", "db_*"), domains=("*.example.com",), max_budget=None)
    assert agent.narrowed_to(card) == agent
    # A budget appears only from the bounds, and the smaller one wins either way.
    assert agent.narrowed_to(Capabilities(tools=("*",), max_budget=5.0)).max_budget == 5.0
    assert Capabilities(max_budget=3.0).narrowed_to(Capabilities(max_budget=5.0)).max_budget == 3.0


def test_empty_bounds_leave_nothing() -> None:
    agent = Capabilities(tools=("web_search",), domains=("a.example.com",), max_budget=1.0)
    assert agent.narrowed_to(Capabilities(max_budget=0.0)) == Capabilities(max_budget=0.0)
