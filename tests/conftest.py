"""Test-suite options shared by every folder of tests/.

Only the opt-in switch of the real-cluster tests lives here: tests marked `e2e`
(tests/e2e/) run only with `--e2e`, against the cluster of KUBECONFIG.
"""

from __future__ import annotations

import pytest

E2E_SKIP_REASON = (
    "real-cluster test: run with --e2e against the cluster in KUBECONFIG (hack/kind-e2e.sh)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--e2e",
        action="store_true",
        default=False,
        help="run the e2e tests against the Kubernetes cluster of KUBECONFIG",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--e2e"):
        return
    skip = pytest.mark.skip(reason=E2E_SKIP_REASON)
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)
