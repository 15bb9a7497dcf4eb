"""Microtask operator: API model, pure core, kopf adapter, local executor, simulator and CLI."""
