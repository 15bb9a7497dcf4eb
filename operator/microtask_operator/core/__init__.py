"""The pure core: every policy decision, made from the spec, what is observed and `now`.

No I/O, no clock reads, no framework imports (enforced by an import-linter contract).
"""
