"""`microtask run FILE`: run a MicrotaskJob on this machine, with the same core as the operator."""

from __future__ import annotations

import argparse
import os


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a YAML file holding one MicrotaskJob (and its ConfigMap)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="local processes running shards at once (default: the number of CPUs)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the final status as JSON on stdout"
    )
    parser.add_argument(
        "--name", help="which MicrotaskJob of the file to run, when it holds several"
    )
    parser.add_argument(
        "--log-dir",
        help="where each shard's output goes (default: a new temporary directory)",
    )


def execute(args: argparse.Namespace) -> int:
    import json
    import sys
    import tempfile
    from pathlib import Path

    from rich.console import Console

    from ..api.loading import load_file
    from ..local.display import ProgressDisplay, summary_table
    from ..local.executor import LocalExecutor
    from ..local.job import local_job

    console = Console(stderr=True)
    if args.workers < 1:
        console.print("[red]error:[/] --workers must be at least 1")
        return 2
    result = load_file(args.file)
    if not result.ok:
        for problem in result.problems:
            console.print(f"[red]invalid:[/] {problem}", markup=False, highlight=False)
        return 2
    jobs = result.jobs
    if args.name:
        jobs = [j for j in jobs if j.job.metadata.name == args.name]
    if len(jobs) != 1:
        names = ", ".join(j.job.metadata.name for j in result.jobs) or "none"
        console.print(
            f"[red]error:[/] {args.file} must hold exactly one MicrotaskJob "
            f"(or choose one with --name); it holds: {names}",
            markup=False,
        )
        return 2
    loaded = jobs[0]
    ref = loaded.job.spec.items.config_map_ref
    data = result.config_map_data(loaded)
    if ref is not None and data is None:
        console.print(
            f"error: {args.file}: spec.items.configMapRef: ConfigMap {ref.name!r} is not in the "
            "file; `microtask run` reads it from the same file",
            markup=False,
        )
        return 2
    log_dir = (
        Path(args.log_dir)
        if args.log_dir
        else Path(tempfile.mkdtemp(prefix=f"microtask-{loaded.job.metadata.name}-"))
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        job, notes = local_job(
            loaded.job, args.workers, Path(args.file).resolve().parent, log_dir, data
        )
    except ValueError as error:
        console.print(f"error: {args.file}: {error}", markup=False)
        return 2
    for note in notes:
        console.print(f"[dim]note: {note}[/]")

    with ProgressDisplay(job.name, job.spec.total, console) as display:
        executor = LocalExecutor(job, args.workers, log_dir, on_progress=display.update)
        outcome = executor.run()
    status = outcome.decision.status
    console.print(
        summary_table(
            job.name,
            status,
            seconds=outcome.seconds,
            shards=outcome.shards,
            retried=outcome.retried,
            failure_examples=outcome.failure_examples,
            log_dir=str(log_dir),
        )
    )
    if args.json:
        json.dump(status, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    return 0 if outcome.decision.phase == "Succeeded" else 1
