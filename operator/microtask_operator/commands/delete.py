"""`microtask delete NAME... [--wait]`: delete MicrotaskJobs, their Jobs and pods with them.

Deletion is in the foreground: the MicrotaskJob stays (with a deletionTimestamp) until the
garbage collector has deleted its Jobs and their pods, so `--wait` returns when everything is
gone. The operator removes its finalizer as the job goes; when it is not running, `--wait`
says so instead of waiting in silence.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..kubecli.options import add_cluster_options, guarded, print_lines, seconds

if TYPE_CHECKING:
    from ..kubecli.client import Kube

#: After this long, `--wait` says what still holds the job.
HINT_AFTER = 15.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME", help="MicrotaskJobs to delete")
    parser.add_argument(
        "--wait",
        action="store_true",
        help="return once each job, its Jobs and their pods are gone",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="with --wait: give up after this long (exit 1; the deletion goes on)",
    )
    add_cluster_options(parser)


def execute(args: argparse.Namespace) -> int:
    return guarded(lambda: _delete(args))


def _delete(args: argparse.Namespace) -> int:
    from ..kubecli.client import Kube
    from ..kubecli.errors import CliError

    kube = Kube.from_args(args)
    namespace = kube.namespace
    code = 0
    deleted: list[tuple[str, str]] = []
    for name in args.names:
        try:
            answer = kube.delete_job(name, namespace)
        except CliError as error:
            print_lines(error.lines)
            code = 1
            continue
        print(f'microtaskjob.microtask.dev "{name}" deleted')
        deleted.append((name, str((answer.get("metadata") or {}).get("uid") or "")))
    sys.stdout.flush()
    if args.wait:
        deadline = time.monotonic() + args.timeout if args.timeout else None
        for name, uid in deleted:
            if not wait_gone(kube, name, namespace, uid=uid, deadline=deadline, say=_say):
                print(
                    f'error: timed out waiting for microtaskjob "{name}" to be deleted '
                    "(the deletion goes on)",
                    file=sys.stderr,
                )
                return 1
    return code


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def wait_gone(
    kube: Kube,
    name: str,
    namespace: str,
    *,
    uid: str,
    deadline: float | None,
    say: Callable[[str], None],
) -> bool:
    """Until the MicrotaskJob `name` (of `uid`, when known) is gone; False at the deadline.

    A watch on the name, resumed when the server ends it, re-listed on 410 Gone.
    """
    from ..kubecli.errors import CliError

    selector = f"metadata.name={name}"
    started = time.monotonic()
    hinted = False
    version: str | None = None
    body: dict[str, Any] = {}
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        if not hinted and time.monotonic() - started >= HINT_AFTER and body:
            hinted = True
            say(_holding(name, body))
        try:
            if version is None:
                listing = kube.list_jobs(namespace, field_selector=selector)
                items = [i for i in listing.get("items") or [] if _same(i, uid)]
                if not items:
                    return True
                body = items[0]
                version = str(listing["metadata"]["resourceVersion"])
            seconds = int(min(HINT_AFTER, left if left is not None else HINT_AFTER)) + 1
            opened = time.monotonic()
            for event in kube.watch_jobs(
                namespace,
                field_selector=selector,
                resource_version=version,
                timeout_seconds=seconds,
            ):
                obj = event.get("object") or {}
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if event.get("type") == "BOOKMARK":
                    continue
                if event.get("type") == "DELETED" or not _same(obj, uid):
                    return True
                body = obj
        except CliError as error:
            if error.status != 410:
                raise
            version = None
            continue
        if time.monotonic() - opened < 0.5:  # a server that ends watches at once: no busy loop
            time.sleep(0.5)


def _same(body: dict[str, Any], uid: str) -> bool:
    return not uid or (body.get("metadata") or {}).get("uid") == uid


def _holding(name: str, body: dict[str, Any]) -> str:
    """What keeps a deleted MicrotaskJob in place, in words."""
    reasons = []
    for finalizer in (body.get("metadata") or {}).get("finalizers") or []:
        if finalizer == "foregroundDeletion":
            reasons.append("foregroundDeletion (its Jobs and pods are being deleted)")
        elif finalizer.startswith("microtask.dev/"):
            reasons.append(f"{finalizer} (the operator removes it: is it running?)")
        else:
            reasons.append(finalizer)
    held = ", ".join(reasons) or "nothing visible yet"
    return f"still waiting for microtaskjob/{name} to go; finalizers: {held}"
