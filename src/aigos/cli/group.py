"""The command groups of ``aigos``: help lists commands in the order they were added, not alphabetically,
so the everyday ones come first."""

from __future__ import annotations

import click


class Group(click.Group):
    """A ``click.Group`` that lists its commands in the order they were added."""

    def __init__(self, name: str, help: str) -> None:
        super().__init__(name, help=help, no_args_is_help=True)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The commands' names, in the order they were added."""
        return list(self.commands)
