"""`microtask rerun NAME` on a cluster: a new MicrotaskJob that runs what NAME did not finish.

The new job is NAME's spec with `items: {fromJob: {name: NAME, indexes: failed}}`: the operator
resolves it to NAME's items and the indexes that did not succeed, and the records go to NAME's
result store, so `microtask results NAME` shows one merged job. It is named
`<base>-rerun-<n>` (the first free n), where a rerun of a rerun keeps the first job's base,
and it is labelled `microtask.dev/rerun-of: NAME`.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from typing import Any

from ..api.limits import MAX_NAME_LENGTH
from ..api.names import API_VERSION, KIND
from ..core.conditions import ConditionType
from .client import Body, Kube
from .errors import CliError
from .formatting import Progress, condition_true
from .options import guarded, program_name
from .watching import watch_job

#: Label of a rerun: the MicrotaskJob whose unfinished microtasks it runs.
RERUN_OF = "microtask.dev/rerun-of"
#: Names tried before giving up (each taken name costs one request).
MAX_RERUNS = 1000
_NUMBERED = re.compile(r"^(?P<base>.+)-rerun-\d+$")


def rerun_name(base: str, number: int) -> str:
    """`<base>-rerun-<number>`, the base shortened to keep the name within MAX_NAME_LENGTH."""
    suffix = f"-rerun-{number}"
    return base[: MAX_NAME_LENGTH - len(suffix)].rstrip("-") + suffix


def rerun_base(old: Body) -> str:
    """The name reruns of `old` are numbered after: a rerun's reruns continue its series."""
    meta = old.get("metadata") or {}
    name = str(meta.get("name") or "")
    match = _NUMBERED.match(name)
    if match and RERUN_OF in (meta.get("labels") or {}):
        return match.group("base")
    return name


def rerun_body(old: Body, name: str) -> Body:
    """The new MicrotaskJob: `old`'s spec reading its items from `old`, only the unfinished."""
    meta = old.get("metadata") or {}
    old_name = str(meta.get("name") or "")
    spec: dict[str, Any] = copy.deepcopy(dict(old.get("spec") or {}))
    spec["items"] = {"fromJob": {"name": old_name, "indexes": "failed"}}
    # `old` ran, so what it waited for was there; a dependency deleted since must not hold
    # the rerun.
    spec.pop("dependsOn", None)
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k != RERUN_OF}
    labels[RERUN_OF] = old_name
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }


def rerun_on_cluster(args: argparse.Namespace) -> int:
    """`args`: job (or name: the MicrotaskJob), namespace, context, watch, optionally timeout."""
    return guarded(lambda: _rerun(args))


def _rerun(args: argparse.Namespace) -> int:
    prog = program_name()
    # `microtask rerun JOB --failed` names it `job` (its `--name` picks a job of a local file).
    name = str(getattr(args, "job", None) or args.name)
    kube = Kube.from_args(args)
    namespace = kube.namespace
    old = kube.get_job(name, namespace)
    status = old.get("status") or {}
    progress = Progress.of(old)
    if not progress.finished:
        state = progress.phase or "not started yet"
        print(
            f"error: microtaskjob/{name} is {state}: only a finished MicrotaskJob (Succeeded or "
            f"Failed) can be rerun (`{prog} watch {name}` waits for it)",
            file=sys.stderr,
        )
        return 1
    invalid = condition_true(status, ConditionType.INVALID)
    if invalid is not None or not status.get("startTime"):
        why = (invalid or {}).get("message") or status.get("message") or "it never started"
        print(
            f"error: microtaskjob/{name} never ran ({why}): fix its spec and submit it again",
            file=sys.stderr,
        )
        return 1
    unfinished = progress.unfinished
    if unfinished == 0:
        print(
            f"microtaskjob/{name}: all {progress.succeeded} microtasks succeeded; nothing to rerun"
        )
        return 0
    created = _create(kube, old, namespace)
    new_name = str(created["metadata"]["name"])
    never_ran = max(unfinished - progress.failed, 0)
    print(
        f"microtaskjob.microtask.dev/{new_name} created: reruns {unfinished} microtasks of "
        f"{name} ({progress.failed} failed, {never_ran} never ran)"
    )
    sys.stdout.flush()
    if getattr(args, "watch", False):
        return watch_job(
            kube,
            new_name,
            namespace,
            timeout=getattr(args, "timeout", None),
            prog=prog,
            new_job=True,
        )
    return 0


def _create(kube: Kube, old: Body, namespace: str) -> Body:
    """Create the rerun under the first free number (a name taken meanwhile: the next one)."""
    base = rerun_base(old)
    taken = {
        str((item.get("metadata") or {}).get("name"))
        for item in kube.list_jobs(namespace).get("items") or []
    }
    number = 1
    for _ in range(MAX_RERUNS):
        name = rerun_name(base, number)
        number += 1
        if name in taken:
            continue
        try:
            return kube.create_job(rerun_body(old, name), namespace)
        except CliError as error:
            if error.reason != "AlreadyExists":
                raise
    raise CliError(f"error: {MAX_RERUNS} reruns of {base} exist already; delete some first")
