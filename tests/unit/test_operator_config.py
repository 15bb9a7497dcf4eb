"""How the operator's process settings reach kopf."""

from __future__ import annotations

import kopf
import pytest
from microtask_operator.adapter.config import ConfigError, OperatorConfig


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


class _NoCopy:
    """A value that fails when deep-copied: the status must not be copied to build a diff base."""

    def __deepcopy__(self, memo: object) -> object:
        raise AssertionError("the status was deep-copied")


def test_the_diff_base_is_kopfs_without_copying_the_status() -> None:
    settings = kopf.OperatorSettings()
    OperatorConfig().apply_to_kopf(settings)
    storage = settings.persistence.diffbase_storage
    body = {
        "apiVersion": "microtask.dev/v1alpha1",
        "kind": "MicrotaskJob",
        "metadata": {
            "name": "a",
            "uid": "u-1",
            "resourceVersion": "7",
            "labels": {"team": "x"},
            "annotations": {
                "keep": "yes",
                "microtask.dev/last-handled-configuration": "{}",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
            },
        },
        "spec": {"items": {"range": {"start": 0, "end": 5}}, "parallelism": 2},
    }
    kopfs = kopf.AnnotationsDiffBaseStorage(
        prefix="microtask.dev", key="last-handled-configuration"
    )
    expected = kopfs.build(body=kopf.Body(body))  # type: ignore[arg-type]
    with_status = {**body, "status": {"phase": "Running", "anything": _NoCopy()}}
    assert storage.build(body=kopf.Body(with_status)) == expected  # type: ignore[arg-type]
    assert expected == {
        "spec": {"items": {"range": {"start": 0, "end": 5}}, "parallelism": 2},
        "metadata": {"labels": {"team": "x"}, "annotations": {"keep": "yes"}},
    }


def test_changes_gather_longer_only_while_nothing_is_left_to_start() -> None:
    config = OperatorConfig(debounce_seconds=0.2)
    assert config.pause_after_change(settle=False) == 0.2  # a freed slot is filled at once
    assert config.pause_after_change(settle=True) == pytest.approx(1.0)  # five debounces
    fast = OperatorConfig(debounce_seconds=0.05)
    assert fast.pause_after_change(settle=True) == pytest.approx(0.25)
    assert OperatorConfig(debounce_seconds=0.0).pause_after_change(settle=True) == 0.0


def test_the_settle_time_can_be_set_apart() -> None:
    config = OperatorConfig.from_env(
        {"MICROTASK_DEBOUNCE_SECONDS": "0.1", "MICROTASK_SETTLE_SECONDS": "2"}
    )
    assert config.pause_after_change(settle=True) == 2.0
    assert config.pause_after_change(settle=False) == 0.1
    assert OperatorConfig.from_env({}).settle_seconds is None
    with pytest.raises(ConfigError, match="MICROTASK_SETTLE_SECONDS"):
        OperatorConfig.from_env({"MICROTASK_SETTLE_SECONDS": "-1"})


def test_no_diff_base_is_built_for_the_shards_jobs_and_pods() -> None:
    """Only MicrotaskJobs have change handlers and daemons: nothing of a Job or pod is copied."""
    settings = kopf.OperatorSettings()
    OperatorConfig().apply_to_kopf(settings)
    storage = settings.persistence.diffbase_storage
    for api_version, kind in (("batch/v1", "Job"), ("v1", "Pod"), ("v1", "Node")):
        body = {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"name": "a", "labels": {"x": "y"}},
            "spec": {"anything": _NoCopy()},
        }
        assert storage.build(body=kopf.Body(body)) == {}  # type: ignore[arg-type]
    # A body whose kind is unknown is built as kopf would.
    unknown = {"metadata": {"name": "a"}, "spec": {"parallelism": 2}}
    assert storage.build(body=kopf.Body(unknown)) == {  # type: ignore[arg-type]
        "spec": {"parallelism": 2}
    }
