"""Simulator tests: the real core driven through simulated clusters, at thousands of microtasks."""
