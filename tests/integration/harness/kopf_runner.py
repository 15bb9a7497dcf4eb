"""Run a kopf operator in a background thread against an emulated cluster, capturing its logs.

The operator gets its own event loop and talks to the emulator over HTTP like it would talk
to a real API server. Every log record of the ``kopf`` logger tree is kept, so a test can
fail on any warning or error kopf raised about the API (``KopfRunner.problems``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import kopf

from .cluster import Cluster

__all__ = ["THREAD_ARTEFACTS", "KopfRunner"]

# Kopf warns that it cannot handle OS signals outside the main thread: true, and harmless
# here (the runner stops it with a stop flag), so it is not counted as a problem.
THREAD_ARTEFACTS = [re.compile(r"OS signals are ignored")]


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_records:
            self.records.append(record)


class KopfRunner:
    """``with KopfRunner(cluster, registry=...) as op: ...`` runs kopf until the block ends."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        registry: kopf.OperatorRegistry | None = None,
        namespaces: Sequence[str] = ("default",),
        clusterwide: bool = False,
        configure: Callable[[kopf.OperatorSettings], None] | None = None,
        memo: Any = None,
        login: bool = True,
        startup_timeout: float = 15.0,
        stop_timeout: float = 15.0,
        log_level: int = logging.INFO,
    ) -> None:
        self.cluster = cluster
        self.registry = registry if registry is not None else kopf.OperatorRegistry()
        self.namespaces = list(namespaces)
        self.clusterwide = clusterwide
        self.settings = kopf.OperatorSettings()
        # Fast, quiet defaults for tests; ``configure`` may override any of them.
        self.settings.watching.server_timeout = 60
        self.settings.networking.request_timeout = 30
        self.settings.scanning.disabled = False
        if configure is not None:
            configure(self.settings)
        self.memo = memo
        self.login = login
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.log_level = log_level
        self._collector = _Collector()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._saved_level = logging.NOTSET

    @property
    def records(self) -> list[logging.LogRecord]:
        """Every kopf log record so far."""
        return list(self._collector.records)

    @property
    def problems(self) -> list[logging.LogRecord]:
        """Kopf records at WARNING or above (except artefacts of running in a thread)."""
        return [
            r
            for r in self.records
            if r.levelno >= logging.WARNING
            and not any(p.search(r.getMessage()) for p in THREAD_ARTEFACTS)
        ]

    def assert_clean(self, allow: Iterable[str | re.Pattern[str]] = ()) -> None:
        """Fail if kopf logged a warning or an error (except the ``allow``-ed messages)."""
        patterns = [re.compile(re.escape(a)) if isinstance(a, str) else a for a in allow]
        bad = [r for r in self.problems if not any(p.search(r.getMessage()) for p in patterns)]
        if bad:
            lines = "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in bad)
            raise AssertionError(f"kopf logged {len(bad)} problem(s):\n{lines}")

    def __enter__(self) -> KopfRunner:
        kopf_logger = logging.getLogger("kopf")
        self._saved_level = kopf_logger.level
        kopf_logger.setLevel(self.log_level)
        kopf_logger.addHandler(self._collector)
        if self.login:
            url = self.cluster.url

            @kopf.on.login(registry=self.registry)
            def _login(**_: Any) -> kopf.ConnectionInfo:
                return kopf.ConnectionInfo(
                    server=url, token="emulated-token", scheme="Bearer", default_namespace="default"
                )

        self._thread = threading.Thread(target=self._run, name="kopf-operator", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.startup_timeout):
            self._stop.set()
            self._thread.join(self.stop_timeout)
            raise TimeoutError(
                f"kopf did not become ready in {self.startup_timeout}s: {self._error!r}"
            )
        return self

    def _run(self) -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=self.registry,
                    settings=self.settings,
                    standalone=True,
                    clusterwide=self.clusterwide,
                    namespaces=[] if self.clusterwide else self.namespaces,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                    memo=self.memo,
                )
            )
        except BaseException as exc:  # surfaced by __enter__/__exit__
            self._error = exc
            self._ready.set()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the operator and join its thread (bounded)."""
        self._stop.set()
        try:
            if self._thread is not None:
                self._thread.join(self.stop_timeout)
                if self._thread.is_alive():
                    raise RuntimeError("the kopf operator thread did not stop")
        finally:
            kopf_logger = logging.getLogger("kopf")
            kopf_logger.removeHandler(self._collector)
            kopf_logger.setLevel(self._saved_level)
        if self._error is not None:
            raise RuntimeError("the kopf operator crashed") from self._error
