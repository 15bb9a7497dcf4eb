"""What `microtask get` and `watch` print: durations, rates, ETAs, tables and details."""

from __future__ import annotations

from typing import Any

import pytest
from microtask_operator.kubecli.formatting import (
    COLUMNS,
    WIDE_COLUMNS,
    Progress,
    failure_text,
    format_eta,
    format_rate,
    format_seconds,
    human_duration,
    job_details,
    job_table,
    render_table,
    status_line,
    unusual_conditions,
)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
START = "2023-11-14T22:13:20Z"


def body(name: str = "thumbs", *, created: str = START, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "microtask.dev/v1alpha1",
        "kind": "MicrotaskJob",
        "metadata": {"name": name, "namespace": "team", "creationTimestamp": created},
        "spec": {},
        "status": status,
    }


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-5, "<invalid>"),
        (-0.5, "0s"),
        (0, "0s"),
        (59, "59s"),
        (119, "119s"),
        (120, "2m"),
        (125, "2m5s"),
        (599, "9m59s"),
        (600, "10m"),
        (3 * 3600 - 1, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 60 * 7, "3h7m"),
        (8 * 3600, "8h"),
        (47 * 3600 + 3599, "47h"),
        (48 * 3600, "2d"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (8 * 86400, "8d"),
        (400 * 86400, "400d"),
        (2 * 365 * 86400, "2y"),
        (3 * 365 * 86400 + 10 * 86400, "3y10d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_durations_read_like_kubectl_ages(seconds: float, shown: str) -> None:
    assert human_duration(seconds) == shown


@pytest.mark.parametrize(
    ("rate", "shown"),
    [(None, "-"), (0.0, "0/s"), (0.0456, "0.05/s"), (1.5, "1.50/s"), (12.34, "12.3/s"),
     (1234.5, "1,234/s")],
)  # fmt: skip
def test_rates(rate: float | None, shown: str) -> None:
    assert format_rate(rate) == shown


def test_rate_and_eta_count_microtasks_ended_since_the_start() -> None:
    running = body(phase="Running", total=1000, succeeded=380, failed=20, startTime=START)
    progress = Progress.of(running)
    assert progress.ended == 400
    assert progress.rate(T0 + 100) == pytest.approx(4.0)
    assert progress.eta(T0 + 100) == pytest.approx(150.0)  # 600 left at 4/s
    assert format_eta(progress.eta(T0 + 100)) == "2m30s"
    assert progress.progress_text() == "380/1000"


def test_a_finished_job_has_its_final_rate_and_no_eta() -> None:
    done = body(
        phase="Succeeded",
        total=100,
        succeeded=100,
        startTime=START,
        completionTime="2023-11-14T22:13:40Z",
    )
    progress = Progress.of(done)
    assert progress.rate(T0 + 3600) == pytest.approx(5.0)  # over the 20 s it ran, not since
    assert progress.eta(T0 + 3600) is None


@pytest.mark.parametrize(
    "status",
    [
        {},  # the operator has not seen it yet
        {"phase": "Pending", "total": 10},  # not started: no rate
        {"phase": "Running", "total": 10, "startTime": START},  # nothing ended yet
        {"phase": "Suspended", "total": 10, "succeeded": 5, "startTime": START},  # held
    ],
)
def test_no_eta_without_a_measurable_rate(status: dict[str, Any]) -> None:
    assert Progress.of(body(**status)).eta(T0 + 10) is None


def test_unfinished_counts_failed_and_never_run() -> None:
    failed = body(phase="Failed", total=10, succeeded=6, failed=1, notRun=3, startTime=START)
    assert Progress.of(failed).unfinished == 4
    assert Progress.of(body(phase="Succeeded", total=10, succeeded=10)).unfinished == 0


def test_render_table_pads_columns_like_kubectl() -> None:
    text = render_table(("NAME", "PHASE", "AGE"), [("a", "Running", "5s"), ("longer", "-", "1d")])
    assert text.splitlines() == [
        "NAME     PHASE     AGE",
        "a        Running   5s",
        "longer   -         1d",
    ]


def test_the_job_table() -> None:
    jobs = [
        body("zeta", phase="Succeeded", total=10, succeeded=10, startTime=START,
             completionTime="2023-11-14T22:13:25Z"),
        body("alpha", phase="Running", total=1000, succeeded=420, failed=3, running=40,
             startTime=START, created="2023-11-14T22:12:20Z"),
        body("new", created="2023-11-14T22:13:30Z"),
    ]  # fmt: skip
    rows = [line.split() for line in job_table(jobs, T0 + 100).splitlines()]
    assert rows[0] == list(COLUMNS)
    assert rows[1] == ["alpha", "Running", "420/1000", "3", "40", "4.23/s", "2m16s", "2m40s"]
    assert rows[2] == ["new", "<none>", "-", "0", "0", "-", "-", "90s"]
    assert rows[3] == ["zeta", "Succeeded", "10/10", "0", "0", "2.00/s", "-", "100s"]


def test_the_wide_table_with_all_namespaces() -> None:
    job = body(
        phase="Running",
        total=10,
        succeeded=2,
        attempts=5,
        succeededAfterRetry=1,
        startTime=START,
        resources={"cpuSeconds": 1234.4, "gpuSeconds": 0, "wastedCpuSeconds": 0,
                   "wastedGpuSeconds": 0},
        output={"url": "s3://bucket/runs/thumbs"},
    )  # fmt: skip
    lines = job_table([job], T0 + 10, wide=True, all_namespaces=True).splitlines()
    assert lines[0].split() == ["NAMESPACE", *WIDE_COLUMNS]
    assert lines[1].split()[0] == "team"
    assert lines[1].split()[-4:] == ["5", "1", "1,234", "s3://bucket/runs/thumbs"]
    plain = job_table([body()], T0, wide=True).splitlines()[1].split()
    assert plain[-4:] == ["-", "-", "-", "<none>"]


@pytest.mark.parametrize(("value", "shown"), [(None, "-"), (0.25, "0.2"), (9.96, "10.0"),
                                              (12.5, "12"), (98765.4, "98,765")])  # fmt: skip
def test_cpu_seconds(value: float | None, shown: str) -> None:
    assert format_seconds(value) == shown


def test_failure_lines_name_kind_counts_and_sample() -> None:
    kind = {
        "exitCode": 127,
        "reason": "exit 127 (command not found)",
        "attempts": 6,
        "microtasks": 2,
        "sampleIndex": 14,
        "message": "thumb.py: not found",
    }
    assert failure_text(kind) == (
        "exit 127 (command not found): 6 failed attempts, 2 microtasks failed for good; "
        "e.g. microtask 14: thumb.py: not found"
    )
    one = {"reason": "OOMKilled", "attempts": 1, "sampleIndex": 3}
    assert failure_text(one) == "OOMKilled: 1 failed attempt; e.g. microtask 3"


def test_only_conditions_out_of_their_everyday_state_are_shown() -> None:
    status = {
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Running"},
            {"type": "Complete", "status": "False", "reason": "Running"},
            {"type": "Failed", "status": "False", "reason": "Running"},
            {"type": "Suspended", "status": "True", "reason": "Suspended"},
            {"type": "Complete", "status": "True", "reason": "SucceededWithTolerableFailures"},
        ]
    }
    shown = [(c["type"], c["status"]) for c in unusual_conditions(status)]
    assert shown == [("Suspended", "True"), ("Complete", "True")]
    stalled = {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}
    assert len(unusual_conditions(stalled)) == 1
    assert unusual_conditions({"conditions": [{"type": "Complete", "status": "True",
                                               "reason": "AllSucceeded"}]}) == []  # fmt: skip


def test_details_of_one_job() -> None:
    job = body(
        phase="Failed",
        total=10,
        succeeded=8,
        failed=2,
        message="last failure: exit 3",
        output={"url": "volume://results/out/thumbs"},
        source={"job": "first", "indexes": "3,7"},
        failureSummary=[
            {"exitCode": 3, "reason": "exit 3", "attempts": 4, "microtasks": 2,
             "sampleIndex": 3, "message": "bad input"},
        ],
        conditions=[
            {"type": "Ready", "status": "False", "reason": "TooManyFailures", "message": "x"},
            {"type": "Failed", "status": "True", "reason": "TooManyFailures",
             "message": "2 microtasks failed permanently"},
            {"type": "Invalid", "status": "False", "reason": "Valid"},
        ],
    )  # fmt: skip
    lines = job_details(job)
    assert lines[:3] == [
        "Message:     last failure: exit 3",
        "Rerun of:    first (indexes 3,7)",
        "Output:      volume://results/out/thumbs",
    ]
    assert lines[3] == "Failures:"
    assert lines[4].split() == ["KIND", "ATTEMPTS", "MICROTASKS", "SAMPLE", "MESSAGE"]
    assert lines[5].split() == ["exit", "3", "4", "2", "3", "bad", "input"]
    assert lines[6] == "Conditions:"
    assert lines[7].split()[:4] == ["TYPE", "STATUS", "REASON", "MESSAGE"]
    # Ready=False says nothing a finished job's phase does not.
    assert [line.split()[:3] for line in lines[8:]] == [["Failed", "True", "TooManyFailures"]]


def test_details_without_a_status_point_at_the_operator() -> None:
    (line,) = job_details(body())
    assert "no status yet" in line and "operator" in line


def test_status_line() -> None:
    running = body(phase="Running", total=100, succeeded=40, failed=2, running=10, queued=3,
                   startTime=START)  # fmt: skip
    assert status_line("thumbs", running, T0 + 21) == (
        "thumbs: Running 40/100 succeeded, 2 failed, 10 running, 3 queued; 2.00/s, ETA 29s"
    )
    assert status_line("thumbs", body(), T0) == "thumbs: waiting for the operator to pick it up"
