"""The S3 sink: the runner's records and log copy in an S3-compatible object store.

``MICROTASK_OUTPUT_URL=s3://bucket/prefix`` makes each store file an object
``prefix/<name>`` of ``bucket``. Objects cannot be appended to, so appended bytes are spooled in
local temporary files and each changed file is uploaded whole (one PUT of the object):

* ``flush(final=False)`` (after every microtask) only marks what was appended so far as ready;
  a background thread uploads it at most every ``interval`` seconds (10 by default), so the
  runner never waits for the store and a killed pod loses at most about that much;
* ``flush(final=True)`` uploads everything before it returns, retrying for a bounded time.

Transient errors (a connection refused or reset, a timeout, 5xx, throttling) are retried with
backoff; an interim upload that keeps failing is tried again at each interval, for as long as
the shard runs (a store back after an outage gets everything). The sink raises
(``S3UploadError``, from the next call) when it gives up: a permanent error (no such bucket,
access denied), or a final upload that does not get through in ``final_timeout``. As
``output.Sink`` asks, it never writes to stdout or stderr itself.

The spool lives in the temporary directory (``TMPDIR``, else /tmp): a pod with a read-only root
file system needs a writable volume there (an emptyDir).

Endpoint and credentials come from ``env`` (the runner's environment), boto3's names:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` or
``AWS_DEFAULT_REGION``, and ``MICROTASK_S3_ENDPOINT`` (else ``AWS_ENDPOINT_URL_S3``, else
``AWS_ENDPOINT_URL``) for an S3-compatible server such as MinIO, which is then addressed
path-style. Without keys in ``env`` boto3's default chain applies (profile, web identity, instance
role). boto3 is imported here and nowhere else in the runner: it is the optional ``s3`` extra.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# boto3 ships no type information: its objects are Any here.
import boto3  # type: ignore[import-untyped]
import botocore.config  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]

from .contract import ENV_S3_ENDPOINT

__all__ = [
    "S3Sink",
    "S3UploadError",
    "check_endpoint",
    "client_for",
    "describe_error",
    "first_set",
    "is_connection_error",
    "object_key",
    "parse_s3_url",
]

#: Endpoint variables, the first one set wins.
ENDPOINT_VARIABLES = (ENV_S3_ENDPOINT, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")
#: MinIO and most S3-compatible servers sign with this region unless told otherwise.
DEFAULT_COMPATIBLE_REGION = "us-east-1"

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Answers worth another try (besides any 5xx): the store is busy or the request was slow.
TRANSIENT_CODES = frozenset(
    {"RequestTimeout", "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"}
)
_CONTENT_TYPES = {".jsonl": "application/x-ndjson", ".log": "text/plain; charset=utf-8"}


class S3UploadError(Exception):
    """The sink gave up uploading to the store; the message names the object and the reason."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``; the prefix has no slash at either end.

    Raises ValueError, saying what is wrong, for anything else.
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "s3":
        raise ValueError(f"{url!r:.120} is not an s3://bucket/prefix URL")
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise ValueError(
            f"{url!r:.120}: an s3:// URL is s3://bucket/prefix, without user, port, ? or #"
        )
    bucket = parts.netloc
    if not bucket:
        raise ValueError(f"{url!r:.120} names no bucket (s3://bucket/prefix)")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(
            f"{bucket!r} is not a valid bucket name (3 to 63 lowercase letters, digits, dots "
            "and hyphens, starting and ending with a letter or digit)"
        )
    prefix = parts.path.strip("/")
    segments = prefix.split("/") if prefix else []
    if any(s in ("", ".", "..") for s in segments):
        raise ValueError(f"{url!r:.120}: the prefix has an empty, '.' or '..' part")
    return bucket, prefix


def object_key(prefix: str, name: str) -> str:
    """The key of the store file ``name`` (``records/...``) under ``prefix``."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a store file name: {name!r:.80}")
    return f"{prefix}/{name}" if prefix else name


def first_set(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    return next((env[n].strip() for n in names if env.get(n, "").strip()), None)


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if it is an http(s)://host[:port] URL, else ValueError."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the S3 endpoint {endpoint!r:.120} is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number)
    except ValueError:
        raise ValueError(f"the S3 endpoint {endpoint!r:.120} has an invalid port") from None
    return endpoint.rstrip("/")


def client_for(
    *,
    endpoint: str | None,
    access_key: str | None,
    secret_key: str | None,
    session_token: str | None = None,
    region: str | None,
    max_attempts: int = 3,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
) -> Any:
    """A boto3 S3 client (no I/O yet); shared by the sink and the operator's S3 store.

    With an endpoint (MinIO and other S3-compatible servers): path-style addressing, and the
    checksums only where S3 requires them, since newer boto3 adds headers that not every
    compatible server knows. botocore retries transient errors ("standard" mode: exponential
    backoff with jitter) up to ``max_attempts`` tries per request.
    """
    s3: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if endpoint is not None:
        s3["addressing_style"] = "path"
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
        region = region or DEFAULT_COMPATIBLE_REGION
    config = botocore.config.Config(
        s3=s3 or None,
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        **options,
    )
    session = boto3.session.Session(
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=session_token,
        region_name=region,
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


def describe_error(error: BaseException) -> tuple[str, bool]:
    """(a one-line reason, whether retrying may help) for an exception of a boto3 call."""
    if isinstance(error, botocore.exceptions.ClientError):
        info = error.response.get("Error", {})
        code = str(info.get("Code") or "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = str(info.get("Message") or "").strip()
        if code == "NoSuchBucket":
            reason = "the bucket does not exist"
        elif code in ("InvalidAccessKeyId",):
            reason = "access denied: the store does not know the access key (InvalidAccessKeyId)"
        elif code == "SignatureDoesNotMatch":
            reason = "access denied: wrong secret key (SignatureDoesNotMatch)"
        elif code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
            reason = f"access denied ({code or status}{': ' + message if message else ''})"
        else:
            reason = f"the store answered {status} {code}{': ' + message if message else ''}"
        # Any other 4xx (no such bucket, access denied, a bad request) says the same next time.
        transient = code in TRANSIENT_CODES or not isinstance(status, int) or status >= 500
        transient = transient or status in (408, 429)
        return reason, transient
    if isinstance(
        error, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return (
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or another "
            "source boto3 reads)",
            False,
        )
    if is_connection_error(error):
        return connection_reason(error), True
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {error.strerror or error}", True
    return f"{type(error).__name__}: {error}", False


def is_connection_error(error: BaseException) -> bool:
    """Whether a boto3 call failed to connect, or lost its connection (no answer to judge)."""
    exceptions = botocore.exceptions
    return isinstance(error, exceptions.ConnectionError | exceptions.HTTPClientError)


def connection_reason(error: BaseException) -> str:
    """A short reason for a failed connection: "connection refused", "connect timed out", ..."""
    exceptions = botocore.exceptions
    if isinstance(error, exceptions.ConnectTimeoutError):
        return "connect timed out"
    if isinstance(error, exceptions.ReadTimeoutError):
        return "no answer in time (read timed out)"
    inner = getattr(error, "kwargs", {}).get("error") or error
    text = str(inner)
    if "Failed to resolve" in text:
        return "cannot resolve the host name"
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip().lower()
    return f"connection failed ({type(inner).__name__}: {text})"


class _Prefix(io.RawIOBase):
    """The first ``length`` bytes of a file, seekable: the body of one upload.

    The spool file may grow while it is read (appends go on), but only bytes that were already
    there when the upload started are sent, so memory stays small for any object size.
    """

    def __init__(self, path: str, length: int) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115  (closed by close())
        self._length = length
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self._length - self._position)
        if count <= 0:
            return 0
        got = self._file.readinto(memoryview(buffer)[:count])
        self._position += got
        return got

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, base + offset)
        self._file.seek(min(self._position, self._length))
        return self._position

    def tell(self) -> int:
        return self._position

    def __len__(self) -> int:
        return self._length

    def close(self) -> None:
        self._file.close()
        super().close()


@dataclass
class _Spooled:
    """One store file: its spool file and how much of it is appended, ready, uploaded."""

    key: str
    path: str
    fd: int
    size: int = 0
    ready: int = 0
    uploaded: int = -1  # nothing yet (an empty file still makes an empty object)


class S3Sink:
    """Store files as objects of ``s3://bucket/prefix``: see the module's docstring.

    ``interval`` (seconds between interim uploads), ``final_timeout`` (how long the final flush
    retries), ``give_up_after`` (seconds of failing interim uploads before the sink gives up;
    None: never) and ``client`` are for tests and tuning; the runner passes only the URL and its
    environment. Construction does no I/O: the spool directory, the client and the thread are
    made when first needed.
    """

    def __init__(
        self,
        url: str,
        env: Mapping[str, str],
        *,
        interval: float = 10.0,
        give_up_after: float | None = None,
        final_timeout: float = 20.0,
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        endpoint = first_set(env, ENDPOINT_VARIABLES)
        self.endpoint = check_endpoint(endpoint) if endpoint is not None else None
        access_key = env.get("AWS_ACCESS_KEY_ID") or None
        secret_key = env.get("AWS_SECRET_ACCESS_KEY") or None
        if (access_key is None) != (secret_key is None):
            raise ValueError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither")
        self._client_options: dict[str, Any] = {
            "endpoint": self.endpoint,
            "access_key": access_key,
            "secret_key": secret_key,
            "session_token": (env.get("AWS_SESSION_TOKEN") or None) if access_key else None,
            "region": first_set(env, REGION_VARIABLES),
        }
        self.interval = interval
        self.give_up_after = give_up_after
        self.final_timeout = final_timeout
        self._client = client
        self._clock = clock
        self._files: dict[str, _Spooled] = {}
        self._spool: str | None = None
        self._lock = threading.Lock()  # the state above and below
        self._wake = threading.Condition(self._lock)
        self._uploading = threading.Lock()  # one upload round at a time
        self._thread: threading.Thread | None = None
        self._closed = False
        self._error: S3UploadError | None = None  # raised by the next call
        self._last_round = -math.inf
        self._failing_since: float | None = None
        #: Upload rounds that sent something (for tests and the curious).
        self.uploads = 0

    # ------------------------------------------------------------------ Sink

    def append(self, name: str, data: bytes) -> None:
        self._raise_error()
        with self._lock:
            spooled = self._files.get(name)
        if spooled is None:
            spooled = self._spool_file(name)
        view = memoryview(data)
        while view:
            written = os.write(spooled.fd, view)
            view = view[written:]
        with self._lock:
            spooled.size += len(data)

    def flush(self, final: bool) -> None:
        self._raise_error()
        with self._lock:
            for spooled in self._files.values():
                spooled.ready = spooled.size
            if not final:
                if self._pending() and not self._closed:
                    self._start_thread()
                    self._wake.notify_all()
                return
        self._final_upload()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            # A daemon thread: one stuck in a slow request is not waited for long.
            thread.join(timeout=1.0)
        with self._lock:
            files, self._files = list(self._files.values()), {}
            spool, self._spool = self._spool, None
        for spooled in files:
            with contextlib.suppress(OSError):
                os.close(spooled.fd)
        if spool is not None:
            shutil.rmtree(spool, ignore_errors=True)

    # ------------------------------------------------------------------ state

    def _raise_error(self) -> None:
        with self._lock:
            error = self._error
        if error is not None:
            raise error

    def _spool_file(self, name: str) -> _Spooled:
        key = object_key(self.prefix, name)
        with self._lock:
            spool = self._spool
        try:
            if spool is None:
                spool = tempfile.mkdtemp(prefix="microtask-s3-")
                with self._lock:
                    self._spool = spool
            path = os.path.join(spool, f"{len(self._files)}.part")
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise S3UploadError(
                f"cannot spool {name} for upload to {self.url}: {error.strerror or error} "
                f"(the spool is in {tempfile.tempdir or os.environ.get('TMPDIR') or '/tmp'}; "
                "point TMPDIR at a writable directory)"
            ) from None
        spooled = _Spooled(key, path, fd)
        with self._lock:
            self._files[name] = spooled
        return spooled

    def _pending(self) -> bool:
        """Whether something is ready and not uploaded (called with the lock held)."""
        return any(s.ready != s.uploaded for s in self._files.values())

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="microtask-s3-upload", daemon=True
            )
            self._thread.start()

    # ------------------------------------------------------------------ uploads

    def _run(self) -> None:
        """The background uploader: a round whenever something is ready and the interval is up."""
        while True:
            with self._lock:
                while True:
                    if self._closed or self._error is not None:
                        return
                    due = self._last_round + self.interval
                    now = self._clock()
                    if self._pending() and now >= due:
                        break
                    self._wake.wait(timeout=max(due - now, 0.05) if self._pending() else None)
            failure = self._upload_round()
            if failure is None:
                continue
            (reason, transient) = failure
            now = self._clock()
            with self._lock:
                if self._failing_since is None:
                    self._failing_since = now
                lasted = now - self._failing_since
                if not transient or (
                    self.give_up_after is not None and lasted >= self.give_up_after
                ):
                    self._error = S3UploadError(reason)
                    return

    def _final_upload(self) -> None:
        """Upload everything ready, retrying until ``final_timeout``; raise if it fails."""
        deadline = self._clock() + self.final_timeout
        pause = 0.5
        while True:
            failure = self._upload_round()
            if failure is None:
                return
            reason, transient = failure
            if not transient or self._clock() + pause > deadline:
                error = S3UploadError(reason)
                with self._lock:
                    self._error = error
                raise error
            time.sleep(pause)
            pause = min(pause * 2, 4.0)

    def _upload_round(self) -> tuple[str, bool] | None:
        """Upload each file whose ready part changed; None, or (reason, transient) of a failure."""
        with self._uploading:
            with self._lock:
                self._last_round = self._clock()
                todo = [(s, s.ready) for s in self._files.values() if s.ready != s.uploaded]
            if not todo:
                return None
            try:
                client = self._get_client()
            except Exception as exc:  # a broken AWS config file, say: nothing to retry
                return f"{self.url}: cannot set up the S3 client: {describe_error(exc)[0]}", False
            for spooled, length in todo:
                try:
                    self._put(client, spooled, length)
                except Exception as exc:
                    reason, transient = describe_error(exc)
                    where = f"s3://{self.bucket}/{spooled.key}"
                    at = f" at {self.endpoint}" if self.endpoint else ""
                    return f"cannot upload {where}{at}: {reason}", transient
                with self._lock:
                    spooled.uploaded = length
            with self._lock:
                self._failing_since = None
                self.uploads += 1
            return None

    def _get_client(self) -> Any:
        if self._client is None:
            self._client = client_for(**self._client_options)
        return self._client

    def _put(self, client: Any, spooled: _Spooled, length: int) -> None:
        extension = os.path.splitext(spooled.key)[1]
        with _Prefix(spooled.path, length) as body:
            client.put_object(
                Bucket=self.bucket,
                Key=spooled.key,
                Body=body,
                ContentLength=length,
                ContentType=_CONTENT_TYPES.get(extension, "application/octet-stream"),
            )
