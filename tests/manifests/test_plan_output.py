"""`microtask plan`: the Jobs the operator would create are valid and Pod Security "restricted"."""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.manifests.restricted import pod_spec_of, restricted_violations
from tests.manifests.support import KUBERNETES_VERSIONS, ROOT, validate

EXAMPLES = sorted(
    path
    for path in (ROOT / "examples").glob("*.yaml")
    if any(
        doc and doc.get("kind") == "MicrotaskJob" for doc in yaml.safe_load_all(path.read_text())
    )
)


def plan(path: Path) -> list[dict[str, Any]]:
    """The objects `microtask plan PATH` prints (the command alone, not the whole CLI)."""
    command = pytest.importorskip("microtask_operator.commands.plan", reason="no `microtask plan`")
    parser = argparse.ArgumentParser()
    command.configure(parser)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = command.execute(parser.parse_args([str(path)]))
    assert code == 0, out.getvalue()
    objects: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(out.getvalue()):
        if doc and doc.get("kind") == "List":
            objects.extend(doc["items"])
        elif doc:
            objects.append(doc)
    return objects


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_planned_jobs_are_valid_and_restricted(example: Path) -> None:
    jobs = [obj for obj in plan(example) if obj.get("kind") == "Job"]
    assert jobs, "plan printed no Job"
    for job in jobs:
        for version in KUBERNETES_VERSIONS:
            validate(job, version)
        pod = pod_spec_of(job)
        assert pod is not None
        assert restricted_violations(pod) == [], job["metadata"]["name"]
        assert job["spec"]["backoffLimit"] == 0
        assert pod["restartPolicy"] == "Never"
        labels = job["metadata"]["labels"]
        assert {"microtask.dev/job", "microtask.dev/shard", "microtask.dev/pool"} <= set(labels)
        if labels["microtask.dev/pool"] == "gpu":
            tolerations = {t.get("key") for t in pod.get("tolerations", [])}
            assert "nvidia.com/gpu" in tolerations
