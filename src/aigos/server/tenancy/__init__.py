"""Tenancy: tenants, members, API keys, the caller's principal, rate limits, plans and usage metering."""
