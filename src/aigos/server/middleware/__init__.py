"""Cross-cutting HTTP concerns as plain ASGI middleware (no per-request task or body copy on the hot path)."""
