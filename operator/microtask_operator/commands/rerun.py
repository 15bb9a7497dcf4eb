"""`microtask rerun JOB --failed`: run again everything that did not succeed, into the same results.

JOB is a job file (or `--output` is given): the local run in its folder is rerun here, over every
microtask that failed or never ran, with shard ids after the earlier run's, and its outcome merged
into the run's state, so `microtask results FILE` shows one job. Refused (exit 2) when the spec
changed since the run, or there is no run. Nothing left: says so, exit 0.

Otherwise JOB is the name of a MicrotaskJob on the cluster of the current kubeconfig, and the rerun
happens there.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .run import EXIT_REFUSED, add_local_options


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "job",
        metavar="JOB",
        help="a job file that `microtask run` ran, or the name of a MicrotaskJob on the cluster",
    )
    parser.add_argument(
        "--failed",
        action="store_true",
        required=True,
        help="rerun every microtask that did not succeed (failed, or never ran)",
    )
    add_local_options(parser)
    cluster = parser.add_argument_group("on a cluster (JOB is a MicrotaskJob's name)")
    cluster.add_argument(
        "-n", "--namespace", help="the MicrotaskJob's namespace (default: the context's)"
    )
    cluster.add_argument("--context", help="the kubeconfig context (default: the current one)")
    cluster.add_argument("--watch", action="store_true", help="follow the rerun until it ends")


def is_local(args: argparse.Namespace) -> bool:
    """A job file (or an explicit local folder), not a MicrotaskJob's name.

    MicrotaskJob names are DNS labels: a dot or a slash only appears in a path.
    """
    job: str = args.job
    return args.output is not None or os.path.exists(job) or "." in job or "/" in job or job == "-"


def execute(args: argparse.Namespace) -> int:
    from ..local.display import Ui

    ui = Ui()
    if is_local(args):
        return rerun_locally(args, ui)
    try:
        from ..kubecli.rerun import rerun_on_cluster
    except ModuleNotFoundError as error:
        if error.name is None or not error.name.startswith("microtask_operator"):
            raise
        ui.error(
            f"{args.job!r} is not a file, and this build cannot rerun MicrotaskJobs on a cluster"
        )
        return EXIT_REFUSED
    code: int = rerun_on_cluster(args)
    return code


def rerun_locally(args: argparse.Namespace, ui: Any) -> int:
    from ..local.saved import Mode
    from ..local.session import JobRun, Settings
    from ..local.stopping import StopSignals
    from .run import (
        hint_args,
        load_jobs,
        output_folder,
        print_summaries,
        refuse_unrunnable,
        select_job,
    )

    for option in ("namespace", "context"):
        if getattr(args, option, None):
            ui.error(f"--{option} is for a MicrotaskJob on a cluster; {args.job} is a local run")
            return EXIT_REFUSED
    output = output_folder(args, ui)
    if isinstance(output, int):
        return output
    result = load_jobs(args.job, ui)
    if isinstance(result, int):
        return result
    loaded = select_job(result, args.name, ui)
    if isinstance(loaded, int):
        return loaded
    if refuse_unrunnable(result, loaded, ui, args.job):
        return EXIT_REFUSED
    name = loaded.job.metadata.name
    settings = Settings(
        file=args.job,
        workers=args.workers,
        progress_interval=args.progress_interval,
        reuse_processes=args.reuse_processes,
        hint_args=tuple(hint_args(result, name, output)),
    )
    with StopSignals() as stop:
        outcome = JobRun(
            loaded.job,
            result.config_map_data(loaded),
            output=output,
            mode=Mode.FAILED,
            settings=settings,
            ui=ui,
            stop=stop,
        ).run()
    print_summaries([outcome.summary] if outcome.summary is not None else [], args.format)
    return outcome.code
