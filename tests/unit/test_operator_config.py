"""How the operator's process settings reach kopf."""

from __future__ import annotations

import kopf
import pytest
from microtask_operator.adapter.config import OperatorConfig


@pytest.mark.parametrize(
    ("namespaces", "scanning_disabled"),
    [
        ((), False),  # all namespaces: kopf never lists namespaces, but watches CRDs
        (("team-a", "team-b"), True),  # exact names: nothing to list, nothing RBAC grants
        (("team-*",), False),  # a pattern needs the namespace listing to match
    ],
)
def test_namespace_scanning_only_for_patterns(
    namespaces: tuple[str, ...], scanning_disabled: bool
) -> None:
    settings = kopf.OperatorSettings()
    OperatorConfig(namespaces=namespaces).apply_to_kopf(settings)
    assert settings.scanning.disabled is scanning_disabled


def test_finalizer_and_annotations_live_under_our_group() -> None:
    settings = kopf.OperatorSettings()
    OperatorConfig().apply_to_kopf(settings)
    assert settings.persistence.finalizer == "microtask.dev/finalizer"
