"""The commands a user types, with the real kubectl and helm, against the real API server.

What the offline manifest tests cannot show: that `kubectl apply -k deploy/` and `kubectl apply -f
deploy/` install cleanly with kubectl's validation against the server's OpenAPI, that the CRD and
every example are accepted by a real kube-apiserver, that `kubectl get`, `explain` and `wait` work
on MicrotaskJobs (printer columns, descriptions, the condition the operator sets), that invalid or
misspelt specs are refused naming the field, and that the Helm chart installs, gives the operator
a ServiceAccount it can work with, and uninstalls.

kubectl and helm run as subprocesses, as a user would run them: with ``KUBECONFIG`` (an admin
kubeconfig whose context namespace is the test's), a home of the test's own (so kubectl's
discovery cache and helm's state never leak between tests) and timeouts.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.harness.apiclient import ApiError, SyncApi
from tests.integration.harness.cluster import Cluster, load_documents
from tests.integration.harness.controlplane import (
    ControlPlane,
    environment_without_proxies,
    kubeconfig,
)
from tests.integration.operator_harness import microtask_job, running_operator, status_of
from tests.kube_tools import require

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = ROOT / "charts" / "microtask-operator"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
CRD = "microtaskjobs.microtask.dev"
MTJ_PATH = "/apis/microtask.dev/v1alpha1/namespaces/{namespace}/microtaskjobs"
OPERATOR_NAMESPACE = "microtask-system"
# The printer columns users rely on (README, `kubectl get mtj`); -o wide adds the priority-1 ones.
COLUMNS = ["NAME", "PHASE", "SUCCEEDED", "TOTAL", "FAILED", "AGE"]
WIDE_COLUMNS = ["NAME", "PHASE", "SUCCEEDED", "TOTAL", "FAILED", "RUNNING", "MESSAGE", "AGE"]


# --- running the clients ---------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    argv: Sequence[str]
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\n-> exit {self.code}\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


class Client:
    """One CLI (kubectl or helm) with the test's kubeconfig and a home of its own."""

    def __init__(self, binary: Path, kubeconfig_path: Path, home: Path) -> None:
        self.binary = binary
        home.mkdir(parents=True, exist_ok=True)
        self.env = {
            # Our servers are on loopback: a proxy in the environment would only get in the way.
            **environment_without_proxies(),
            "KUBECONFIG": str(kubeconfig_path),
            "HOME": str(home),
            "HELM_CONFIG_HOME": str(home / "helm-config"),
            "HELM_CACHE_HOME": str(home / "helm-cache"),
            "HELM_DATA_HOME": str(home / "helm-data"),
        }

    def run(self, *args: str, timeout: float = 60, stdin: str | None = None) -> Result:
        argv = [str(self.binary), *args]
        try:
            done = subprocess.run(
                argv,
                env=self.env,
                cwd=ROOT,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise AssertionError(
                f"$ {' '.join(argv)} did not finish in {timeout}s\n"
                f"stdout: {error.stdout!r}\nstderr: {error.stderr!r}"
            ) from None
        return Result(argv, done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, timeout: float = 60, stdin: str | None = None) -> Result:
        """Run and require exit code 0."""
        result = self.run(*args, timeout=timeout, stdin=stdin)
        assert result.code == 0, str(result)
        return result

    def fails(self, *args: str, timeout: float = 60, stdin: str | None = None) -> Result:
        """Run and require a non-zero exit code."""
        result = self.run(*args, timeout=timeout, stdin=stdin)
        assert result.code != 0, f"expected a failure:\n{result}"
        return result


def kubectl(cluster: Cluster, home: Path) -> Client:
    return Client(require("kubectl")["kubectl"], cluster.kubeconfig, home)


def helm(cluster: Cluster, home: Path) -> Client:
    return Client(require("helm")["helm"], cluster.kubeconfig, home)


def warnings(stderr: str) -> list[str]:
    """The lines of stderr that are warnings (deprecations, PodSecurity, unknown fields...)."""
    return [line for line in stderr.splitlines() if line.startswith("Warning:")]


def table(text: str) -> list[dict[str, str]]:
    """`kubectl get` output as rows keyed by header; cells cut at the header's column starts.

    Cutting at the header's offsets (not at whitespace) keeps cells with spaces (MESSAGE) whole
    and empty cells empty.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows = []
    for line in lines[1:]:
        cells = [
            line[start : (starts[i + 1] if i + 1 < len(starts) else None)].strip()
            for i, start in enumerate(starts)
        ]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def yaml_text(*docs: Mapping[str, Any]) -> str:
    return yaml.safe_dump_all([dict(d) for d in docs], sort_keys=False)


# Our kubelet runs only a container's `command` (it has no images): the operator's pod, which
# relies on its image's entrypoint, ends at once with StartError; our kubelet then marks it Failed
# (a real kubelet would restart the container, in CrashLoopBackOff) and the ReplicaSet replaces
# it in a tight loop, a pod every ~0.2 s. So the Deployments installed here get pods that are
# admitted (PodSecurity, ServiceAccount) but never run: what is checked of them is admission.


def wait_admitted_pod(k: Client, namespace: str, labels: str) -> dict[str, Any]:
    """The first pod its ReplicaSet got created (so the API server's admission let it in)."""
    deadline = time.monotonic() + 30
    while True:
        listed = k.ok("get", "pods", "-n", namespace, "-l", labels, "-o", "json")
        pods: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
        if pods:
            return pods[0]
        if time.monotonic() >= deadline:
            events = k.run("get", "events", "-n", namespace)
            raise AssertionError(f"no pod {labels} in {namespace} within 30 s\n{events}")
        time.sleep(0.2)


# --- 1. installing with kubectl -----------------------------------------------------------------


@pytest.mark.slow
def test_kubectl_apply_f_then_k_installs_deploy_on_a_fresh_cluster(tmp_path: Path) -> None:
    # A first install needs a cluster without deploy/ on it, and cluster_factory's clusters come
    # with part of it installed (removing that first made the test hang, now and then, on
    # namespace and CRD deletion): so a bare control plane of the test's own. It has no nodes:
    # the operator's pod is admitted, then stays Pending (see wait_admitted_pod).
    with ControlPlane(tmp_path / "plane") as plane:
        k = Client(require("kubectl")["kubectl"], plane.admin_kubeconfig, tmp_path / "home")

        # Default client-side validation: kubectl checks every object against the server's
        # OpenAPI (and asks for strict server-side field validation), so a misspelt field fails
        # here; the files go in name order, so this also shows the namespace comes first.
        applied = k.ok("apply", "-f", "deploy/")
        # The namespace warns of pods that "restricted" PodSecurity would refuse: none may show.
        assert not warnings(applied.stderr), str(applied)
        expected = [doc for path in sorted(DEPLOY.glob("*.yaml")) for doc in load_documents(path)]
        lines = applied.stdout.splitlines()
        assert len(lines) == len(expected), str(applied)
        assert all(line.endswith(" created") for line in lines), str(applied)
        listed = k.ok("get", "-f", "deploy/", "-o", "name")
        assert len(listed.stdout.split()) == len(expected), str(listed)

        # `-k` installs the same objects: applied over `-f`, every one is unchanged (which also
        # needs every field to read back as written: the API server drops an empty env value,
        # and kubectl would re-send it and say "configured" on each apply).
        again = k.ok("apply", "-k", "deploy/")
        lines = again.stdout.splitlines()
        assert len(lines) == len(expected), str(again)
        assert all(line.endswith(" unchanged") for line in lines), str(again)
        assert not warnings(again.stderr), str(again)
        # And the server (a dry-run apply) sees no difference between -k and what is live.
        diff = k.run("diff", "-k", "deploy/")
        assert diff.code == 0, str(diff)

        # The CRD's documented upgrade path (the chart's NOTES): a server-side apply, which
        # takes over from the client-side apply above without a conflict.
        server_side = k.ok("apply", "--server-side", "-f", "deploy/crd.yaml")
        assert f"customresourcedefinition.apiextensions.k8s.io/{CRD} serverside-applied" in (
            server_side.stdout
        ), str(server_side)

        # The operator's pod template passes the namespace's enforced "restricted" PodSecurity
        # and its ServiceAccount exists: the ReplicaSet got a pod created.
        pod = wait_admitted_pod(k, OPERATOR_NAMESPACE, "app.kubernetes.io/name=microtask-operator")
        assert pod["spec"]["serviceAccountName"] == "microtask-operator"
        events = json.loads(k.ok("get", "events", "-n", OPERATOR_NAMESPACE, "-o", "json").stdout)
        failed = [e["message"] for e in events["items"] if e["reason"] == "FailedCreate"]
        assert not failed, failed


def test_kubectl_server_side_applies_the_crd_and_every_example(
    cluster: Cluster, tmp_path: Path
) -> None:
    k = kubectl(cluster, tmp_path / "home")
    crd = k.ok("apply", "--server-side", "--dry-run=server", "-f", "deploy/crd.yaml")
    assert "serverside-applied (server dry run)" in crd.stdout, str(crd)

    assert EXAMPLES, "no examples/*.yaml"
    for path in EXAMPLES:
        relative = str(path.relative_to(ROOT))
        # No operator watches this namespace: the objects are stored, nothing runs them.
        result = k.ok("apply", "--server-side", "-f", relative)
        assert not warnings(result.stderr), str(result)
        for doc in load_documents(path):
            kind, name = doc["kind"], doc["metadata"]["name"]
            stored = cluster.get(kind, name)
            assert stored is not None, f"{kind} {name} of {relative} not stored:\n{result}"
            if kind == "MicrotaskJob":
                # What the user wrote survives the schema's pruning untouched.
                assert _contains(stored["spec"], doc["spec"]), (relative, stored["spec"])


def _contains(stored: Any, written: Any) -> bool:
    """``written`` is a part of ``stored`` (which may hold defaults on top)."""
    if isinstance(written, dict):
        return isinstance(stored, dict) and all(
            key in stored and _contains(stored[key], value) for key, value in written.items()
        )
    if isinstance(written, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(written)
            and all(_contains(s, w) for s, w in zip(stored, written, strict=True))
        )
    return bool(stored == written)


# --- 2. and 3. reading MicrotaskJobs ------------------------------------------------------------


def test_kubectl_get_shows_the_printer_columns_and_jsonpath(
    cluster: Cluster, tmp_path: Path
) -> None:
    k = kubectl(cluster, tmp_path / "home")
    job = microtask_job("columns", total=10, per_shard=5)
    del job["spec"]["microtasksPerShard"]  # left to the schema's default
    k.ok("apply", "-f", "-", stdin=yaml_text(job))
    # No operator runs here: the status is written as the operator would, through /status.
    status = {"phase": "Running", "succeeded": 3, "total": 10, "failed": 1, "running": 4}
    status["message"] = "4 microtasks in 2 shards"
    cluster.patch("microtaskjobs", "columns", {"status": status}, subresource="status")

    listing = k.ok("get", "mtj")
    assert listing.stdout.split("\n", 1)[0].split() == COLUMNS, str(listing)
    (row,) = table(listing.stdout)
    assert {c: row[c] for c in COLUMNS[:-1]} == {
        "NAME": "columns",
        "PHASE": "Running",
        "SUCCEEDED": "3",
        "TOTAL": "10",
        "FAILED": "1",
    }, str(listing)
    assert re.fullmatch(r"\d+s", row["AGE"]), str(listing)

    wide = k.ok("get", "microtaskjobs", "-o", "wide")
    assert wide.stdout.split("\n", 1)[0].split() == WIDE_COLUMNS, str(wide)
    (row,) = table(wide.stdout)
    assert (row["RUNNING"], row["MESSAGE"]) == ("4", "4 microtasks in 2 shards"), str(wide)

    # The CRD's categories: `kubectl get all` and `kubectl get microtask` list it.
    for category in ("all", "microtask"):
        shown = k.ok("get", category, "-o", "name")
        assert "microtaskjob.microtask.dev/columns" in shown.stdout.split(), str(shown)

    template = "{.status.phase}/{.status.succeeded}/{.spec.microtasksPerShard}/{.spec.items.range}"
    path = k.ok("get", "mtj", "columns", "-o", f"jsonpath={template}")
    phase, succeeded, per_shard, items = path.stdout.split("/", 3)
    assert (phase, succeeded) == ("Running", "3"), str(path)
    # The API server applied the schema's defaults (microtasksPerShard auto, range start 0, step 1).
    assert per_shard == "auto", str(path)
    assert json.loads(items) == {"start": 0, "end": 10, "step": 1}, str(path)


def _spec_schema() -> dict[str, Any]:
    crd = next(d for d in load_documents(DEPLOY / "crd.yaml") if d["metadata"]["name"] == CRD)
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return dict(schema["properties"]["spec"])


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_kubectl_explain_shows_every_field_with_its_description(
    cluster: Cluster, tmp_path: Path
) -> None:
    k = kubectl(cluster, tmp_path / "home")
    spec = _spec_schema()
    # The server publishes a CRD's OpenAPI shortly after it is established; on a cluster that
    # just started, give it a few seconds as a user retrying would.
    explained = _retry(lambda: k.run("explain", "microtaskjob.spec"), seconds=20)
    text = _flat(explained.stdout)
    assert "KIND: MicrotaskJob" in text and "VERSION: v1alpha1" in text, str(explained)
    assert _flat(f"DESCRIPTION: {spec['description']}") in text, str(explained)
    for name, field in spec["properties"].items():
        assert name in explained.stdout, f"{name} missing:\n{explained}"
        assert _flat(field["description"]) in text, f"{name}'s description missing:\n{explained}"
    for name in spec["required"]:
        assert re.search(rf"^  {name}\t<\w+> -required-$", explained.stdout, re.M), str(explained)

    items = k.ok("explain", "mtj.spec.items")
    items_schema = spec["properties"]["items"]
    assert _flat(items_schema["description"]) in _flat(items.stdout), str(items)
    for name, field in items_schema["properties"].items():
        assert _flat(field["description"]) in _flat(items.stdout), f"{name}:\n{items}"

    deep = k.ok("explain", "microtaskjobs.spec.retry.maxBackoffSeconds")
    retry = spec["properties"]["retry"]["properties"]["maxBackoffSeconds"]
    assert _flat(retry["description"]) in _flat(deep.stdout), str(deep)


def _retry(attempt: Callable[[], Result], seconds: float) -> Result:
    """Run until it succeeds (bounded); the last failure fails the test."""
    deadline = time.monotonic() + seconds
    while True:
        result = attempt()
        if result.code == 0 or time.monotonic() >= deadline:
            assert result.code == 0, str(result)
            return result
        time.sleep(0.5)


# --- 4. waiting for a job -------------------------------------------------------------------------


@pytest.mark.slow
def test_kubectl_wait_for_condition_complete_returns_when_the_operator_finishes(
    cluster: Cluster, tmp_path: Path
) -> None:
    k = kubectl(cluster, tmp_path / "home")
    with running_operator(cluster) as op:
        k.ok("apply", "-f", "-", stdin=yaml_text(microtask_job("waited", total=20, per_shard=5)))
        # `Complete` is the condition the operator sets True on success (core/conditions.py).
        waited = k.ok("wait", "--for=condition=Complete", "mtj/waited", "--timeout=60s", timeout=90)
        assert waited.stdout.strip() == "microtaskjob.microtask.dev/waited condition met", str(
            waited
        )
        status = status_of(cluster, "waited")
        assert (status.get("phase"), status.get("succeeded"), status.get("total")) == (
            "Succeeded",
            20,
            20,
        ), status
        # What scripts wait on instead: the phase, through a jsonpath condition.
        k.ok("wait", "--for=jsonpath={.status.phase}=Succeeded", "mtj/waited", "--timeout=10s")
        # And the wait does depend on the condition: a succeeded job is never Failed.
        never = k.fails("wait", "--for=condition=Failed", "mtj/waited", "--timeout=1s")
        assert "timed out waiting for the condition" in never.stderr, str(never)
        op.assert_clean()


# --- 5. and 6. what the API server refuses --------------------------------------------------------


@dataclass(frozen=True)
class Invalid:
    """A change to a valid MicrotaskJob's spec and how the API server names what is wrong."""

    spec: dict[str, Any]
    field: str  # the field the error names
    message: str  # a part of the error's message
    drop: tuple[str, ...] = ()  # spec fields to remove


INVALID = {
    "zero-per-shard": Invalid(
        {"microtasksPerShard": 0}, "spec.microtasksPerShard", "greater than or equal to 1"
    ),
    "word-per-shard": Invalid(
        {"microtasksPerShard": "fast"}, "spec.microtasksPerShard", "should match '^auto$'"
    ),
    "too-many-per-shard": Invalid(
        {"microtasksPerShard": 10_001}, "spec.microtasksPerShard", "less than or equal to 10000"
    ),
    "target-with-fixed-size": Invalid(
        {"microtasksPerShard": 5, "targetShardSeconds": 30},
        "spec.targetShardSeconds",
        "targetShardSeconds applies only with microtasksPerShard: auto",
    ),
    "no-items": Invalid({}, "spec.items", "Required value", drop=("items",)),
    # The CRD says "exactly one of" with oneOf-of-required (CEL cannot type `list`); the API
    # server reports a oneOf failure at `<nil>`, naming spec.items in the message.
    "range-and-list": Invalid(
        {"items": {"range": {"end": 10}, "list": [1, 2]}},
        "spec.items",
        "must validate one and only one schema (oneOf). Found 2 valid alternatives",
    ),
    "empty-range": Invalid(
        {"items": {"range": {"start": 5, "end": 5}}},
        "spec.items.range",
        "end must be greater than start",
    ),
    "max-backoff-below-backoff": Invalid(
        {"retry": {"backoffSeconds": 10, "maxBackoffSeconds": 5}},
        "spec.retry",
        "maxBackoffSeconds must be at least backoffSeconds",
    ),
    "depends-on-itself": Invalid(
        {"dependsOn": ["other", "bad-job"]}, "spec.dependsOn", "cannot depend on itself"
    ),
}


@pytest.mark.parametrize("case", INVALID.values(), ids=INVALID.keys())
def test_an_invalid_microtaskjob_is_refused_naming_the_field(
    cluster: Cluster, tmp_path: Path, case: Invalid
) -> None:
    body = microtask_job("bad-job")
    body["spec"].update(case.spec)
    for name in case.drop:
        del body["spec"][name]

    refused = kubectl(cluster, tmp_path / "home").fails("apply", "-f", "-", stdin=yaml_text(body))
    assert 'The MicrotaskJob "bad-job" is invalid' in refused.stderr, str(refused)
    assert case.field in refused.stderr and case.message in refused.stderr, str(refused)

    with pytest.raises(ApiError) as raised:
        cluster.api.request("POST", MTJ_PATH.format(namespace=cluster.namespace), body)
    error = raised.value
    assert (error.code, error.reason) == (422, "Invalid"), error
    causes = error.body["details"]["causes"]
    # The cause's field names it, except for oneOf, whose failure only the message places.
    assert any(
        case.message in c["message"] and (c["field"] == case.field or case.field in c["message"])
        for c in causes
    ), causes
    assert cluster.get("microtaskjobs", "bad-job") is None


def test_unknown_fields_are_refused_under_strict_field_validation(
    cluster: Cluster, tmp_path: Path
) -> None:
    k = kubectl(cluster, tmp_path / "home")
    typo = microtask_job("typo")
    typo["spec"]["parallelizm"] = 3
    typo["spec"]["retry"]["maxBackofSeconds"] = 5
    text = yaml_text(typo)

    # kubectl's default (--validate=true) is strict too, when the server supports it.
    for validate in ("--validate=strict", "--validate=true"):
        refused = k.fails("apply", validate, "-f", "-", stdin=text)
        for name in ("spec.parallelizm", "spec.retry.maxBackofSeconds"):
            assert f'unknown field "{name}"' in refused.stderr, str(refused)
    assert cluster.get("microtaskjobs", "typo") is None

    with pytest.raises(ApiError) as raised:
        cluster.api.request(
            "POST",
            MTJ_PATH.format(namespace=cluster.namespace),
            typo,
            params={"fieldValidation": "Strict"},
        )
    assert (raised.value.code, raised.value.reason) == (400, "BadRequest"), raised.value
    assert 'unknown field "spec.parallelizm"' in raised.value.message, raised.value

    # Server-side apply checks the schema whatever the validation asked.
    ssa = k.fails("apply", "--server-side", "-f", "-", stdin=text)
    assert ".spec.parallelizm: field not declared in schema" in ssa.stderr, str(ssa)

    # Asked only to warn, the server stores the object without the unknown fields (the schema
    # is structural, so they are pruned), and says so.
    warned = k.ok("apply", "--validate=warn", "-f", "-", stdin=text)
    assert 'Warning: unknown field "spec.parallelizm"' in warned.stderr, str(warned)
    stored = cluster.get("microtaskjobs", "typo")
    assert stored is not None
    assert "parallelizm" not in stored["spec"], stored["spec"]
    assert "maxBackofSeconds" not in stored["spec"]["retry"], stored["spec"]


# --- 7. the Helm chart ----------------------------------------------------------------------------


RELEASE = "microtask"
CHART_ACCOUNT = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}"


@pytest.mark.slow
def test_helm_install_gives_the_operator_a_working_service_account_and_uninstalls(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = cluster_factory()
    home = tmp_path / "home"
    h, k = helm(cluster, home), kubectl(cluster, home)
    mark = cluster.mark()

    # The harness installed deploy/ (namespace, CRDs, RBAC named microtask-operator): the
    # release's own objects are named after it ("microtask"), so nothing conflicts, and Helm
    # leaves the CRDs that exist alone. The nodeSelector keeps the operator's pod pending
    # (see wait_admitted_pod): the operator runs here as a local process instead, with the
    # release's ServiceAccount.
    install = h.ok(
        "install",
        RELEASE,
        "charts/microtask-operator",
        "-n",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--set-string",
        "nodeSelector.microtask\\.test/nowhere=true",
        timeout=120,
    )
    assert "STATUS: deployed" in install.stdout, str(install)
    assert not warnings(install.stderr), str(install)
    status = h.ok("status", RELEASE, "-n", OPERATOR_NAMESPACE, "-o", "json")
    assert json.loads(status.stdout)["info"]["status"] == "deployed", str(status)
    # The pod passes the namespace's "restricted" PodSecurity with the release's account.
    pod = wait_admitted_pod(k, OPERATOR_NAMESPACE, f"app.kubernetes.io/instance={RELEASE}")
    assert pod["spec"]["serviceAccountName"] == RELEASE

    # The chart's NOTES: CRD upgrades are a server-side apply of its crds/.
    crds = k.ok("apply", "--server-side", "-f", "charts/microtask-operator/crds/")
    chart_crds = [d for f in sorted((CHART / "crds").glob("*.yaml")) for d in load_documents(f)]
    assert crds.stdout.count(" serverside-applied\n") == len(chart_crds) == 3, str(crds)

    token = k.ok(
        "create", "token", RELEASE, "-n", OPERATOR_NAMESPACE, "--duration=1h"
    ).stdout.strip()
    credentials = tmp_path / "release.kubeconfig"
    credentials.write_text(
        kubeconfig(cluster.url, token, cluster.plane.ca_file, namespace=cluster.namespace)
    )
    # As the chart's pod does with its defaults: its init container (as the release's account)
    # creates the cluster-wide peering object, then the operator watches every namespace in
    # peering "<release>"; the chart's RBAC grants that peering object by name.
    as_release = SyncApi(cluster.url, token, cluster.plane.ca_file)
    as_release.request(
        "POST",
        "/apis/kopf.dev/v1/clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": RELEASE}},
    )
    with running_operator(
        cluster, namespaces=(), kubeconfig=credentials, env={"MICROTASK_PEERING": RELEASE}
    ) as op:
        k.ok("apply", "-f", "-", stdin=yaml_text(microtask_job("charted", total=12, per_shard=4)))
        k.ok("wait", "--for=condition=Complete", "mtj/charted", "--timeout=60s", timeout=90)
        # It took part in the peering (kopf keeps its presence in the object's status).
        peering = k.ok("get", "clusterkopfpeering", RELEASE, "-o", "json")
        assert json.loads(peering.stdout).get("status"), str(peering)
        op.assert_clean()
    done = status_of(cluster, "charted")
    assert (done.get("phase"), done.get("succeeded")) == ("Succeeded", 12), done

    # The operator really was the release's account, and was never refused.
    events = [
        e
        for e in cluster.plane.audit_events(mark)
        if e.get("user", {}).get("username") == CHART_ACCOUNT
    ]
    creates = {
        e["objectRef"]["resource"] for e in events if e["verb"] == "create" and "objectRef" in e
    }
    assert "jobs" in creates, sorted(creates)
    forbidden = [
        (e["verb"], e["requestURI"])
        for e in events
        if (e.get("responseStatus") or {}).get("code") == 403
    ]
    assert not forbidden, forbidden

    uninstall = h.ok("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", timeout=120)
    assert f'release "{RELEASE}" uninstalled' in uninstall.stdout, str(uninstall)
    listed = h.ok("list", "-n", OPERATOR_NAMESPACE, "-o", "json")
    assert json.loads(listed.stdout) == [], str(listed)
    for resource, name, namespace in (
        ("deployments", RELEASE, OPERATOR_NAMESPACE),
        ("serviceaccounts", RELEASE, OPERATOR_NAMESPACE),
        ("services", f"{RELEASE}-metrics", OPERATOR_NAMESPACE),
        ("clusterroles", RELEASE, None),
        ("clusterroles", f"{RELEASE}-workloads", None),
        ("clusterrolebindings", RELEASE, None),
        ("clusterroles", "microtask-edit", None),
    ):
        assert cluster.get(resource, name, namespace) is None, f"{resource}/{name} left behind"
    # Helm never deletes CRDs (users' MicrotaskJobs would go with them), nor what it did not make.
    assert cluster.get("customresourcedefinitions", CRD) is not None
    assert cluster.get("microtaskjobs", "charted") is not None
    assert cluster.get("serviceaccounts", "microtask-operator", OPERATOR_NAMESPACE) is not None
