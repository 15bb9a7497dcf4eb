"""The cluster side of the command line: `submit`, `get`, `watch`, `delete`, and cluster targets.

`results`, `logs` and `rerun` take a MicrotaskJob on the cluster as well as a local run.
"""
