"""The one event log: append-only, hash-chained per tenant, sealed by signed Merkle checkpoints."""
