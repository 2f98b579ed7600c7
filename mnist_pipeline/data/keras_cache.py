"""The canonical MNIST, downloaded once into Keras' own cache and read from there afterwards.

Keras' `mnist.load_data()` keeps the file at `$KERAS_HOME/datasets/mnist.npz`
(`~/.keras/datasets/mnist.npz` by default) and checks it against the same sha256, so a copy
either of them downloaded serves both. A copy is only ever put in place whole and verified: the
download goes to a temporary file beside it, is hashed, then renamed over it.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from mnist_pipeline.config import CANONICAL_MNIST_SHA256, CANONICAL_MNIST_URL
from mnist_pipeline.errors import DataError
from mnist_pipeline.hashing import sha256_hex

__all__ = ["MAX_MNIST_BYTES", "cached_mnist", "keras_cache_path", "read_cached_mnist"]

# The canonical file is about 11 MB: anything this much larger is not MNIST, and is refused
# before it is read whole (or downloaded whole).
MAX_MNIST_BYTES = 64 * 2**20
_DOWNLOAD_TIMEOUT_S = 120
_CHUNK_BYTES = 2**20
_HOW = "put a copy at {path} or set MNIST_SOURCE=/path/to/mnist.npz"


def keras_cache_path(keras_home: str = "") -> Path:
    """`<keras_home>/datasets/mnist.npz`, where Keras keeps MNIST; an empty `keras_home`
    (KERAS_HOME unset) is Keras' default, `~/.keras`."""
    return Path(keras_home or "~/.keras").expanduser() / "datasets" / "mnist.npz"


def read_cached_mnist(
    keras_home: str = "", url: str = CANONICAL_MNIST_URL, sha256: str = CANONICAL_MNIST_SHA256
) -> bytes:
    """MNIST's bytes, verified against `sha256`: the cached copy when it matches, otherwise
    downloaded from `url` into the cache first (a corrupt or stale copy is replaced).

    Raises `DataError` when the download fails (the message says where to put a copy instead),
    when what arrives does not match `sha256` (nothing is cached) or is over `MAX_MNIST_BYTES`.
    """
    path = keras_cache_path(keras_home)
    cached = _verified_copy(path, sha256)
    if cached is not None:
        return cached
    return _download_into(path, url, sha256, stale=path.exists())


def cached_mnist(
    keras_home: str = "", url: str = CANONICAL_MNIST_URL, sha256: str = CANONICAL_MNIST_SHA256
) -> Path:
    """The path of a verified cached copy of MNIST, downloaded first when needed
    (`read_cached_mnist`)."""
    read_cached_mnist(keras_home, url, sha256)
    return keras_cache_path(keras_home)


def _verified_copy(path: Path, sha256: str) -> bytes | None:
    """The file's bytes when it is there, within bounds and matches `sha256`; else None."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_MNIST_BYTES + 1)
    except OSError:  # missing, a folder, unreadable: all mean "download it"
        return None
    if len(data) > MAX_MNIST_BYTES or sha256_hex(data) != sha256.lower():
        return None
    return data


def _download_into(path: Path, url: str, sha256: str, stale: bool) -> bytes:
    if not url.startswith("https://"):
        raise DataError(f"MNIST download {url!r}: only https:// URLs are accepted")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise _unwritable(path, exc) from exc
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            data = _download(url, out, path, stale)
        _verify(url, data, sha256)
        try:
            os.replace(temp, path)  # atomic: readers see the old copy or the whole new one
        except OSError as exc:
            raise _unwritable(path, exc) from exc
    finally:
        temp.unlink(missing_ok=True)  # a failed or refused download leaves nothing behind
    return data


def _unwritable(path: Path, exc: OSError) -> DataError:
    return DataError(
        f"cannot write the MNIST cache {path} ({exc.strerror or exc}); set KERAS_HOME to a"
        " writable folder or MNIST_SOURCE=/path/to/mnist.npz"
    )


def _download(url: str, out: BinaryIO, path: Path, stale: bool) -> bytes:
    """`url`'s body, also written to `out`; refused once it passes `MAX_MNIST_BYTES`."""
    data = bytearray()
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            _refuse_oversize(url, _content_length(response.headers.get("Content-Length")))
            while chunk := response.read(_CHUNK_BYTES):
                data += chunk
                _refuse_oversize(url, len(data))
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        why = " (the copy there does not match its sha256)" if stale else ""
        raise DataError(
            f"could not download MNIST from {url} ({_reason(exc)}); {_HOW.format(path=path)}{why}"
        ) from exc
    return bytes(data)


def _content_length(header: str | None) -> int:
    try:
        return int(header or 0)
    except ValueError:  # a malformed header says nothing; the running count still bounds it
        return 0


def _refuse_oversize(url: str, size: int) -> None:
    if size > MAX_MNIST_BYTES:
        raise DataError(f"MNIST from {url} is over {MAX_MNIST_BYTES} bytes; MNIST is about 11 MB, refused")


def _verify(url: str, data: bytes, sha256: str) -> None:
    actual = sha256_hex(data)
    if actual != sha256.lower():
        raise DataError(
            f"MNIST from {url}: sha256 mismatch (expected {sha256}, got {actual}); the download"
            " was deleted, nothing was cached"
        )


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
