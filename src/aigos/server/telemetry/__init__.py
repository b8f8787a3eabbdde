"""Telemetry context: events agents report about themselves, written to the one event log."""
