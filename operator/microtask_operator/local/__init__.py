"""The local executor: `microtask run` carries out the core's decisions with local processes."""
