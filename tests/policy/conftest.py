"""Policy fixtures: the tenants of the tenancy suite."""

from tests.tenancy.conftest import tenant_a, tenant_b

__all__ = ["tenant_a", "tenant_b"]
