"""The registry of every context's tables, so migrations and tests see the whole schema."""

from __future__ import annotations


def import_all_models() -> None:
    """Import each context's ``models`` module; importing registers its tables on ``Base.metadata``."""
    import aigos.server.aigrc.models
    import aigos.server.audit.models
    import aigos.server.identity.models
    import aigos.server.killswitch.models
    import aigos.server.platform.models
    import aigos.server.policy.models
    import aigos.server.tenancy.models  # noqa: F401
