"""A small JSON client of the Kubernetes API, sync and async, for the harness's own calls.

The operator under test uses the official clients; the harness (our kubelet, the test helpers)
speaks plain JSON over HTTP so that what it does is visible and nothing hides a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["ApiError", "AsyncApi", "SyncApi"]

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer of the API server, with its ``Status`` reason and message."""

    def __init__(self, code: int, body: Any) -> None:
        status = body if isinstance(body, dict) else {}
        self.code = code
        self.reason = str(status.get("reason") or "")
        self.message = str(status.get("message") or body)
        self.body = status
        super().__init__(f"{code} {self.reason}: {self.message}")


def _query(params: Mapping[str, Any] | None) -> str:
    if not params:
        return ""
    clean = {
        k: str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in params.items()
        if v is not None
    }
    return "?" + urllib.parse.urlencode(clean) if clean else ""


def _ssl_context(ca_file: Path | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=str(ca_file)) if ca_file else None


class SyncApi:
    """Blocking JSON calls (for the test thread)."""

    def __init__(self, server: str, token: str, ca_file: Path | None) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self._context = _ssl_context(ca_file)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.server + path + _query(params), data=data, method=method
        )
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._context) as reply:
                raw = reply.read()
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            raise ApiError(error.code, payload) from None
        return json.loads(raw) if raw else None


class AsyncApi:
    """Non-blocking JSON calls and watches (for our kubelet's event loop)."""

    def __init__(self, server: str, token: str, ca_file: Path | None) -> None:
        self.server = server.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._context = _ssl_context(ca_file)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncApi:
        connector = aiohttp.TCPConnector(ssl=self._context or False, limit=20)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, timeout=aiohttp.ClientTimeout(total=None)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the client as `async with`")
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self.session.request(
            method,
            self.server + path + _query(params),
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as reply:
            raw = await reply.read()
            if reply.status >= 400:
                try:
                    payload: Any = json.loads(raw)
                except ValueError:
                    payload = raw.decode(errors="replace")
                raise ApiError(reply.status, payload)
        return json.loads(raw) if raw else None

    async def watch(
        self, path: str, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events (``{"type": ..., "object": ...}``) until the server ends the stream."""
        query = {**(params or {}), "watch": "true", "allowWatchBookmarks": "true"}
        async with self.session.get(
            self.server + path + _query(query),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as reply:
            if reply.status >= 400:
                raise ApiError(reply.status, await reply.text())
            while True:
                line = await reply.content.readline()
                if not line:
                    return
                with contextlib.suppress(ValueError):
                    yield json.loads(line)

    async def sleep_or(self, event: asyncio.Event, seconds: float) -> None:
        """Sleep ``seconds`` or until ``event`` is set, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()
