"""Where the tests find the Kubernetes binaries, and what happens when they are missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kube_tools import find, pinned, require


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
