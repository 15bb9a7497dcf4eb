"""A result store in S3-compatible object storage: ``s3://bucket/prefix``.

The reading side of the runner's S3 sink (``microtask_runner.s3``): the same URL syntax, keys,
endpoint and credential settings. boto3 is needed (the ``s3`` extra) and imported only when a
store is made. Every failure is a ``StoreError`` naming the store and what is wrong (no such
bucket, access denied, endpoint unreachable), never a botocore traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from typing import Any, BinaryIO, NoReturn

from .storeerrors import ObjectNotFound, StoreError, check_name, check_prefix

__all__ = ["S3Store"]

S3_INSTALL_HINT = "pip install 'microtask[s3]'"
#: How many keys one listing request asks for (S3's own maximum).
PAGE_SIZE = 1000
#: Reads of an object go through a buffer of this size: big objects are streamed, not loaded.
READ_BUFFER = 1024 * 1024


class _Body(io.RawIOBase):
    """An object's streaming body as a raw stream, whose errors are StoreErrors."""

    def __init__(self, body: Any, describe: Any) -> None:
        super().__init__()
        self._body = body
        self._describe = describe

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._body.read(len(buffer))
        except Exception as error:
            raise self._describe(error) from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):  # a connection already gone: nothing to release
                self._body.close()
        super().close()


class S3Store:
    """The store at ``s3://bucket/prefix``.

    Settings left out come from the environment as for the runner: the endpoint from
    ``MICROTASK_S3_ENDPOINT``, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, the region
    from ``AWS_REGION`` or ``AWS_DEFAULT_REGION``, credentials from boto3's default chain
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, a role). Making a store does
    no request; the first call shows whether the store is there.
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        page_size: int = PAGE_SIZE,
        max_attempts: int = 3,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        try:
            # The runner's module: one URL syntax and one client set-up for both sides.
            from microtask_runner import s3
        except ImportError as error:
            raise StoreError(
                f"{url}: reading an S3 store needs boto3, the s3 extra: {S3_INSTALL_HINT} ({error})"
            ) from None
        self._s3 = s3
        try:
            self.bucket, self.prefix = s3.parse_s3_url(url)
            endpoint = endpoint or s3.first_set(os.environ, s3.ENDPOINT_VARIABLES)
            self.endpoint = s3.check_endpoint(endpoint) if endpoint else None
        except ValueError as error:
            raise StoreError(str(error)) from None
        if (access_key is None) != (secret_key is None):
            raise StoreError(f"{url}: give both the access key and the secret key, or neither")
        if page_size < 1:
            raise StoreError(f"page_size must be at least 1, not {page_size}")
        self.page_size = min(page_size, PAGE_SIZE)
        self._url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self._root = f"{self.prefix}/" if self.prefix else ""
        self._bucket_seen = False
        try:
            self._client = s3.client_for(
                endpoint=self.endpoint,
                access_key=access_key,
                secret_key=secret_key,
                region=region or s3.first_set(os.environ, s3.REGION_VARIABLES),
                max_attempts=max_attempts,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
            )
        except Exception as error:  # a broken AWS config file, an unknown region name, ...
            raise StoreError(f"{self._url}: cannot set up the S3 client: {error}") from None

    @property
    def url(self) -> str:
        """``s3://bucket/prefix`` (no slash at the end)."""
        return self._url

    # ------------------------------------------------------------------ errors

    def _where(self) -> str:
        return f"the endpoint {self.endpoint}" if self.endpoint else "AWS S3"

    def _error(self, error: BaseException, doing: str, name: str | None = None) -> StoreError:
        """The StoreError for an exception of a boto3 call made while ``doing``."""
        if isinstance(error, StoreError):
            return error
        code, status = self._code(error)
        if code == "NoSuchBucket" or (status == 404 and name is None):
            return StoreError(
                f"{self.url}: the bucket {self.bucket!r} does not exist at {self._where()}"
            )
        if code in ("NoSuchKey", "NotFound") or status == 404:
            return ObjectNotFound(f"{self.url}: no object {name}")
        reason, _ = self._s3.describe_error(error)
        if self._s3.is_connection_error(error):
            return StoreError(f"{self.url}: cannot reach {self._where()} ({reason})")
        if status == 403 and not reason.startswith("access denied"):
            reason = "access denied (check the credentials and the bucket's policy)"
        elif reason.startswith("access denied") and "(check" not in reason:
            reason += "; check the credentials and the bucket's policy"
        return StoreError(f"{self.url}: {doing}: {reason}")

    @staticmethod
    def _code(error: BaseException) -> tuple[str, int | None]:
        response = getattr(error, "response", None)
        if not isinstance(response, dict):
            return "", None
        code = str(response.get("Error", {}).get("Code") or "")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code, status if isinstance(status, int) else None

    def _raise(self, error: BaseException, doing: str, name: str | None = None) -> NoReturn:
        raise self._error(error, doing, name) from None

    def _check_bucket(self) -> None:
        """Tell a missing bucket from a missing object (a HEAD answers 404 for both)."""
        if self._bucket_seen:
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as error:
            self._raise(error, "checking the bucket")
        self._bucket_seen = True

    def _key(self, name: str) -> str:
        return self._root + check_name(name)

    # ------------------------------------------------------------------ Store

    def list(self, prefix: str) -> Iterator[str]:
        """Names under ``prefix`` (``records/``), sorted, fetched a page at a time as iterated."""
        check_prefix(prefix)
        return self._list(self._root + prefix)

    def _list(self, key_prefix: str) -> Iterator[str]:
        start = len(self._root)
        token: str | None = None
        while True:
            request: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": key_prefix,
                "MaxKeys": self.page_size,
            }
            if token is not None:
                request["ContinuationToken"] = token
            try:
                page = self._client.list_objects_v2(**request)
            except Exception as error:
                self._raise(error, "listing objects")
            self._bucket_seen = True
            # S3 lists keys in UTF-8 byte order, which is the order of the names as strings.
            for item in page.get("Contents", ()):
                key = item["Key"]
                if not key.endswith("/"):  # a "folder" marker of some tools, not a file
                    yield key[start:]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def open(self, name: str) -> BinaryIO:
        """A buffered stream of the object, read as it is consumed (lines iterate as for a file)."""
        key = self._key(name)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            self._raise(error, f"reading {name}", name)
        self._bucket_seen = True

        def describe(error: BaseException) -> StoreError:
            reason, _ = self._s3.describe_error(error)
            return StoreError(f"{self.url}: reading {name} failed midway: {reason}")

        reader = io.BufferedReader(_Body(response["Body"], describe), buffer_size=READ_BUFFER)
        return reader

    def exists(self, name: str) -> bool:
        key = self._key(name)
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            code, status = self._code(error)
            if status == 404 or code in ("NoSuchKey", "NotFound", "404"):
                self._check_bucket()
                return False
            self._raise(error, f"looking for {name}", name)
        self._bucket_seen = True
        return True

    def put(self, name: str, data: bytes) -> None:
        """Write the object whole."""
        key = self._key(name)
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as error:
            self._raise(error, f"writing {name}", name)
        self._bucket_seen = True
