"""`microtask run FILE`: run a MicrotaskJob on this machine, with the same core as the operator.

Exit codes: 0 the job succeeded, 1 it failed (or a dependency did not succeed), 2 the input or
the output folder cannot be used (nothing ran), 128+N stopped by signal N (130 Ctrl-C, 143
SIGTERM, 129 SIGHUP), with the state saved for `--resume`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from ..api.loading import LoadedJob, LoadResult
    from ..local.display import Ui

EXIT_REFUSED = 2
FORMATS = ("json", "yaml")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be 0 (no progress lines) or more seconds")
    return value


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_local_options(parser: argparse.ArgumentParser) -> None:
    """Options of every command that runs a job here (`run`, and `rerun` of a local run)."""
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="the run's folder: records, shard logs and the saved state (run.json); "
        "default: microtask-runs/JOB in the working directory",
    )
    parser.add_argument(
        "--name", help="which MicrotaskJob of the file to run, when it holds several"
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=os.cpu_count() or 2,
        metavar="N",
        help="local processes running shards at once (default: the number of CPUs)",
    )
    parser.add_argument(
        "--reuse-processes",
        dest="reuse_processes",
        action="store_true",
        help="Python mode: each worker process runs shard after shard, your module imported "
        "once, as multiprocessing.Pool's workers do (what a shard leaves in the process, module "
        "globals included, is there for the next); default: a fresh process per shard, as a pod",
    )
    parser.add_argument(
        "-o",
        "--output-format",
        dest="format",
        choices=FORMATS,
        help="also print a RunSummary (documented in the README) on stdout, as JSON or YAML",
    )
    parser.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="json",
        help="the same as -o json",
    )
    parser.add_argument(
        "--progress-interval",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="when stderr is not a terminal, print a progress line this often "
        "(default: 10; 0: none)",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", metavar="FILE", help="a YAML file with the MicrotaskJob (and its ConfigMap)"
    )
    add_local_options(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in the output folder: run what has no outcome yet "
        "(refused if the spec changed since)",
    )
    # The former name of --output, kept working for scripts.
    parser.add_argument("--log-dir", dest="log_dir", help=argparse.SUPPRESS)
    parser.epilog = (
        "Dependencies (spec.dependsOn) in the same file run first, each into its own default "
        "folder. Exit codes: 0 succeeded, 1 failed, 2 unusable input, 130/143/129 stopped by "
        "SIGINT/SIGTERM/SIGHUP (resume with --resume)."
    )


# -- shared with `rerun` --------------------------------------------------------------------


def output_folder(args: argparse.Namespace, ui: Ui) -> Path | int | None:
    """The --output folder (None: the default), or an exit code after a message."""
    from pathlib import Path

    output = args.output
    legacy = getattr(args, "log_dir", None)
    if legacy is not None:
        ui.warning("--log-dir is deprecated: use --output DIR (the run's folder)")
        if output is not None and output != legacy:
            ui.error("--log-dir and --output name different folders: give only --output")
            return EXIT_REFUSED
        output = legacy
    if output is None:
        return None
    if output in FORMATS and not Path(output).exists():
        ui.error(f"--output names the run's folder; for a {output.upper()} summary use -o {output}")
        return EXIT_REFUSED
    return Path(output)


def load_jobs(path: str, ui: Ui) -> LoadResult | int:
    """The file's jobs, or an exit code after printing every problem."""
    from ..api.loading import load_file

    result = load_file(path)
    if not result.ok:
        for problem in result.problems:
            ui.problem(str(problem))
        return EXIT_REFUSED
    return result


def select_job(result: LoadResult, name: str | None, ui: Ui) -> LoadedJob | int:
    """The job to run: --name, the only one, or the one no other job of the file depends on."""
    jobs = result.jobs
    names = ", ".join(j.job.metadata.name for j in jobs) or "none"
    if name is not None:
        chosen = [j for j in jobs if j.job.metadata.name == name]
        if not chosen:
            ui.error(f"{result.source} has no MicrotaskJob {name!r} (it holds: {names})")
            return EXIT_REFUSED
        return chosen[0]
    if len(jobs) == 1:
        return jobs[0]
    needed = {dep for j in jobs for dep in j.job.spec.depends_on}
    roots = [j for j in jobs if j.job.metadata.name not in needed]
    if len(roots) == 1 and jobs:
        return roots[0]
    ui.error(f"{result.source} holds {len(jobs)} MicrotaskJobs ({names}): choose one with --name")
    return EXIT_REFUSED


def refuse_unrunnable(result: LoadResult, loaded: LoadedJob, ui: Ui, file: str) -> bool:
    """Print why this job cannot run here, if it cannot; True when refused."""

    job = loaded.job
    name = job.metadata.name
    if job.spec.suspend:
        ui.error(f"{name}: spec.suspend is true: nothing would run; set it to false to run it here")
        return True
    if job.spec.items.from_job is not None:
        source = job.spec.items.from_job.name
        ui.error(
            f"{name}: spec.items.fromJob reruns MicrotaskJob {source!r} on a cluster, where its "
            "status says what failed; to rerun what a local run did not finish, use "
            f"`microtask rerun FILE --failed`, FILE being the file that ran {source}"
        )
        return True
    ref = job.spec.items.config_map_ref
    if ref is not None and result.config_map_data(loaded) is None:
        ui.error(
            f"{file}: {name}: spec.items.configMapRef: ConfigMap {ref.name!r} is not in the "
            "file; `microtask run` reads it from the same file"
        )
        return True
    return False


def hint_args(result: LoadResult, name: str, output: Path | None) -> list[str]:
    """What finds this run again in the next commands shown (`--output`, `--name`)."""
    extra: list[str] = []
    if output is not None:
        extra += ["--output", str(output)]
    if len(result.jobs) > 1:
        extra += ["--name", name]
    return extra


def print_summaries(summaries: list[dict[str, Any]], fmt: str | None) -> None:
    if fmt is None or not summaries:
        return
    import json

    from ..local.summary import summary_list

    # Plain JSON values only (the core's enums are str subclasses, which YAML would tag).
    document = json.loads(json.dumps(summary_list(summaries)))
    if fmt == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    else:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


# -- dependencies ---------------------------------------------------------------------------


def dependency_order(result: LoadResult, main: LoadedJob, ui: Ui) -> list[LoadedJob] | int:
    """The jobs to run, dependencies first (each once), or an exit code after a message."""
    by_name = {j.job.metadata.name: j for j in result.jobs}
    order: list[LoadedJob] = []
    done: set[str] = set()
    path: list[str] = []

    def visit(loaded: LoadedJob) -> int | None:
        name = loaded.job.metadata.name
        if name in done:
            return None
        if name in path:
            cycle = " -> ".join([*path[path.index(name) :], name])
            ui.error(f"{result.source}: dependency cycle: {cycle}")
            return EXIT_REFUSED
        path.append(name)
        for dep in loaded.job.spec.depends_on:
            if dep not in by_name:
                ui.error(
                    f"{result.source}: {name} depends on MicrotaskJob {dep!r}, which is not in "
                    "the file; `microtask run` runs dependencies from the same file only (add "
                    "it, or drop it from spec.dependsOn to run this job alone)"
                )
                return EXIT_REFUSED
            code = visit(by_name[dep])
            if code is not None:
                return code
        path.pop()
        done.add(name)
        order.append(loaded)
        return None

    code = visit(main)
    return code if code is not None else order


# -- the command ----------------------------------------------------------------------------


def execute(args: argparse.Namespace) -> int:
    from ..local.display import Ui
    from ..local.rundir import RunDir, RunDirError, default_output
    from ..local.saved import Mode
    from ..local.session import JobRun, Refused, Settings
    from ..local.stopping import StopSignals, exit_code

    ui = Ui()
    output = output_folder(args, ui)
    if isinstance(output, int):
        return output
    result = load_jobs(args.file, ui)
    if isinstance(result, int):
        return result
    main = select_job(result, args.name, ui)
    if isinstance(main, int):
        return main
    order = dependency_order(result, main, ui)
    if isinstance(order, int):
        return order
    for loaded in order:
        if refuse_unrunnable(result, loaded, ui, args.file):
            return EXIT_REFUSED

    summaries: list[dict[str, Any]] = []
    code = 0
    with StopSignals() as stop:
        runs: list[JobRun] = []
        for loaded in order:
            name = loaded.job.metadata.name
            is_main = loaded is main
            mode = Mode.FRESH
            if args.resume and (is_main or RunDir(default_output(name)).exists()):
                mode = Mode.RESUME
            settings = Settings(
                file=args.file,
                workers=args.workers,
                progress_interval=args.progress_interval,
                reuse_processes=args.reuse_processes,
                hint_args=tuple(hint_args(result, name, output if is_main else None)),
            )
            runs.append(
                JobRun(
                    loaded.job,
                    result.config_map_data(loaded),
                    output=output if is_main else None,
                    mode=mode,
                    settings=settings,
                    ui=ui,
                    stop=stop,
                )
            )
        # Everything that would refuse does so before anything runs.
        for run in runs:
            try:
                run.check()
            except (Refused, RunDirError) as error:
                ui.error(str(error))
                return EXIT_REFUSED
        main_name = main.job.metadata.name
        for position, run in enumerate(runs):
            if stop.requested:
                assert stop.received is not None
                code = exit_code(stop.received)
                break
            if run.name != main_name:
                ui.note(f"running {run.name} first: {main_name} depends on it (spec.dependsOn)")
            outcome = run.run()
            if outcome.summary is not None:
                summaries.append(outcome.summary)
            code = outcome.code
            if code != 0:
                if run.name != main_name and code == 1:
                    ui.error(
                        f"dependency {run.name} did not succeed: {main_name} was not run "
                        f"({len(runs) - position - 1} job(s) left out)"
                    )
                break
    print_summaries(summaries, args.format)
    return code
