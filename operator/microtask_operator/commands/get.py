"""`microtask get [NAME] [-o wide|json|yaml|name] [-A]`: MicrotaskJobs as a kubectl-style table.

The table adds what `kubectl get mtj` cannot compute: the rate since the start and an ETA. For
one NAME, the status message, the kinds of failure and the conditions worth reading follow.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..kubecli.options import add_cluster_options, guarded

OUTPUTS = ("wide", "json", "yaml", "name")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help="one MicrotaskJob (default: all)")
    parser.add_argument(
        "-o",
        "--output",
        choices=OUTPUTS,
        help="wide: more columns; json, yaml: the objects; name: resource/name lines",
    )
    parser.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="list the MicrotaskJobs of every namespace",
    )
    add_cluster_options(parser)


def execute(args: argparse.Namespace) -> int:
    if args.all_namespaces and args.name:
        print(
            "error: a MicrotaskJob cannot be retrieved by name across all namespaces",
            file=sys.stderr,
        )
        return 1
    return guarded(lambda: _get(args))


def _get(args: argparse.Namespace) -> int:
    import time

    from ..api.names import API_VERSION, GROUP, KIND, SINGULAR
    from ..kubecli.client import Kube
    from ..kubecli.formatting import job_details, job_table

    kube = Kube.from_args(args)
    namespace = None if args.all_namespaces else kube.namespace
    if args.name:
        bodies = [kube.get_job(args.name, namespace)]
    else:
        bodies = list(kube.list_jobs(namespace).get("items") or [])
    for body in bodies:  # list items may come without their type
        body.setdefault("apiVersion", API_VERSION)
        body.setdefault("kind", KIND)
    if args.output in ("json", "yaml"):
        document: Any = (
            bodies[0]
            if args.name
            else {"apiVersion": "v1", "kind": "List", "items": bodies, "metadata": {}}
        )
        _dump(document, args.output)
        return 0
    if args.output == "name":
        for body in bodies:
            print(f"{SINGULAR}.{GROUP}/{body['metadata']['name']}")
        return 0
    if not bodies:
        where = "" if namespace is None else f" in namespace {namespace}"
        print(f"No MicrotaskJobs found{where}.", file=sys.stderr)
        return 0
    now = time.time()
    print(job_table(bodies, now, wide=args.output == "wide", all_namespaces=args.all_namespaces))
    if args.name and args.output is None:
        details = job_details(bodies[0])
        if details:
            print()
            print("\n".join(details))
    return 0


def _dump(document: Any, output: str) -> None:
    if output == "json":
        import json

        print(json.dumps(document, indent=4, sort_keys=True, ensure_ascii=False))
    else:
        import yaml

        print(yaml.safe_dump(document, sort_keys=True, allow_unicode=True), end="")
