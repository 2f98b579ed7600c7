"""Fetch the raw bytes of a data source: an https:// URL, a gs:// URI or a local path.

Downloads are only accepted over https and only with a known sha256: the canonical Keras URL's
hash is built in, any other URL carries its own as a `#sha256=<hex>` fragment. The canonical URL
is downloaded once into Keras' cache and read from there afterwards (`keras_cache`).
"""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mnist_pipeline.config import CANONICAL_MNIST_SHA256, CANONICAL_MNIST_URL
from mnist_pipeline.data.keras_cache import read_cached_mnist
from mnist_pipeline.errors import DataError, StorageError
from mnist_pipeline.hashing import sha256_hex

__all__ = ["KNOWN_SHA256", "read_source_bytes", "redacted", "verify_sha256"]

KNOWN_SHA256 = {CANONICAL_MNIST_URL: CANONICAL_MNIST_SHA256}
_DOWNLOAD_TIMEOUT_S = 120
# Query parameters that carry credentials in signed or token URLs.
_SECRET_PARAMETER = re.compile(r"(?i)(token|key|sig|signature|secret|password|credential|auth)")


def read_source_bytes(source: str, keras_home: str = "") -> bytes:
    """The bytes behind `source`; a missing or unverifiable source raises `DataError`.

    The canonical MNIST URL is read through Keras' cache under `keras_home` (the `keras_home`
    setting; empty: ~/.keras), so that it is downloaded once, not on every run.
    """
    _refuse_embedded_credentials(source)
    if source.partition("#")[0] == CANONICAL_MNIST_URL:
        return read_cached_mnist(keras_home)
    if source.startswith("https://"):
        return _download_verified(source)
    if source.startswith("gs://"):
        return _read_gcs(source)
    if "://" in source:
        raise DataError(f"data source {source!r}: only https://, gs:// and local paths are accepted")
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"data source {source!r}: no such file")
    return path.read_bytes()


def _refuse_embedded_credentials(source: str) -> None:
    """A source is recorded as given (manifests, run records, logs), so it must not carry a
    password or token; the error shows it with the secret parts masked."""
    parts = urllib.parse.urlsplit(source)
    secret_query = any(_SECRET_PARAMETER.search(name) for name, _ in urllib.parse.parse_qsl(parts.query))
    if parts.password or parts.username or secret_query:
        raise DataError(
            f"data source {redacted(source)!r}: a URL must not carry credentials (user:password@ or a"
            " token parameter); they would be recorded with the data; use gs:// with the worker's"
            " own credentials instead"
        )


def redacted(source: str) -> str:
    """`source` with any user info and every query value replaced by `***`."""
    parts = urllib.parse.urlsplit(source)
    netloc = parts.netloc.rpartition("@")[2]
    netloc = f"***@{netloc}" if "@" in parts.netloc else netloc
    query = "&".join(f"{name}=***" for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _download_verified(source: str) -> bytes:
    url, _, fragment = source.partition("#")
    expected = KNOWN_SHA256.get(url) or fragment.removeprefix("sha256=")
    if not expected:
        raise DataError(
            f"data source {source!r}: downloads need a checksum; append '#sha256=<hex>' to the URL"
        )
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"data source {url!r}: download failed ({exc})") from exc
    verify_sha256(url, data, expected)
    return data


def verify_sha256(source: str, data: bytes, expected: str) -> None:
    actual = sha256_hex(data)
    if actual != expected.lower():
        raise DataError(f"data source {source!r}: sha256 mismatch (expected {expected}, got {actual})")


def _read_gcs(source: str) -> bytes:
    from mnist_pipeline.storage import GcsStorage, split_gs_uri

    bucket, key = split_gs_uri(source)
    try:
        return GcsStorage(f"gs://{bucket}").read_bytes(key)
    except StorageError as exc:
        raise DataError(f"data source {source!r}: {exc}") from exc
