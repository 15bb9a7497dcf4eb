"""The cluster command line as a user types it, against the real control plane.

`microtask submit/get/watch/delete/rerun/results/logs` run as subprocesses with ``KUBECONFIG``
pointing at an admin kubeconfig whose context namespace is the test's (users are not the
operator: the admin is fine), a home of their own and timeouts. The operator runs as deployed
(`running_operator`), our kubelet runs the shards' workers on this machine. What is checked is
what a user sees: stdout, stderr, exit codes, and the objects left on the cluster.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from microtask_runner.indexset import IndexSet

from tests.integration.harness.cluster import Cluster
from tests.integration.harness.controlplane import (
    environment_without_proxies,
    free_port,
    kubeconfig,
)
from tests.integration.operator_harness import (
    microtask_job,
    running_operator,
    shard_jobs,
    status_of,
    wait_phase,
)
from tests.kube_tools import require

pytestmark = pytest.mark.timeout(240)

BIN = Path(sys.executable).parent
MICROTASK = BIN / "microtask"
PLUGIN = BIN / "kubectl-microtask"
# Index 3 and 7 fail with exit 3 in a job whose name has no "rerun" (so a rerun succeeds).
FAILING = [
    "python3",
    "-c",
    "import os, sys, time; time.sleep(0.3); i = os.environ['MICROTASK_INDEX'];"
    "sys.exit(3 if i in ('3', '7') and 'rerun' not in os.environ['MICROTASK_JOB'] else 0)",
]
SLOW = ["python3", "-c", "import time; time.sleep(0.5)"]
# The API server's watch cache of a CRD just installed answers 429 for a moment; kopf retries.
ALLOWED = ("storage is (re)initializing",)


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


class Cli:
    """The command line with one kubeconfig and a home of its own."""

    def __init__(self, kubeconfig_path: Path, home: Path, *, path: Sequence[Path] = ()) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.env = {
            **environment_without_proxies(),
            "KUBECONFIG": str(kubeconfig_path),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "PATH": os.pathsep.join([*map(str, path), os.environ.get("PATH", "/usr/bin:/bin")]),
        }

    def argv(self, args: Sequence[str]) -> list[str]:
        return [str(MICROTASK), *args]

    def run(self, *args: str, timeout: float = 120, binary: Path | None = None) -> Result:
        argv = [str(binary), *args] if binary else self.argv(args)
        try:
            done = subprocess.run(
                argv,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as error:
            raise AssertionError(
                f"$ {' '.join(argv)} did not finish in {timeout}s\n"
                f"stdout: {error.stdout!r}\nstderr: {error.stderr!r}"
            ) from None
        result = Result(argv, done.returncode, done.stdout, done.stderr)
        assert "Traceback" not in result.stderr, str(result)
        return result

    def expect(self, code: int, *args: str, timeout: float = 120) -> Result:
        result = self.run(*args, timeout=timeout)
        assert result.code == code, str(result)
        return result

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(args),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )


def cli(cluster: Cluster, tmp_path: Path, config: Path | None = None) -> Cli:
    return Cli(config or cluster.kubeconfig, tmp_path / "home")


def job_file(tmp_path: Path, *docs: Mapping[str, Any], name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return path


def table(text: str) -> list[list[str]]:
    """The rows of a kubectl-style table (header first), split on its column gaps."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


def lines_with(text: str, needle: str) -> list[int]:
    return [i for i, line in enumerate(text.splitlines()) if needle in line]


# --- submit, get, watch, delete ------------------------------------------------------------


def test_submit_watch_get_and_delete_a_job(cluster: Cluster, tmp_path: Path) -> None:
    user = cli(cluster, tmp_path)
    body = microtask_job("hello", total=30, per_shard=5, parallelism=2)
    path = job_file(tmp_path, body)

    with running_operator(cluster) as op:
        done = user.expect(0, "submit", str(path), "--watch", timeout=90)
        assert done.stdout.splitlines()[0] == "microtaskjob.microtask.dev/hello created"
        assert "microtaskjob/hello Succeeded: 30/30 succeeded, 0 failed" in done.stderr

        again = user.expect(1, "submit", str(path))
        assert "AlreadyExists" in again.stderr
        assert "`microtask delete hello`" in again.stderr
        assert again.stdout == ""

        listed = user.expect(0, "get")
        rows = table(listed.stdout)
        assert rows[0] == ["NAME", "PHASE", "PROGRESS", "FAILED", "RUNNING", "RATE", "ETA", "AGE"]
        assert rows[1][:5] == ["hello", "Succeeded", "30/30", "0", "0"]
        assert rows[1][5].endswith("/s") and rows[1][6] == "-"

        wide = table(user.expect(0, "get", "hello", "-o", "wide").stdout)
        assert wide[0][8:] == ["ATTEMPTS", "RETRIED-OK", "CPU-S", "OUTPUT"]
        assert wide[1][0] == "hello" and wide[1][8] == "30"

        as_json = json.loads(user.expect(0, "get", "hello", "-o", "json").stdout)
        assert as_json["kind"] == "MicrotaskJob"
        assert as_json["metadata"]["name"] == "hello"
        assert as_json["status"]["phase"] == "Succeeded"
        as_yaml = yaml.safe_load(user.expect(0, "get", "-o", "yaml").stdout)
        assert as_yaml["kind"] == "List"
        assert [i["metadata"]["name"] for i in as_yaml["items"]] == ["hello"]

        everywhere = table(user.expect(0, "get", "-A").stdout)
        assert everywhere[0][:2] == ["NAMESPACE", "NAME"]
        assert [cluster.namespace, "hello"] in [row[:2] for row in everywhere[1:]]
        refused = user.expect(1, "get", "hello", "-A")
        assert "across all namespaces" in refused.stderr

        gone = user.expect(0, "delete", "hello", "--wait", timeout=60)
        assert gone.stdout.strip() == 'microtaskjob.microtask.dev "hello" deleted'
        assert cluster.get("microtaskjobs", "hello") is None
        assert shard_jobs(cluster, "hello") == []

        empty = user.expect(0, "get")
        assert empty.stdout == ""
        assert empty.stderr.strip() == f"No MicrotaskJobs found in namespace {cluster.namespace}."
        missing = user.expect(1, "delete", "hello")
        assert 'Error from server (NotFound): microtaskjobs.microtask.dev "hello" not found' in (
            missing.stderr
        )
        op.assert_clean(allow=ALLOWED)


def test_submit_checks_the_file_first_and_creates_its_config_map(
    cluster: Cluster, tmp_path: Path
) -> None:
    user = cli(cluster, tmp_path)
    bad = microtask_job("broken", parallelism=0)
    invalid = user.expect(2, "submit", str(job_file(tmp_path, bad, name="bad.yaml")))
    assert "spec.parallelism" in invalid.stderr
    assert cluster.get("microtaskjobs", "broken") is None  # nothing reached the cluster

    words = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "words"},
        "data": {"list": "a\nb\nc\n"},
    }
    body = microtask_job("from-map", per_shard=2)
    body["spec"]["items"] = {"configMapRef": {"name": "words", "key": "list"}}
    path = job_file(tmp_path, body, words)

    dry = user.expect(0, "submit", str(path), "--dry-run")
    assert dry.stdout.splitlines() == [
        "configmap/words created (server dry run)",
        "microtaskjob.microtask.dev/from-map created (server dry run)",
    ]
    assert cluster.get("configmaps", "words") is None
    assert cluster.get("microtaskjobs", "from-map") is None

    # The ConfigMap is created first; the same data again is left alone.
    first = user.expect(0, "submit", str(path))
    assert first.stdout.splitlines() == [
        "configmap/words created",
        "microtaskjob.microtask.dev/from-map created",
    ]
    cluster.delete("microtaskjobs", "from-map")
    cluster.wait_gone("microtaskjobs", "from-map")
    second = user.expect(0, "submit", str(path))
    assert second.stdout.splitlines()[0] == "configmap/words unchanged"

    # Other data under the same name: refused before any MicrotaskJob is created.
    words["data"] = {"list": "x\n"}
    body["metadata"]["name"] = "other"
    clash = user.expect(1, "submit", str(job_file(tmp_path, body, words, name="clash.yaml")))
    assert 'configmaps "words" already exists' in clash.stderr
    assert cluster.get("microtaskjobs", "other") is None

    # A namespace in the file that -n contradicts, as kubectl refuses it.
    body["metadata"]["namespace"] = "elsewhere"
    refused = user.expect(
        1, "submit", str(job_file(tmp_path, body, name="ns.yaml")), "-n", cluster.namespace
    )
    assert "does not match the namespace" in refused.stderr


def test_watch_prints_failures_as_they_happen_and_fails(cluster: Cluster, tmp_path: Path) -> None:
    user = cli(cluster, tmp_path)
    # One shard at a time; index 13 fails late, while the watch is on.
    late = [
        "python3",
        "-c",
        "import os, sys, time; time.sleep(0.3); sys.exit(3 if os.environ['MICROTASK_INDEX'] "
        "== '13' else 0)",
    ]
    body = microtask_job(
        "flaky",
        total=16,
        per_shard=2,
        parallelism=1,
        command=late,
        retry={"maxAttempts": 2, "backoffSeconds": 0.2, "maxFailedMicrotasks": 0},
    )
    with running_operator(cluster) as op:
        user.expect(0, "submit", str(job_file(tmp_path, body)))
        watched = user.expect(1, "watch", "flaky", timeout=120)
        summary = lines_with(watched.stderr, "microtaskjob/flaky Failed:")
        warnings = lines_with(watched.stderr, "warning ShardFailed:")
        assert summary and warnings, str(watched)
        assert warnings[0] < summary[0]  # printed as it happened, before the end
        assert "reason: TooManyFailures" in watched.stderr
        assert "microtask rerun flaky --failed" in watched.stderr
        status = status_of(cluster, "flaky")
        assert status["phase"] == "Failed"

        shown = user.expect(0, "get", "flaky")
        rows = table(shown.stdout.split("\n\n")[0])
        assert rows[1][:2] == ["flaky", "Failed"]
        assert rows[1][3] == str(status["failed"])
        details = shown.stdout.split("\n\n", 1)[1]
        assert "Conditions:" in details and "TooManyFailures" in details
        if status.get("failureSummary"):
            assert "Failures:" in details and "exit 3" in details

        # Already finished: watch says so at once, with the same exit code.
        assert user.expect(1, "watch", "flaky", timeout=30).stderr.count("Failed:") == 1
        op.assert_clean(allow=ALLOWED)


def test_watch_times_out_survives_cut_watches_and_reports_deletion(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Through the test's fault proxy, which can end every open watch stream.
    through_proxy = tmp_path / "proxy.kubeconfig"
    through_proxy.write_text(
        kubeconfig(
            cluster.proxy.url,
            cluster.plane.identities["admin"].token,
            None,
            namespace=cluster.namespace,
        )
    )
    user = cli(cluster, tmp_path, through_proxy)
    # Its microtasks wait for a gate, opened once the second watch has met its first fault: on a
    # loaded machine the job could otherwise end before that watch starts, and meet no fault.
    gate = tmp_path / "gate"
    gated = [
        "python3",
        "-c",
        f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n"
        "    time.sleep(0.1)\ntime.sleep(0.5)",
    ]
    body = microtask_job("slow", total=24, per_shard=2, parallelism=2, command=gated)
    with running_operator(cluster) as op:
        user.expect(0, "submit", str(job_file(tmp_path, body)))
        timed_out = user.expect(124, "watch", "slow", "--timeout", "1.5", timeout=30)
        assert "timed out after 1.5s" in timed_out.stderr
        assert "keeps running on the cluster" in timed_out.stderr

        # Its first list meets a 503, its first two watches 410 Gone (only the CLI's requests
        # name the job in a field selector; the operator's are left alone).
        unavailable = cluster.inject_fault(503, verb="list", resource="microtaskjobs", name="slow")
        gone = cluster.inject_fault(
            410, verb="watch", resource="microtaskjobs", name="slow", times=2
        )
        watcher = user.start("watch", "slow")
        opened = time.monotonic() + 60
        while unavailable.hits == 0 and watcher.poll() is None and time.monotonic() < opened:
            time.sleep(0.1)
        gate.touch()
        cut = 0
        deadline = time.monotonic() + 60
        while watcher.poll() is None and time.monotonic() < deadline:
            time.sleep(1.0)
            cut += cluster.cut_watches()
        out, err = watcher.communicate(timeout=60)
        assert watcher.returncode == 0, f"exit {watcher.returncode}\n{out}\n{err}"
        assert cut >= 2, "no watch was open to cut"
        # The second 410 is met only if the job is still running when the first re-list ends;
        # on a loaded machine the job may finish first (the gate is open by then), and the
        # re-list then says so.
        assert unavailable.hits == 1 and gone.hits in (1, 2), (unavailable.hits, gone.hits)
        assert "lost the API server, retrying: Error from server (ServiceUnavailable)" in err
        assert "the API server answers again" in err
        assert "microtaskjob/slow Succeeded: 24/24 succeeded" in err
        assert "Traceback" not in err

        # Ctrl-C: exit 130, and the job is left running.
        cluster.create(microtask_job("endless", total=40, per_shard=1, parallelism=1, command=SLOW))
        watcher = user.start("watch", "endless")
        assert watcher.stderr is not None
        assert watcher.stderr.readline().startswith("endless: ")  # watching now
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=30)
        assert watcher.returncode == 130, err
        assert "keeps running on the cluster" in err
        assert cluster.get("microtaskjobs", "endless") is not None

        # Deleted while watched: exit 1, said plainly.
        watcher = user.start("watch", "endless")
        assert watcher.stderr is not None
        assert watcher.stderr.readline().startswith("endless: ")
        cluster.delete("microtaskjobs", "endless")
        out, err = watcher.communicate(timeout=60)
        assert watcher.returncode == 1, err
        assert "microtaskjob/endless was deleted" in err
        op.assert_clean(allow=[*ALLOWED, "endless"])


# --- rerun ------------------------------------------------------------------------------------


def test_rerun_of_a_failed_job_runs_only_what_failed(cluster: Cluster, tmp_path: Path) -> None:
    user = cli(cluster, tmp_path)
    body = microtask_job(
        "batch",
        total=12,
        per_shard=3,
        parallelism=2,
        command=FAILING,
        retry={"maxAttempts": 1, "maxFailedMicrotasks": 0, "backoffSeconds": 0.2},
    )
    body["metadata"]["labels"] = {"team": "a"}
    with running_operator(cluster) as op:
        user.expect(1, "submit", str(job_file(tmp_path, body)), "--watch", timeout=90)
        old = status_of(cluster, "batch")
        unfinished = old["total"] - old["succeeded"]
        assert unfinished >= 1

        made = user.expect(0, "rerun", "batch", "--failed", "--watch", timeout=90)
        assert made.stdout.splitlines()[0].startswith(
            f"microtaskjob.microtask.dev/batch-rerun-1 created: reruns {unfinished} microtasks"
        )
        rerun = cluster.get("microtaskjobs", "batch-rerun-1")
        assert rerun is not None
        assert rerun["spec"]["items"] == {"fromJob": {"name": "batch", "indexes": "failed"}}
        assert rerun["metadata"]["labels"] == {"team": "a", "microtask.dev/rerun-of": "batch"}
        assert rerun["spec"]["template"] == body["spec"]["template"]
        status = rerun["status"]
        assert status["phase"] == "Succeeded", status
        # It ran exactly what did not succeed in `batch`, keeping the indexes.
        not_succeeded = IndexSet.from_range(0, old["total"]) - IndexSet.from_compact(
            old["succeededIndexes"]
        )
        assert status["total"] == unfinished == len(not_succeeded)
        assert status["source"]["job"] == "batch"
        assert IndexSet.from_compact(status["source"]["indexes"]) == not_succeeded
        assert IndexSet.from_compact(status["succeededIndexes"]) == not_succeeded
        assert "microtaskjob/batch-rerun-1 Succeeded" in made.stderr

        # A finished job with nothing left, and a job still running, are not rerun.
        nothing = user.expect(0, "rerun", "batch-rerun-1", "--failed")
        assert "nothing to rerun" in nothing.stdout
        cluster.create(microtask_job("busy", total=40, per_shard=1, parallelism=1, command=SLOW))
        wait_phase(cluster, "busy", ("Running",), timeout=30)
        busy = user.expect(1, "rerun", "busy", "--failed")
        assert "only a finished MicrotaskJob" in busy.stderr
        # The next rerun of the failed job takes the next number.
        user.expect(0, "rerun", "batch", "--failed")
        assert cluster.get("microtaskjobs", "batch-rerun-2") is not None
        op.assert_clean(allow=ALLOWED)


# --- results and logs -------------------------------------------------------------------------


def test_results_and_logs_of_a_job_with_a_volume_store(cluster: Cluster, tmp_path: Path) -> None:
    pytest.importorskip("microtask_operator.results.target", exc_type=ImportError)
    user = cli(cluster, tmp_path)
    store = tmp_path / "store"
    # Each microtask prints a line and gives back its index squared as its result.
    command = [
        "python3",
        "-c",
        "import os; i = int(os.environ['MICROTASK_INDEX']); print('squaring', i);"
        "open(os.environ['MICROTASK_OUTPUT'], 'w').write(str(i * i))",
    ]
    body = microtask_job("squares", total=8, per_shard=4, parallelism=2, command=command)
    body["spec"]["template"]["spec"]["volumes"] = [
        {"name": "results", "hostPath": {"path": str(store), "type": "DirectoryOrCreate"}}
    ]
    body["spec"]["output"] = {"volume": {"name": "results", "path": "out"}}
    with running_operator(cluster) as op:
        user.expect(0, "submit", str(job_file(tmp_path, body)), "--watch", timeout=90)
        shown = table(user.expect(0, "get", "squares", "-o", "wide").stdout.split("\n\n")[0])
        assert shown[1][-1] == "volume://results/out/squares"
        op.assert_clean(allow=ALLOWED)

    # The store is on a volume: the job's name alone says where, and how to read it.
    by_name = user.expect(1, "results", "squares")
    assert "--store" in by_name.stderr
    root = store / "out" / "squares"
    merged = user.expect(0, "results", "--store", str(root))
    records = [json.loads(line) for line in merged.stdout.splitlines()]
    assert [r["index"] for r in records] == list(range(8))
    assert {r["outcome"] for r in records} == {"succeeded"}
    values = user.expect(0, "results", "--store", str(root), "--results-only")
    assert values.stdout.split() == [str(i * i) for i in range(8)]
    log = user.expect(0, "logs", "--store", str(root), "--index", "5")
    assert log.stdout == "squaring 5\n"


# --- the kubectl plugin -----------------------------------------------------------------------


def test_kubectl_runs_it_as_a_plugin(cluster: Cluster, tmp_path: Path) -> None:
    kubectl = require("kubectl")["kubectl"]
    user = Cli(cluster.kubeconfig, tmp_path / "home", path=[BIN, kubectl.parent])
    cluster.create(microtask_job("plugged"))

    listed = user.run("microtask", "get", binary=kubectl)
    assert listed.code == 0, str(listed)
    rows = table(listed.stdout)
    assert rows[0][:3] == ["NAME", "PHASE", "PROGRESS"]
    assert rows[1][0] == "plugged"

    helped = user.run("microtask", "--help", binary=kubectl)
    assert helped.code == 0, str(helped)
    assert helped.stdout.startswith("usage: kubectl microtask ")
    plugins = user.run("plugin", "list", binary=kubectl)
    assert str(PLUGIN) in plugins.stdout, str(plugins)

    missing = user.run("microtask", "watch", "nope", binary=kubectl)
    assert missing.code == 1
    assert 'microtaskjobs.microtask.dev "nope" not found' in missing.stderr


# --- refusals and an unreachable server -------------------------------------------------------


def test_a_user_without_rights_is_told_what_was_forbidden(cluster: Cluster, tmp_path: Path) -> None:
    cluster.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}})
    path = f"/api/v1/namespaces/{cluster.namespace}/serviceaccounts/nobody/token"
    token = cluster.api.request("POST", path, {"spec": {"expirationSeconds": 3600}})
    config = tmp_path / "nobody.kubeconfig"
    config.write_text(
        kubeconfig(
            cluster.url,
            token["status"]["token"],
            cluster.plane.ca_file,
            namespace=cluster.namespace,
        )
    )
    user = cli(cluster, tmp_path, config)
    who = f"system:serviceaccount:{cluster.namespace}:nobody"
    listed = user.expect(1, "get")
    assert listed.stderr.splitlines() == [
        f'Error from server (Forbidden): microtaskjobs.microtask.dev is forbidden: User "{who}" '
        'cannot list resource "microtaskjobs" in API group "microtask.dev" in the namespace '
        f'"{cluster.namespace}"'
    ]
    created = user.expect(1, "submit", str(job_file(tmp_path, microtask_job("denied"))))
    assert 'cannot get resource "microtaskjobs"' in created.stderr
    for args in (("watch", "x"), ("delete", "x"), ("rerun", "x", "--failed")):
        refused = user.expect(1, *args)
        assert refused.stderr.startswith("Error from server (Forbidden): "), str(refused)
        assert len(refused.stderr.splitlines()) == 1, str(refused)


def test_an_unreachable_server_is_one_clear_line(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "closed.kubeconfig"
    config.write_text(
        kubeconfig(f"https://127.0.0.1:{port}", "token", cluster.plane.ca_file, namespace="x")
    )
    user = cli(cluster, tmp_path, config)
    path = job_file(tmp_path, microtask_job("nowhere"))
    for args in (("get",), ("get", "a"), ("watch", "a"), ("submit", str(path)), ("delete", "a")):
        result = user.expect(1, *args, timeout=60)
        assert result.stderr.splitlines() == [
            f"error: cannot reach the Kubernetes API server at https://127.0.0.1:{port}: "
            "connection refused (is the cluster running, and is the kubeconfig's context the "
            "right one?)"
        ], str(result)
    no_config = Cli(tmp_path / "missing.kubeconfig", tmp_path / "home2")
    result = no_config.run("get")
    assert result.code == 1
    assert result.stderr.startswith("error: cannot use the kubeconfig "), str(result)
    unknown = cli(cluster, tmp_path).expect(1, "get", "--context", "nope")
    assert "no context 'nope' in the kubeconfig (contexts: test)" in unknown.stderr
