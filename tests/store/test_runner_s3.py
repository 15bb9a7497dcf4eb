"""The real runner (``python -m microtask_runner``) writing to MinIO, read back through S3Store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from microtask_operator.results.s3store import S3Store
from microtask_runner.contract import log_name, parse_begin, records_name
from microtask_runner.report import Report

from tests.integration.harness.minio import MinioServer

RUNNER = [sys.executable, "-m", "microtask_runner"]
JOB = "thumbs"
SHARD = 4
# Prints on both streams, and fails the indexes that are 2 mod 3.
SCRIPT = 'echo "working on $1"; echo "note $1" >&2; [ $(($1 % 3)) -ne 2 ]'


def runner_env(tmp_path: Path, s3_env: dict[str, str], url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROTASK_", "AWS_"))}
    env.update(s3_env)
    env.update(
        MICROTASK_REPORT_PATH=str(tmp_path / "report.json"),
        MICROTASK_JOB=JOB,
        MICROTASK_SHARD=str(SHARD),
        MICROTASK_OUTPUT_URL=url,
    )
    env.update(extra)
    return env


def records(store: S3Store, first: int = 0) -> list[dict[str, Any]]:
    with store.open(records_name(first, JOB, SHARD)) as stream:
        lines = list(stream)
    assert all(line.endswith(b"\n") for line in lines), "every record is a whole line"
    return [json.loads(line) for line in lines]


def test_a_shard_writes_its_records_and_log_to_s3(
    tmp_path: Path, bucket: str, s3_env: dict[str, str], open_s3: Callable[..., S3Store]
) -> None:
    url = f"s3://{bucket}/runs/{JOB}"
    proc = subprocess.run(
        [*RUNNER, "sh", "-c", SCRIPT, "sh", "$(MICROTASK_INDEX)"],
        env=runner_env(tmp_path, s3_env, url, MICROTASK_INDEXES="10-15"),
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        check=False,
    )
    output = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 10, output  # some microtasks failed
    assert "warning" not in output, output
    report = Report.decode((tmp_path / "report.json").read_text())
    assert report.count == 6

    store = open_s3(url)
    assert list(store.list("")) == [log_name(JOB, SHARD), records_name(10, JOB, SHARD)]
    got = records(store, first=10)
    assert [(r["index"], r["outcome"], r["exitCode"]) for r in got] == [
        (10, "succeeded", 0),
        (11, "failed", 1),
        (12, "succeeded", 0),
        (13, "succeeded", 0),
        (14, "failed", 1),
        (15, "succeeded", 0),
    ]
    assert {(r["job"], r["shard"]) for r in got} == {(JOB, SHARD)}
    with store.open(log_name(JOB, SHARD)) as stream:
        log = stream.read().decode()
    assert [parse_begin(line) for line in log.splitlines() if parse_begin(line)] == [
        (i, 1) for i in range(10, 16)
    ]
    assert "working on 13" in log
    assert "note 14" in log


def test_a_missing_bucket_costs_the_records_not_the_shard(
    tmp_path: Path, minio_server: MinioServer, s3_env: dict[str, str]
) -> None:
    proc = subprocess.run(
        [*RUNNER, "true"],
        env=runner_env(tmp_path, s3_env, "s3://no-such-bucket/x", MICROTASK_INDEXES="0-2"),
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        check=False,
    )
    output = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0, output
    warnings = [line for line in output.splitlines() if "warning" in line]
    assert len(warnings) == 1, output
    assert "cannot write to the result store s3://no-such-bucket/x" in warnings[0]
    assert "the bucket does not exist" in warnings[0]
    assert "3 succeeded, 0 failed" in output


def test_sigterm_uploads_what_finished(
    tmp_path: Path, bucket: str, s3_env: dict[str, str], open_s3: Callable[..., S3Store]
) -> None:
    url = f"s3://{bucket}/stopped"
    started = tmp_path / "started"
    script = f'echo "$1" >> {started}; [ "$1" -ge 2 ] && exec sleep 60; true'
    proc = subprocess.Popen(
        [*RUNNER, "sh", "-c", script, "sh", "$(MICROTASK_INDEX)"],
        env=runner_env(tmp_path, s3_env, url, MICROTASK_INDEXES="0-5"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not (started.exists() and started.read_text().split() == ["0", "1", "2"]):
            assert time.monotonic() < deadline, "the runner did not start microtask 2"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, output.decode()
    store = open_s3(url)
    assert [(r["index"], r["outcome"]) for r in records(store)] == [
        (0, "succeeded"),
        (1, "succeeded"),
    ]
    with store.open(log_name(JOB, SHARD)) as stream:
        assert b"stopped by SIGTERM" in stream.read()


@pytest.mark.slow
def test_a_killed_runner_loses_at_most_one_upload_interval(
    tmp_path: Path, bucket: str, s3_env: dict[str, str], open_s3: Callable[..., S3Store]
) -> None:
    """SIGKILL gives no final flush: what was recorded up to one interval (10 s) before is there."""
    url = f"s3://{bucket}/killed"
    started = tmp_path / "started"
    script = f'echo "$1" >> {started}; [ "$1" -ge 3 ] && exec sleep 60; true'
    proc = subprocess.Popen(
        [*RUNNER, "sh", "-c", script, "sh", "$(MICROTASK_INDEX)"],
        env=runner_env(tmp_path, s3_env, url, MICROTASK_INDEXES="0-5"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store = open_s3(url)
    name = records_name(0, JOB, SHARD)
    try:
        start = time.monotonic()
        seen: list[int] = []
        while seen != [0, 1, 2]:
            assert time.monotonic() - start < 20, f"records after 20 s: {seen}"
            time.sleep(0.2)
            seen = [r["index"] for r in records(store)] if store.exists(name) else []
        # The first record goes up at once, the next ones within one interval.
        assert time.monotonic() - start < 15
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert [r["index"] for r in records(store)] == [0, 1, 2]
