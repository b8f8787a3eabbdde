"""The policy context: policies and their versions, compiled per tenant, the check hot path, budgets."""
