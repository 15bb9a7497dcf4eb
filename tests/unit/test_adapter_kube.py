"""The operator's own API calls: what they leave behind in the client's connection pool."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import urllib3
from microtask_operator.adapter.kube import KubeApi
from microtask_operator.metrics import Metrics


class Pool:
    """Stands in for urllib3's connection pool: records the connections given back."""

    def __init__(self) -> None:
        self.returned: list[object] = []

    def _put_conn(self, connection: object) -> None:
        self.returned.append(connection)


def _answer(pool: Pool, connection: object, body: bytes) -> urllib3.HTTPResponse:
    """An answer as the client returns it with `_preload_content=False`: not read yet."""
    return urllib3.HTTPResponse(
        body=io.BytesIO(body),
        status=200,
        preload_content=False,
        original_response=None,
        pool=pool,  # type: ignore[arg-type]
        connection=connection,  # type: ignore[arg-type]
    )


def test_an_unparsed_answer_is_read_and_its_connection_given_back() -> None:
    pool, connection = Pool(), object()
    api = KubeApi(Metrics())
    answer = _answer(pool, connection, b'{"kind": "Job"}')

    async def call() -> Any:
        return await api._call("create", "job ns/a", lambda: answer)

    result = asyncio.run(call())
    # Given back to the pool: the next call reuses it rather than opening a TLS connection.
    assert pool.returned == [connection]
    assert result.data == b'{"kind": "Job"}'  # still readable by callers that parse it
