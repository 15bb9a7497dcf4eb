"""`microtask submit FILE [--watch] [--dry-run]`: check FILE here, then create what it holds.

FILE is validated on this machine first (every problem with its field path, exit 2), so a typo
never reaches the cluster. Then its ConfigMaps are created, before the MicrotaskJobs that read
them; a ConfigMap already there with the same data is left as it is. `--watch` follows the job
to its end, with the exit codes of `microtask watch`.
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import TYPE_CHECKING, Any

from ..kubecli.options import add_cluster_options, guarded, program_name, seconds

if TYPE_CHECKING:
    from ..api.loading import LoadResult
    from ..kubecli.client import Kube

EXIT_INVALID = 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        metavar="FILE",
        help="YAML file with MicrotaskJobs and the ConfigMaps they read ('-': stdin)",
    )
    parser.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="then follow the job to its end; the exit code tells how it ended (as `watch`)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="with --watch: stop watching after this long (exit 124; the job keeps running)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="let the API server check and admit everything, but store nothing",
    )
    add_cluster_options(parser)


def execute(args: argparse.Namespace) -> int:
    from ..api.loading import load_file

    result = load_file(args.file)
    if not result.ok:
        for problem in result.problems:
            print(f"invalid: {problem}", file=sys.stderr)
        return EXIT_INVALID
    if args.watch and len(result.jobs) != 1:
        print(
            f"error: --watch follows one MicrotaskJob; {result.source} holds {len(result.jobs)}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    return guarded(lambda: _submit(args, result))


def _submit(args: argparse.Namespace, result: LoadResult) -> int:
    from ..kubecli.client import Kube
    from ..kubecli.errors import CliError
    from ..kubecli.watching import watch_job

    prog = program_name()
    kube = Kube.from_args(args)
    dry = " (server dry run)" if args.dry_run else ""
    config_maps = [d.body for d in result.documents if d.kind == "ConfigMap"]
    jobs = [_without_status(loaded.document.body) for loaded in result.jobs]
    # Every name is checked before anything is created, so a clash leaves nothing half-made.
    for body in jobs:
        name, namespace = _placed(body, args, kube)
        try:
            kube.get_job(name, namespace)
        except CliError as error:
            if error.status != 404:
                raise
        else:
            raise _exists(name, namespace, prog)
    for body in config_maps:
        name, namespace = _placed(body, args, kube)
        current = kube.get_config_map(name, namespace)
        if current is not None:
            if _same_data(current, body):
                print(f"configmap/{name} unchanged")
                continue
            raise CliError(
                [
                    f'Error from server (AlreadyExists): configmaps "{name}" already exists in '
                    f'the namespace "{namespace}", with other data',
                    f"hint: rename the ConfigMap in {result.source}, or delete the old one "
                    f"(`kubectl delete configmap {name} -n {namespace}`) if nothing uses it",
                ],
                status=409,
                reason="AlreadyExists",
            )
        kube.create_config_map(body, namespace, dry_run=args.dry_run)
        print(f"configmap/{name} created{dry}")
    created: list[tuple[str, str]] = []
    for body in jobs:
        name, namespace = _placed(body, args, kube)
        _warn_missing_config_map(kube, body, namespace, config_maps)
        try:
            kube.create_job(body, namespace, dry_run=args.dry_run)
        except CliError as error:
            if error.reason == "AlreadyExists":  # created by someone else since the check
                raise _exists(name, namespace, prog) from None
            raise
        print(f"microtaskjob.microtask.dev/{name} created{dry}")
        created.append((name, namespace))
    sys.stdout.flush()
    if args.watch and not args.dry_run:
        name, namespace = created[0]
        return watch_job(kube, name, namespace, timeout=args.timeout, prog=prog, new_job=True)
    return 0


def _without_status(body: Any) -> dict[str, Any]:
    plain = copy.deepcopy(dict(body))
    plain.pop("status", None)
    return plain


def _placed(body: dict[str, Any], args: argparse.Namespace, kube: Kube) -> tuple[str, str]:
    """(name, namespace) of an object of the file; its own namespace must agree with `-n`."""
    from ..kubecli.errors import CliError

    meta = body.setdefault("metadata", {})
    own = meta.get("namespace")
    if own and args.namespace and own != args.namespace:
        raise CliError(
            f'error: the namespace from the provided object "{own}" does not match the '
            f"namespace \"{args.namespace}\". You must pass '--namespace={own}' to perform "
            "this operation."
        )
    namespace = str(own or kube.namespace)
    meta["namespace"] = namespace
    return str(meta.get("name") or ""), namespace


def _exists(name: str, namespace: str, prog: str) -> Exception:
    from ..kubecli.errors import CliError

    return CliError(
        [
            f'Error from server (AlreadyExists): microtaskjobs.microtask.dev "{name}" already '
            f'exists in the namespace "{namespace}"',
            f"hint: `{prog} delete {name}` removes it (its Jobs and pods too), or give the new "
            "one another metadata.name",
        ],
        status=409,
        reason="AlreadyExists",
    )


def _same_data(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return (current.get("data") or {}) == (wanted.get("data") or {}) and (
        current.get("binaryData") or {}
    ) == (wanted.get("binaryData") or {})


def _warn_missing_config_map(
    kube: Kube, body: dict[str, Any], namespace: str, in_file: list[dict[str, Any]]
) -> None:
    """A configMapRef to a ConfigMap that is neither in the file nor on the cluster: say so."""
    from ..kubecli.errors import CliError

    ref = ((body.get("spec") or {}).get("items") or {}).get("configMapRef") or {}
    wanted = ref.get("name")
    if not wanted or any((d.get("metadata") or {}).get("name") == wanted for d in in_file):
        return
    try:
        found = kube.get_config_map(str(wanted), namespace)
    except CliError:
        return  # not allowed to look: the operator will tell
    if found is None:
        print(
            f'warning: ConfigMap "{wanted}" (spec.items.configMapRef) does not exist in the '
            f'namespace "{namespace}" yet; the job cannot start until it does',
            file=sys.stderr,
        )
