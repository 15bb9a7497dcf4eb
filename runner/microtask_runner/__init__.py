"""Microtask runner: the in-pod side that runs a shard's microtasks and reports their outcomes.

Standard library only, so it installs into any image that has python3.
"""

__version__ = "0.1.0"
