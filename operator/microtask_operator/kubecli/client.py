"""The few API calls the cluster commands make, as plain JSON, each failure a `CliError`.

Bodies stay dictionaries exactly as the server sent them (no client models in between), so
`get -o json` prints what `kubectl get -o json` would and nothing is lost on the way. Every
call carries a timeout: a server that accepts the connection and then says nothing does not
hang a command forever.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from ..api.names import GROUP, PLURAL, VERSION
from .config import Connection, connect
from .errors import CliError, Request, api_error, connection_error

#: kubectl's name of the resource, as it appears in messages (`microtaskjobs.microtask.dev "x"`).
JOBS = f"{PLURAL}.{GROUP}"
#: (connect, read) seconds of one call.
CALL_TIMEOUT = (10.0, 60.0)
#: Seconds the server keeps one watch open before ending it (the client then watches again).
WATCH_SECONDS = 45

Body = dict[str, Any]


class Kube:
    """The API of the chosen kubeconfig context, with the namespace commands default to."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.namespace = connection.namespace
        self.server = connection.server
        self._custom = client.CustomObjectsApi(connection.api)
        self._core = client.CoreV1Api(connection.api)
        self._streams: set[Any] = set()
        self._streams_lock = threading.Lock()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Kube:
        """From `--context` and `-n/--namespace` (KubeconfigError when unusable)."""
        return cls(connect(getattr(args, "context", None), getattr(args, "namespace", None)))

    # --- MicrotaskJobs -------------------------------------------------------------------------

    def get_job(self, name: str, namespace: str | None = None) -> Body:
        ns = namespace or self.namespace
        return self._call(
            Request("get", JOBS, name, ns),
            self._custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            ns,
            PLURAL,
            name,
        )

    def list_jobs(
        self,
        namespace: str | None,
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
    ) -> Body:
        """The list (with its resourceVersion); `namespace` None lists every namespace."""
        selectors = _selectors(field_selector, label_selector)
        if namespace is None:
            return self._call(
                Request("list", JOBS),
                self._custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                PLURAL,
                **selectors,
            )
        return self._call(
            Request("list", JOBS, namespace=namespace),
            self._custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            **selectors,
        )

    def create_job(self, body: Body, namespace: str, *, dry_run: bool = False) -> Body:
        name = str((body.get("metadata") or {}).get("name") or "")
        return self._call(
            Request("create", JOBS, name, namespace),
            self._custom.create_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            body,
            **_dry_run(dry_run),
        )

    def delete_job(self, name: str, namespace: str, *, propagation: str = "Foreground") -> Body:
        return self._call(
            Request("delete", JOBS, name, namespace),
            self._custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            propagation_policy=propagation,
        )

    def watch_jobs(
        self,
        namespace: str,
        *,
        field_selector: str,
        resource_version: str,
        timeout_seconds: int = WATCH_SECONDS,
    ) -> Iterator[Body]:
        """Events (`{"type", "object"}`) after `resource_version`, until the server ends it."""
        return self._stream(
            Request("watch", JOBS, namespace=namespace),
            self._custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            field_selector=field_selector,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
        )

    # --- ConfigMaps ----------------------------------------------------------------------------

    def get_config_map(self, name: str, namespace: str) -> Body | None:
        try:
            return self._call(
                Request("get", "configmaps", name, namespace),
                self._core.read_namespaced_config_map,
                name,
                namespace,
            )
        except CliError as error:
            if error.status == 404:
                return None
            raise

    def create_config_map(self, body: Body, namespace: str, *, dry_run: bool = False) -> Body:
        name = str((body.get("metadata") or {}).get("name") or "")
        return self._call(
            Request("create", "configmaps", name, namespace),
            self._core.create_namespaced_config_map,
            namespace,
            body,
            **_dry_run(dry_run),
        )

    # --- Events --------------------------------------------------------------------------------

    def list_events(self, namespace: str, *, field_selector: str) -> Body:
        return self._call(
            Request("list", "events", namespace=namespace),
            self._core.list_namespaced_event,
            namespace,
            field_selector=field_selector,
        )

    def watch_events(
        self,
        namespace: str,
        *,
        field_selector: str,
        resource_version: str,
        timeout_seconds: int = WATCH_SECONDS,
    ) -> Iterator[Body]:
        return self._stream(
            Request("watch", "events", namespace=namespace),
            self._core.list_namespaced_event,
            namespace,
            field_selector=field_selector,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
        )

    # --- the mechanics -------------------------------------------------------------------------

    def _open(
        self,
        request: Request,
        call: Callable[..., Any],
        *args: Any,
        timeout: tuple[float, float],
        **kwargs: Any,
    ) -> Any:
        """The raw response of one call (status checked), or a CliError."""
        try:
            return call(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
        except ApiException as error:
            if not error.status:  # the client's way of saying TLS failed
                raise connection_error(str(error.reason or error), self.server) from None
            raise api_error(int(error.status), error.body, request) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise connection_error(error, self.server) from None

    def _call(
        self,
        request: Request,
        call: Callable[..., Any],
        *args: Any,
        timeout: tuple[float, float] = CALL_TIMEOUT,
        **kwargs: Any,
    ) -> Body:
        response = self._open(request, call, *args, timeout=timeout, **kwargs)
        try:
            data = response.data
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise connection_error(error, self.server) from None
        finally:
            response.release_conn()
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            raise CliError(
                f"error: the API server at {self.server} answered with something that is not "
                "JSON: is the kubeconfig's server a Kubernetes API server?"
            ) from None
        return parsed if isinstance(parsed, dict) else {}

    def _stream(
        self,
        request: Request,
        call: Callable[..., Any],
        *args: Any,
        timeout_seconds: int,
        **kwargs: Any,
    ) -> Iterator[Body]:
        # The read timeout outlasts the server's own end of the watch: silence beyond it means
        # the connection is gone, not that nothing happened.
        response = self._open(
            request,
            call,
            *args,
            watch=True,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            timeout=(CALL_TIMEOUT[0], timeout_seconds + 30.0),
            **kwargs,
        )
        with self._streams_lock:
            self._streams.add(response)
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise api_error(int(status.get("code") or 500), status, request)
                yield event
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise connection_error(error, self.server) from None
        finally:
            with self._streams_lock:
                self._streams.discard(response)
            response.close()  # a watch left early must not go back to the pool half-read
            response.release_conn()

    def end_watches(self) -> None:
        """End the watches open in other threads: their reads return at once.

        A thread still inside a TLS read when the interpreter exits can crash it, so whoever
        started watches in threads ends them (and joins the threads) before returning.
        """
        with self._streams_lock:
            open_now = list(self._streams)
        for response in open_now:
            connection = getattr(response, "connection", None) or getattr(
                response, "_connection", None
            )
            sock = getattr(connection, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _selectors(field_selector: str | None, label_selector: str | None) -> dict[str, Any]:
    found = {"field_selector": field_selector, "label_selector": label_selector}
    return {key: value for key, value in found.items() if value}


def _dry_run(dry_run: bool) -> dict[str, Any]:
    """Server-side dry run: every admission and validation step, nothing stored."""
    return {"dry_run": "All"} if dry_run else {}
