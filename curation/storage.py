"""Output storage through fsspec: local folders and ``s3://`` (or any fsspec URL) alike.

Writes are atomic: locally a temp file in the same folder is renamed into place; on object stores
the object only appears once its upload completes (a single PUT or a completed multipart upload).

Transient storage errors (connection resets, timeouts, HTTP 5xx, throttling) are retried with
exponential backoff (:class:`RetryPolicy`); when the retries run out, or on a permanent error
(permission denied, disk full), a :class:`StorageError` names the operation and the path in one
line. Credentials come from fsspec/botocore's standard chain and never appear in messages:
:func:`redact` blanks secret-looking keys before ``storage_options`` is written anywhere.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger("vividhead.storage")
T = TypeVar("T")


class StorageError(OSError):
    """An output operation failed for good (after retries, or at once for permanent errors).

    The message is one line: ``<operation> <path>: <cause>``. ``errno`` is the cause's, if any.
    """

    def __str__(self) -> str:
        return self.strerror or super().__str__()


# Error numbers of conditions that go away on their own (connection trouble, busy, remote I/O).
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
        errno.EAGAIN, errno.EBUSY, errno.ENETDOWN, errno.ENETUNREACH, errno.ENETRESET,
        errno.EHOSTUNREACH, getattr(errno, "EREMOTEIO", 121),
    }
)
# S3 / botocore error codes for throttling and server-side failures.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
        "TooManyRequests", "RequestThrottled", "RequestTimeout", "InternalError", "ServiceUnavailable",
        "500", "502", "503", "504",
    }
)
# Exception class names (anywhere in the MRO) of connection-level failures in botocore/aiohttp/http.
TRANSIENT_CLASS_NAMES = frozenset(
    {
        "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
        "HTTPClientError", "ClientConnectionError", "ServerDisconnectedError", "ClientPayloadError",
        "IncompleteRead", "FSTimeoutError", "ResponseParserError", "RemoteDisconnected",
    }
)
# Failing to connect at all (refused, DNS): a wrong or dead host in a URL list, not a hiccup; botocore
# already retries connection errors to S3 endpoints itself.
NO_CONNECTION_CLASS_NAMES = frozenset(
    {"ConnectionRefusedError", "ClientConnectorError", "ClientConnectorDNSError", "EndpointConnectionError", "gaierror"}
)
# Never retried, even when a transient error is in their cause chain.
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception in its ``__cause__``/``__context__`` chain) is a storage
    error worth retrying: connection reset/closed mid-request, timeout, HTTP 429 or 5xx, S3 throttling
    (``SlowDown``), ``EBUSY``/``EREMOTEIO`` as s3fs translates 503/500. ``FileNotFoundError``,
    ``PermissionError``, other OS errors (``ENOSPC``, ``EACCES``) and failing to connect at all
    (refused, unknown host) are permanent."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not e for e in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    # An HTTP status anywhere in the chain decides (fsspec's HTTP file system raises
    # FileNotFoundError from an aiohttp error for every status, 503 included).
    for e in chain:
        status = getattr(e, "status", None)  # aiohttp.ClientResponseError
        response = getattr(e, "response", None)  # botocore.exceptions.ClientError
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            if code in TRANSIENT_CODES:
                return True
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int) and status >= 400:
            return status == 429 or status >= 500
    if chain and isinstance(chain[0], PERMANENT):
        return False
    if any(cls.__name__ in NO_CONNECTION_CLASS_NAMES for e in chain for cls in type(e).__mro__):
        return False
    for e in chain:
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        if any(cls.__name__ in TRANSIENT_CLASS_NAMES for cls in type(e).__mro__):
            return True
        if isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS:
            return True
    return False


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line, at most 300 characters, plus `` (HTTP <status>)`` when an
    HTTP status is in the cause chain (fsspec hides it behind ``FileNotFoundError``)."""
    text = " ".join(str(exc).split())
    cause, status = exc, None
    while cause is not None and status is None:
        status = getattr(cause, "status", None)
        cause = cause.__cause__
    suffix = f" (HTTP {status})" if isinstance(status, int) and f"HTTP {status}" not in text else ""
    return f"{type(exc).__name__}: {text}"[: 300 - len(suffix)] + suffix


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient storage errors.

    Attempt ``n`` (1-based) that fails transiently waits ``min(max_delay_s, base_delay_s * 2**(n-1))``
    seconds, scaled by a random factor in [0.5, 1] (jitter, so workers do not retry in lockstep).

    Attributes:
        attempts: total tries, the first included (>= 1).
        base_delay_s / max_delay_s: backoff bounds in seconds.
    """

    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError(f"invalid retry policy {self}")

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        return min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def call(self, fn: Callable[..., T], *args: Any, what: str = "", **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried while it raises a transient error (:func:`is_transient`).

        Raises:
            The last exception, unchanged, when it is permanent or the attempts are used up.
        """
        for attempt in range(1, self.attempts + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if attempt >= self.attempts or not is_transient(exc):
                    raise
                delay = self.delay_s(attempt)
                log.warning("%s: transient error (%s), retry %d/%d in %.2f s", what or getattr(fn, "__name__", "call"),
                            describe(exc), attempt, self.attempts - 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")


DEFAULT_RETRY = RetryPolicy()

_SECRET_WORDS = ("secret", "token", "password", "passwd", "credential", "session")
_SECRET_KEYS = {"key", "access_key", "aws_access_key_id", "access_key_id", "sas_key", "account_key"}


def redact(value: Any) -> Any:
    """A copy of a nested dict/list with secret-looking values (``key``, ``secret``, ``token``,
    ``password``, ``aws_secret_access_key``, ...) replaced by ``"***"``; for configs that get logged."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            name = str(k).lower()
            secret = name in _SECRET_KEYS or any(w in name for w in _SECRET_WORDS)
            out[k] = "***" if secret and v not in (None, "") and not isinstance(v, (dict, list)) else redact(v)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


# Top-level keys that make ``run.storage_options`` a per-protocol mapping.
PROTOCOLS = frozenset(
    {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "hf", "hdfs", "webhdfs", "sftp", "ftp",
     "memory", "http", "https", "file"}
)


def options_for(url: str, storage_options: Optional[dict]) -> dict:
    """The fsspec options for ``url`` out of ``run.storage_options``.

    Two forms are accepted: per protocol (``{"s3": {"client_kwargs": {...}}, "http": {...}}``, every
    top-level key a protocol name), or flat (``{"client_kwargs": {...}}``), which applies to object
    stores only: ``http(s)://`` and local paths get no flat options, so an S3 ``endpoint_url`` never
    reaches aiohttp.
    """
    options = storage_options or {}
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    if options and all(k in PROTOCOLS for k in options):
        return dict(options.get(protocol) or {})
    if protocol in ("http", "https", "file"):
        return {}
    return dict(options)


class Storage:
    """A root folder (``/data/out`` or ``s3://bucket/prefix``) with atomic, retried writes.

    Args:
        root: local path or fsspec URL.
        storage_options: passed to ``fsspec.core.url_to_fs`` (e.g. S3 ``client_kwargs``).
        retry: backoff for transient errors.

    Raises:
        OSError: the root cannot be created (permission, read-only file system, ...).
    """

    def __init__(self, root: str, storage_options: Optional[dict] = None, retry: RetryPolicy = DEFAULT_RETRY) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(root, **options_for(root, storage_options))
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.url = root
        self.retry = retry
        if self.is_local:
            os.makedirs(self.root, exist_ok=True)

    def path(self, rel: str) -> str:
        """Full path of ``rel`` under the root."""
        return f"{self.root.rstrip('/')}/{rel}"

    def _display(self, rel: str) -> str:
        return f"{self.url.rstrip('/')}/{rel}"

    def _call(self, op: str, rel: str, fn: Callable[..., T], *args: Any) -> T:
        """Run one file-system call with retries; failures become :class:`StorageError`
        (``FileNotFoundError`` passes through unchanged, callers rely on it)."""
        try:
            return self.retry.call(fn, *args, what=f"{op} {self._display(rel)}")
        except FileNotFoundError:
            raise
        except StorageError:
            raise
        except Exception as exc:
            tries = f" after {self.retry.attempts} attempts" if is_transient(exc) else ""
            raise StorageError(getattr(exc, "errno", None) or errno.EIO,
                               f"{op} {self._display(rel)} failed{tries}: {describe(exc)}") from exc

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` exists. Raises :class:`StorageError` when the storage cannot be reached."""
        return self._call("check", rel, self.fs.exists, self.path(rel))

    def list(self, rel_dir: str) -> list[str]:
        """File names (not paths) directly under ``rel_dir``; empty when it does not exist."""
        try:
            if not self.is_local:
                self.fs.invalidate_cache(self.path(rel_dir))
            paths = self._call("list", rel_dir, self.fs.ls, self.path(rel_dir), False)
        except FileNotFoundError:
            return []
        return sorted(Path(p).name for p in paths)

    def read_bytes(self, rel: str) -> bytes:
        """The whole file ``rel``. Raises FileNotFoundError, or :class:`StorageError` (with retries spent)."""
        return self._call("read", rel, self.fs.cat_file, self.path(rel))

    def remove(self, rel: str) -> None:
        """Delete ``rel`` if it exists (no error when it does not)."""
        if self.exists(rel):
            self._call("remove", rel, self.fs.rm, self.path(rel))

    def put_file(self, local: str | Path, rel: str) -> None:
        """Move a finished local file to ``rel`` atomically (rename locally, upload remotely).

        The local file is gone afterwards, whether this succeeds or raises.

        Raises:
            StorageError: the rename or upload failed (after retries for transient errors).
        """
        dest = self.path(rel)
        try:
            if self.is_local:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.chmod(local, 0o644)  # mkstemp creates 0600
                self._call("rename to", rel, os.replace, local, dest)
            else:
                self._call("upload", rel, self.fs.put_file, str(local), dest)
        finally:
            if os.path.exists(local):
                os.unlink(local)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` atomically; no temp file is left behind on failure.

        Raises:
            StorageError: disk full, permission denied, or an upload that kept failing.
        """
        fd, tmp = self.local_temp(rel)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            os.unlink(tmp)
            raise StorageError(exc.errno or errno.EIO, f"write {self._display(rel)} failed: {describe(exc)}") from exc
        self.put_file(tmp, rel)

    def local_temp(self, rel: str) -> tuple[int, str]:
        """A temp file for building ``rel``: next to it locally (same file system, so the rename is
        atomic), in the system temp folder for remote roots. Returns ``(fd, path)``."""
        if self.is_local:
            folder = os.path.dirname(self.path(rel))
            os.makedirs(folder, exist_ok=True)
            return tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=Path(rel).suffix)
        return tempfile.mkstemp(prefix="vividhead-", suffix=Path(rel).suffix)

    def clean_temps(self, rel_dir: str) -> None:
        """Remove temp files left by a killed run under ``rel_dir`` (local roots only)."""
        if self.is_local:
            for name in self.list(rel_dir):
                if name.startswith(".tmp-"):
                    self.fs.rm(self.path(f"{rel_dir}/{name}"))


def register_webdataset_scheme(protocol: str = "s3", storage_options: Optional[dict] = None) -> None:
    """Let ``webdataset`` open ``<protocol>://`` shard URLs through fsspec (s3fs for ``s3``).

    webdataset has no ``s3://`` handler of its own; after this call
    ``webdataset.WebDataset("s3://bucket/out/shards/{00000..00009}.tar")`` reads with the same
    ``storage_options`` (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``) as the pipeline.
    """
    import importlib

    gopen = importlib.import_module("webdataset.gopen")  # the package re-exports a function of that name

    def _open(url: str, mode: str = "rb", _bufsize: int = 8192, **_kw: Any):  # webdataset's handler signature
        return fsspec.open(url, mode, **options_for(url, storage_options)).open()

    gopen.gopen_schemes[protocol] = _open
