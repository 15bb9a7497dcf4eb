"""Opt-in tests against a real cluster (`pytest tests/e2e --e2e`)."""
