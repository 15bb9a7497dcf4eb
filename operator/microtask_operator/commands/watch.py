"""`microtask watch NAME [--timeout SECONDS]`: follow a MicrotaskJob to its end.

A live progress bar on stderr (plain lines when stderr is not a terminal), failures as they
happen, a summary at the end. Exit code: 0 Succeeded, 1 Failed, 2 invalid, 124 on --timeout,
130 on Ctrl-C; in the last two cases the job keeps running on the cluster.
"""

from __future__ import annotations

import argparse

from ..kubecli.options import add_cluster_options, guarded, program_name, seconds


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the MicrotaskJob")
    parser.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="stop watching after this long (exit 124; the job keeps running)",
    )
    add_cluster_options(parser)


def execute(args: argparse.Namespace) -> int:
    from ..kubecli.client import Kube
    from ..kubecli.watching import watch_job

    return guarded(
        lambda: watch_job(
            Kube.from_args(args), args.name, timeout=args.timeout, prog=program_name()
        )
    )
