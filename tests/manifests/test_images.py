"""The Dockerfiles, read statically (no container engine here): pinned, multi-stage, non-root."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.manifests.support import ROOT, deploy_objects, deployment

DOCKERFILES = {
    "operator": ROOT / "operator" / "Dockerfile",
    "runner": ROOT / "runner" / "Dockerfile",
}
# Packages that would put a compiler or a build system into an image.
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|make|build-essential|python3?-dev|libc6?-dev|cargo|rustc)\b"
)


@dataclass
class Stage:
    """One FROM ... stage: its base and its instructions (continuations joined)."""

    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """ARG defaults before the first FROM, and the stages."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            base = rest.split()[0]
            stages.append(
                Stage(re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), base))
            )
        elif stages:
            stages[-1].instructions.append((word, rest.strip()))
        elif word == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name.strip()] = value.strip()
    return args, stages


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_base_image_is_pinned_by_version(image: str) -> None:
    _, stages = parse(DOCKERFILES[image])
    for stage in stages:
        tag = stage.base.partition(":")[2]
        assert tag and tag != "latest", stage.base
        # A full version (3.12.10), not a moving minor tag (3.12).
        assert re.match(r"^\d+\.\d+\.\d+", tag), stage.base


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_multi_stage_with_no_build_tools_in_the_final_image(image: str) -> None:
    _, stages = parse(DOCKERFILES[image])
    assert len(stages) >= 2
    final = stages[-1]
    for word, rest in final.instructions:
        if word == "RUN":
            assert not BUILD_TOOLS.search(rest), rest
            assert "pip install" not in rest, "dependencies are installed in the build stage"
    copies = [rest for word, rest in final.instructions if word == "COPY"]
    assert any(rest.startswith("--from=") for rest in copies)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_final_image_runs_as_the_non_root_uid_of_the_deployment(image: str) -> None:
    _, stages = parse(DOCKERFILES[image])
    users = [rest for word, rest in stages[-1].instructions if word == "USER"]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so the kubelet can verify runAsNonRoot
    pod = deployment(deploy_objects())["spec"]["template"]["spec"]
    assert int(uid) == pod["securityContext"]["runAsUser"]


def test_operator_image_runs_the_operator_without_pip() -> None:
    _, stages = parse(DOCKERFILES["operator"])
    final = dict(stages[-1].instructions)
    assert final["ENTRYPOINT"] == '["microtask"]'
    assert final["CMD"] == '["operator"]'
    assert "pip uninstall" in " ".join(
        rest for word, rest in stages[-1].instructions if word == "RUN"
    )
    build_runs = " ".join(rest for word, rest in stages[0].instructions if word == "RUN")
    assert "pip uninstall --yes pip" in build_runs  # the copied environment has no pip either


def test_runner_image_holds_only_the_runner() -> None:
    _, stages = parse(DOCKERFILES["runner"])
    build_runs = " ".join(rest for word, rest in stages[0].instructions if word == "RUN")
    # Standard library only: none of the operator's dependencies.
    assert "--no-deps" in build_runs
    final = dict(stages[-1].instructions)
    assert final["ENTRYPOINT"] == '["microtask-runner"]'
    text = DOCKERFILES["runner"].read_text()
    # Both ways of getting the runner into a worker image are documented.
    assert "FROM ghcr.io/microtask-dev/microtask-runner" in text
    assert "pip install --no-cache-dir --no-deps microtask" in text


def test_dockerignore_lets_through_what_the_dockerfiles_copy() -> None:
    """.dockerignore excludes everything (`*`) and re-includes what the images need."""
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for path in DOCKERFILES.values():
        _, stages = parse(path)
        for word, rest in stages[0].instructions:
            if word == "COPY" and not rest.startswith("--from="):
                *sources, _destination = rest.split()
                for source in sources:
                    assert source.rstrip("/") in included, (
                        f"{path.parent.name}: {source} is ignored"
                    )
                    assert (ROOT / source).exists(), source
