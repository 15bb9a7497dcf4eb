"""Chaos: the operator killed at random points, API faults, node trouble and outside edits, on the
real control plane, with executions counted independently of the status."""
