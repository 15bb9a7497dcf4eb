"""Start the operator: metrics server, kopf with our registry, until stopped."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from typing import Any

import kopf

from ..metrics import Metrics
from ..settings import Settings
from .config import OperatorConfig
from .handlers import OperatorState, build_registry

#: kopf's line for each watch event our event handlers saw (one per change of every shard's Job
#: and pod): at a hundred MicrotaskJobs, thousands a minute of lines that say nothing.
ROUTINE = re.compile(
    r"Handler '[^']*\.(job_changed|pod_changed|node_changed|job_spec_changed)' succeeded\."
)


class QuietRoutine(logging.Filter):
    """Drops kopf's "Handler ... succeeded." of the watch-event handlers, unless debugging."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        return not ROUTINE.fullmatch(record.getMessage())


async def run_operator(
    config: OperatorConfig,
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    serve_metrics: bool = True,
) -> None:
    metrics = metrics or Metrics()
    if serve_metrics and config.metrics_port:
        metrics.serve(config.metrics_port)
    registry = build_registry(OperatorState(settings=settings, config=config, metrics=metrics))
    kwargs: dict[str, Any] = {}
    if config.health_port:
        kwargs["liveness_endpoint"] = f"http://0.0.0.0:{config.health_port}/healthz"
    kopf_objects = logging.getLogger("kopf.objects")
    quiet = QuietRoutine()
    kopf_objects.addFilter(quiet)
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=not config.namespaces,
            namespaces=list(config.namespaces),
            standalone=config.peering is None,
            peering_name=config.peering,
            # Peers of equal priority pause each other; the newest replica takes over instead.
            priority=int(time.time() * 1000) % 2**31,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            **kwargs,
        )
    finally:
        kopf_objects.removeFilter(quiet)
