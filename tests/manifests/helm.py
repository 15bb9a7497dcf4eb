"""The one place the manifest tests run the real ``helm``: render the chart, lint it.

The binary is the pinned one ``tests.kube_tools`` finds (hack/kube-binaries.sh unpacks it);
a test that calls these helpers is skipped when it is missing (failed in CI).

Each call runs in a fresh temporary directory that holds the values file and serves as
helm's config, cache and data home, so a developer's repositories, plugins, registry logins
or kubeconfig never change what the tests see, and nothing is left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.kube_tools import require
from tests.manifests.support import CHART

# Rendering or linting this chart takes well under a second; the bound only keeps a wedged
# binary from holding the suite until pytest-timeout's much longer limit.
HELM_TIMEOUT_SECONDS = 60.0

# The release deploy/ corresponds to: its objects are named after the release and live in
# its namespace.
RELEASE = "microtask-operator"
NAMESPACE = "microtask-system"


@dataclass(frozen=True)
class HelmRun:
    """What one helm command did."""

    args: tuple[str, ...]
    values: Mapping[str, Any] | None
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def explain(self) -> str:
        """A failure message: the command, its values, its exit code and what it said."""
        given = "" if self.values is None else f" --values <{json.dumps(self.values)}>"
        return (
            f"`helm {' '.join(self.args)}{given}` exited {self.returncode}\n"
            f"--- stderr:\n{self.stderr}\n--- stdout (last 4000 characters):\n{self.stdout[-4000:]}"
        )


def run_helm(*args: str, values: Mapping[str, Any] | None = None) -> HelmRun:
    """Run ``helm ARGS`` (plus ``--values FILE`` holding `values`, when given)."""
    helm = require("helm")["helm"]
    with tempfile.TemporaryDirectory(prefix="microtask-helm-") as scratch:
        home = Path(scratch)
        command = [str(helm), *args]
        if values is not None:
            # JSON is YAML, and json.dumps keeps exactly the types the test wrote
            # (no YAML 1.1 surprises such as "no" or "on" turning into booleans).
            values_file = home / "values.json"
            values_file.write_text(json.dumps(values))
            command += ["--values", str(values_file)]
        environment = {
            **os.environ,
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
            # helm template and lint never need a cluster; a file that does not exist
            # makes sure no test ever reaches the developer's current context.
            "KUBECONFIG": str(home / "no-kubeconfig"),
        }
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=HELM_TIMEOUT_SECONDS,
            env=environment,
            check=False,
        )
    return HelmRun(args, values, result.returncode, result.stdout, result.stderr)


def template(
    values: Mapping[str, Any] | None = None,
    *,
    release_name: str = RELEASE,
    namespace: str = NAMESPACE,
    kube_version: str | None = None,
    include_crds: bool = False,
) -> HelmRun:
    """``helm template`` of the chart with `values` over its defaults (not checked)."""
    args = ["template", release_name, str(CHART), "--namespace", namespace]
    if kube_version is not None:
        args += ["--kube-version", kube_version]
    if include_crds:
        args.append("--include-crds")
    return run_helm(*args, values=values)


def render_chart(
    values: Mapping[str, Any] | None = None,
    *,
    release_name: str = RELEASE,
    namespace: str = NAMESPACE,
    kube_version: str | None = None,
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """Every object ``helm template`` renders (crds/ only with `include_crds`, as in helm).

    Fails the test, with helm's messages, when helm refuses the chart or the values.
    """
    run = template(
        values,
        release_name=release_name,
        namespace=namespace,
        kube_version=kube_version,
        include_crds=include_crds,
    )
    assert run.ok, run.explain()
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def lint(
    values: Mapping[str, Any] | None = None,
    *,
    kube_version: str | None = None,
) -> HelmRun:
    """``helm lint --strict`` of the chart (warnings fail too) with `values` (not checked).

    Lint prints its findings on stdout and only the summary on stderr.
    """
    args = ["lint", "--strict", str(CHART)]
    if kube_version is not None:
        args += ["--kube-version", kube_version]
    return run_helm(*args, values=values)
