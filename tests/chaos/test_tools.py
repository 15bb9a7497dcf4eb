"""The chaos suite's own tools, checked without a cluster: kill points, the execution log's
command, the chaos profile's choices and the fault proxy's chooser."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.chaos.support import ChaosProfile, ExecutionLog, chaos_seed, kill_points
from tests.integration.harness.faultproxy import ApiRequest, Fault, FaultProxy, classify

pytestmark = pytest.mark.timeout(30)


def test_kill_points_are_repeatable_spread_and_inside_the_span() -> None:
    points = kill_points(7, 10, 10_000)
    assert points == kill_points(7, 10, 10_000)
    assert points != kill_points(8, 10, 10_000)
    assert points == sorted(points)
    assert points[0] >= 200 and points[-1] < 9_000
    width = (0.9 - 0.02) * 10_000 / 10
    for i, point in enumerate(points):  # one in each stratum
        assert 200 + i * width <= point < 200 + (i + 1) * width
    with pytest.raises(ValueError, match="n=0"):
        kill_points(7, 0, 100)


def test_the_seed_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROTASK_CHAOS_SEED", "0x10")
    assert chaos_seed() == 16
    monkeypatch.setenv("MICROTASK_CHAOS_SEED", "many")
    with pytest.raises(pytest.UsageError, match="MICROTASK_CHAOS_SEED='many'"):
        chaos_seed()


def run_microtask(log: ExecutionLog, index: int, item: str = "x") -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "MICROTASK_INDEX": str(index),
        "MICROTASK_SHARD": "4",
        "MICROTASK_ATTEMPT": "1",
        "MICROTASK_ITEM": item,
    }
    return subprocess.Popen(log.command(), env=env)


def test_the_execution_log_counts_fails_once_and_holds(tmp_path: Path) -> None:
    log = ExecutionLog(tmp_path / "log")
    log.fail_once([2])
    assert run_microtask(log, 1, "a b").wait(10) == 0
    assert run_microtask(log, 2).wait(10) == 3
    assert run_microtask(log, 2).wait(10) == 0
    log.hold([5])
    held = run_microtask(log, 5)
    deadline = time.monotonic() + 10
    while 5 not in log.per_index() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert held.poll() is None, "a held microtask ended before its release"
    log.release()
    assert held.wait(10) == 0
    assert [(e.index, e.shard, e.item) for e in log.executions()] == [
        (1, 4, "a b"),
        (2, 4, "x"),
        (2, 4, "x"),
        (5, 4, "x"),
    ]
    assert log.count() == 4 and log.per_index() == {1: 1, 2: 2, 5: 1}


def test_the_chaos_profile_is_repeatable_and_keeps_its_rates() -> None:
    profile = ChaosProfile(write_error_rate=0.2, read_error_rate=0.05, delay_rate=0.1)
    patch = classify(
        "PATCH", "/apis/microtask.dev/v1alpha1/namespaces/n/microtaskjobs/j/status", {}
    )
    get = classify("GET", "/api/v1/namespaces/n/pods/p", {})
    for request, rate, codes in ((patch, 0.2, {409, 429, 500}), (get, 0.05, {429, 500})):
        faults = [profile.decide(3, request, n) for n in range(4000)]
        assert faults == [profile.decide(3, request, n) for n in range(4000)]
        errors = [f for f in faults if f is not None and f.code is not None]
        assert abs(len(errors) / 4000 - rate) < 0.03
        assert {f.code for f in errors} == codes
        delays = [f for f in faults if f is not None and f.code is None]
        assert delays and all(0 < f.delay <= profile.max_delay_seconds for f in delays)
    assert profile.decide(3, classify("GET", "/version", {}), 0) is None


def test_the_fault_proxy_asks_the_chooser_after_its_armed_faults() -> None:
    seen: list[ApiRequest] = []

    def chooser(request: ApiRequest) -> Fault | None:
        seen.append(request)
        return Fault(429, retry_after=2) if request.resource == "pods" else None

    # Nothing listens upstream: a forwarded request is answered 502 by the proxy itself.
    with FaultProxy("http://127.0.0.1:9") as proxy:
        proxy.set_chooser(chooser)
        proxy.inject_fault(500, resource="pods", times=1)
        address = urlsplit(proxy.url)

        def get(path: str) -> tuple[int, dict[str, object]]:
            connection = http.client.HTTPConnection(
                address.hostname or "", address.port, timeout=10
            )
            try:
                connection.request("GET", path)
                reply = connection.getresponse()
                return reply.status, json.loads(reply.read())
            finally:
                connection.close()

        assert get("/api/v1/namespaces/n/pods")[0] == 500  # the armed fault first
        code, body = get("/api/v1/namespaces/n/pods")
        assert code == 429 and body["details"] == {
            "name": "",
            "kind": "pods",
            "retryAfterSeconds": 2,
        }
        assert get("/api/v1/namespaces/n/configmaps")[0] == 502
        proxy.set_chooser(None)
        assert get("/api/v1/namespaces/n/pods")[0] == 502
        assert [r.resource for r in seen] == ["pods", "configmaps"]
