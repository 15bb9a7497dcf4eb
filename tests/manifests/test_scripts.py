"""hack/ scripts: strict bash, and the values they read from the repository still there."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.manifests.support import KIND_CONFIG, ROOT, gen_chart, values_defaults

KIND_E2E = ROOT / "hack" / "kind-e2e.sh"
SCRIPTS = sorted((ROOT / "hack").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_scripts_are_strict_bash(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(script, os.X_OK), "not executable: the README runs it as hack/NAME.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_scripts_are_shellcheck_clean(script: Path) -> None:
    subprocess.run(["shellcheck", str(script)], check=True)


def _sed(expression: str, path: str) -> str:
    result = subprocess.run(
        ["sed", "-n", expression, path], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


def test_what_kind_e2e_reads_from_the_repository() -> None:
    """The script reads a few settings with sed; they must keep their layout."""
    assert (
        _sed("s/^name: *//p", "kind-config.yaml") == yaml.safe_load(KIND_CONFIG.read_text())["name"]
    )
    values = "charts/microtask-operator/values.yaml"
    assert _sed("s/^  nodeLabel: *//p", values) == values_defaults()["gpu"]["nodeLabel"]
    assert _sed("s/^  resourceName: *//p", values) == values_defaults()["gpu"]["resourceName"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert _sed('s/^version = "\\(.*\\)"$/\\1/p', "pyproject.toml") == project


def test_kind_e2e_builds_the_images_deploy_and_the_examples_name() -> None:
    """The images are loaded under the names the manifests use, so nothing is pulled."""
    text = KIND_E2E.read_text()
    repository = values_defaults()["image"]["repository"]
    assert f'OPERATOR_IMAGE="{repository}:${{VERSION}}"' in text
    runner = re.search(r'RUNNER_IMAGE="([^"]+):\$\{VERSION\}"', text)
    assert runner is not None
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "MicrotaskJob":
                for spec in doc["spec"]["template"]["spec"]["containers"]:
                    assert spec["image"] == f"{runner.group(1)}:{project}", path.name


def test_gen_chart_check_mode_reports_an_up_to_date_chart() -> None:
    assert gen_chart().main(["--check"]) == 0
