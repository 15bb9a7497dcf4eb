"""`microtask operator`: run the operator against the cluster of the current kubeconfig.

Inside a pod it uses the pod's service account; elsewhere `KUBECONFIG` or ~/.kube/config.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch this namespace (repeatable; default: MICROTASK_NAMESPACES, else all)",
    )
    parser.add_argument("--resync-seconds", type=float, help="default: 30")
    parser.add_argument("--debounce-seconds", type=float, help="default: 0.2")
    parser.add_argument("--metrics-port", type=int, help="default: 8080 (0: off)")
    parser.add_argument("--health-port", type=int, help="default: 8081 (0: off)")
    parser.add_argument("--peering", help="kopf peering name, for more than one replica")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def execute(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses
    import logging
    import sys

    from ..adapter.config import ConfigError, OperatorConfig
    from ..adapter.runtime import run_operator
    from ..settings import Settings, SettingsError

    try:
        config = OperatorConfig.from_env()
        settings = Settings.from_env()
    except (ConfigError, SettingsError) as error:
        print(f"microtask operator: {error}", file=sys.stderr)
        return 2
    overrides = {
        "namespaces": tuple(args.namespaces) if args.namespaces else None,
        "resync_seconds": args.resync_seconds,
        "debounce_seconds": args.debounce_seconds,
        "metrics_port": args.metrics_port,
        "health_port": args.health_port,
        "peering": args.peering,
    }
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(run_operator(config, settings))
    return 0
