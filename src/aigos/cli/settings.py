"""What the server commands share: reading the server's settings, and failing with a usage error."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from aigos.server.config import Settings


def fail(message: str) -> click.exceptions.Exit:
    """A usage error (exit 2) with ``message`` on standard error; raise what this returns."""
    click.secho(f"error: {message}", err=True, fg="red")
    return click.exceptions.Exit(2)


def load_settings(*, need_secret: bool = True, serving: bool = False) -> Settings:
    """The server's settings from the environment, or a usage error saying what is wrong with them."""
    try:
        from pydantic import ValidationError

        from aigos.server.config import ConfigError, Settings
    except ImportError as exc:  # the light install
        raise fail(f'the server is not installed ({exc.name}); run: pip install "aigos[server]"') from exc
    try:
        settings = Settings()
        if need_secret:
            settings.pepper  # noqa: B018 - fail now, not at the first request, if no secret key can be had
        if serving:
            settings.check_issuer()
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()]
        raise fail("invalid configuration:\n" + "\n".join(lines)) from exc
    except ConfigError as exc:
        raise fail(str(exc)) from exc
    return settings


def log_to_stderr(settings: Settings) -> None:
    """The server's log format, on standard error: standard output is the command's answer (``--json``)."""
    import logging
    import sys

    from aigos.server.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
