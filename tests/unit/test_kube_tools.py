"""Where the tests find the Kubernetes binaries, what happens when they are missing, and how our
test kubelet keeps its nodes' leases."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from tests.integration.harness.kubelet import Kubelet, NodeState, cpu_node
from tests.kube_tools import SCRIPT, find, pinned, require


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MICROTASK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    return tmp_path / "cache"


def test_missing_binaries_skip_with_how_to_get_them(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"kube-apiserver.*hack/kube-binaries\.sh"):
        require("kube-apiserver")


def test_missing_binaries_fail_in_ci(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"etcd.*not found"):
        require("etcd", "kubectl")


def test_the_cache_is_keyed_by_the_pinned_versions(empty_cache: Path) -> None:
    server = executable(empty_cache / "kube" / pinned("KUBE_VERSION") / "kube-apiserver")
    helm = executable(empty_cache / "clients" / pinned("WHEEL_VERSION") / "helm")
    assert require("kube-apiserver", "helm") == {"kube-apiserver": server, "helm": helm}
    assert pinned("KUBE_VERSION").startswith("v1.")


def test_kubebuilder_assets_win(
    empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executable(empty_cache / "kube" / pinned("KUBE_VERSION") / "etcd")
    assets = executable(tmp_path / "envtest" / "etcd")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets.parent))
    assert find("etcd") == assets
    # What the assets lack still comes from the cache (envtest has no controller-manager).
    assert find("kube-controller-manager") is None


def test_minio_comes_from_the_cache_keyed_by_its_pinned_version(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MICROTASK_MINIO", raising=False)
    assert pinned("MINIO_VERSION").startswith("v")
    assert find("minio") is None
    minio = executable(empty_cache / "minio" / pinned("MINIO_VERSION") / "minio")
    assert require("minio") == {"minio": minio}


def test_microtask_minio_wins_and_is_the_only_place_tried(
    empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executable(empty_cache / "minio" / pinned("MINIO_VERSION") / "minio")
    own = executable(tmp_path / "elsewhere" / "minio")
    monkeypatch.setenv("MICROTASK_MINIO", str(own))
    assert find("minio") == own
    # A wrong path is not quietly replaced by the cache's binary.
    monkeypatch.setenv("MICROTASK_MINIO", str(tmp_path / "missing" / "minio"))
    assert find("minio") is None


def test_minio_from_kubebuilder_assets(
    empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MICROTASK_MINIO", raising=False)
    assets = executable(tmp_path / "assets" / "minio")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets.parent))
    assert find("minio") == assets


def test_missing_minio_says_how_to_build_it_alone(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MICROTASK_MINIO", raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"hack/kube-binaries\.sh --minio"):
        require("minio")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"minio not found.*MICROTASK_MINIO"):
        require("minio")


def test_the_script_and_the_tests_agree_on_where_minio_is(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hack/kube-binaries.sh --minio` prints the path `find` looks at (here: already cached)."""
    monkeypatch.delenv("MICROTASK_MINIO", raising=False)
    minio = executable(empty_cache / "minio" / pinned("MINIO_VERSION") / "minio")
    result = subprocess.run(
        [str(SCRIPT), "--minio"], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == str(minio)
    assert "cached" in result.stderr


def test_the_kubelet_renews_every_lease_at_once_and_outlives_a_failed_renewal() -> None:
    kubelet = Kubelet("https://127.0.0.1:1", "token", None)
    for i in range(3):
        kubelet.nodes[f"n{i}"] = NodeState(spec=cpu_node(f"n{i}"), index=i)
    kubelet.nodes["n2"].lost = True
    started: list[str] = []
    renewed: list[str] = []

    async def renew(state: NodeState) -> None:
        started.append(state.spec.name)
        # Each renewal waits for the others to have started: one after another, this never ends.
        while len(started) < 2:
            await asyncio.sleep(0)
        if state.spec.name == "n0":
            raise RuntimeError("lease of n0: too many conflicts")
        renewed.append(state.spec.name)

    kubelet._renew_lease = renew  # type: ignore[method-assign]
    asyncio.run(asyncio.wait_for(kubelet._beat(), timeout=5))
    assert sorted(started) == ["n0", "n1"]  # the lost node is left alone
    assert renewed == ["n1"]
