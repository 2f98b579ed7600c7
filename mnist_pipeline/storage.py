"""One small storage interface over a local folder or a GCS bucket.

Everything the pipeline persists (dataset snapshots, trained models, the registry) goes through a
`Storage`, addressed by a root URI: a filesystem path or `gs://bucket/prefix`. The GCS backend uses
google-cloud-storage, which talks to an emulator when `STORAGE_EMULATOR_HOST` is set.

Every GCS call retries transient failures (connection errors, 429/5xx) with exponential backoff
until a deadline, through google-cloud-storage's own retry policies: `MNIST_STORAGE_RETRY_DEADLINE`
seconds (default 120). A storage outage shorter than that is survived; a longer one raises
`StorageError` naming the object.

`compare_and_swap` is the one read-decide-write loop every shared object (the champion pointer,
the incoming ledger) is updated through.

Folders that anyone may write into (`incoming/`) are read through `entries`, `read_entry`,
`move_entry` and `delete_entry`, which never follow a link: an entry is examined as it is (lstat),
and a symbolic link, a folder, a device or a FIFO is reported as such, moved as itself (a rename)
and never opened, so its target is never read, moved or deleted.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mnist_pipeline.config import settings
from mnist_pipeline.errors import StorageError

__all__ = [
    "CAS_ATTEMPTS",
    "ENTRY_KINDS",
    "CountingStorage",
    "Entry",
    "GcsStorage",
    "LocalStorage",
    "Storage",
    "compare_and_swap",
    "open_storage",
    "retry_deadline",
    "split_gs_uri",
]

CAS_ATTEMPTS = 5  # read-decide-write rounds before giving up on an object other writers keep moving
_Result = TypeVar("_Result")
# What an entry of a folder is, from its lstat: only a "file" is ever opened.
ENTRY_KINDS = ("file", "link", "folder", "device", "fifo", "socket", "unknown", "unreadable")


@dataclass(frozen=True)
class Entry:
    """One entry of a folder as it is, never through a link: `key` relative to the storage root."""

    key: str
    kind: str  # one of ENTRY_KINDS
    size: int = 0
    modified: float = 0.0
    target: str | None = None  # what a symbolic link says it points at (read from the link itself)
    error: str | None = None  # why an "unreadable" entry could not be examined


def _kind_of(mode: int) -> str:
    for test, kind in (
        (stat.S_ISREG, "file"),
        (stat.S_ISLNK, "link"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "device"),
        (stat.S_ISBLK, "device"),
    ):
        if test(mode):
            return kind
    return "unknown"


def retry_deadline() -> float:
    """Seconds a GCS call keeps retrying transient failures: `MNIST_STORAGE_RETRY_DEADLINE`."""
    return settings().storage_retry_deadline


class Storage(ABC):
    """Keys are `/`-separated paths relative to the storage root."""

    root_uri: str
    # Whether a hidden entry (a leading dot) may be a file still being written: writers on a file
    # system (rsync, `_complete_file_beside`) write under such a name, then rename; a bucket's
    # objects appear whole.
    hidden_entries_may_be_partial: bool = False

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key under `prefix`, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes | None, str]:
        """The object's bytes (None when absent) and an opaque generation token ("0" when absent)."""

    @abstractmethod
    def write_if_generation(self, key: str, data: bytes, generation: str) -> bool:
        """Compare-and-swap: write only if the object is still at `generation` ("0": still absent).

        Returns False, writing nothing, when another writer got there first.
        """

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """Write `data` only if nothing is stored at `key` yet; False, writing nothing, when
        something is. The commit point of the registry's log."""
        return self.write_if_generation(key, data, "0")

    @abstractmethod
    def modified_times(self, prefix: str = "") -> dict[str, float]:
        """Every key under `prefix` with its last write time (seconds since the epoch)."""

    @abstractmethod
    def sizes(self, prefix: str = "") -> dict[str, int]:
        """Every key under `prefix` with its size in bytes, from the listing: nothing is read."""

    def copy(self, source: str, target: str) -> None:
        """Copy an object; backends override this to copy without reading it into memory."""
        self.write_bytes(target, self.read_bytes(source))

    @abstractmethod
    def entries(self, prefix: str) -> list[Entry]:
        """The entries directly in the folder `prefix`, in one listing, each as it is (never
        through a link), sorted by key."""

    def read_entry(self, key: str) -> bytes:
        """A "file" entry's bytes; `StorageError` if it is no longer a plain file."""
        return self.read_bytes(key)

    def move_entry(self, key: str, target: str) -> None:
        """Move the entry itself (a link as a link, a folder whole) to the key `target`."""
        self.copy(key, target)
        self.delete_entry(key)

    def delete_entry(self, key: str) -> None:
        """Remove this one entry (a link, never its target)."""
        self.delete(key)

    def uri(self, key: str) -> str:
        return f"{self.root_uri.rstrip('/')}/{key}"

    def read_json(self, key: str) -> Any:
        try:
            return json.loads(self.read_bytes(key))
        except json.JSONDecodeError as exc:
            raise StorageError(f"{self.uri(key)} is not valid JSON ({exc})") from exc

    def write_json(self, key: str, payload: Any) -> None:
        self.write_bytes(key, json.dumps(payload, indent=2, sort_keys=True).encode())

    def upload_dir(self, local_dir: Path, prefix: str) -> list[str]:
        """Copy every file below `local_dir` to keys under `prefix`; returns the keys written."""
        written = []
        for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(local_dir).as_posix()}"
            self.write_bytes(key, path.read_bytes())
            written.append(key)
        return written

    def download_prefix(self, prefix: str, local_dir: Path) -> Path:
        """Copy every key under `prefix` into `local_dir`, keeping the relative layout."""
        keys = self.list_keys(prefix)
        if not keys:
            raise StorageError(f"nothing stored under {self.uri(prefix)}")
        for key in keys:
            target = Path(local_dir) / key[len(prefix.rstrip("/")) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read_bytes(key))
        return Path(local_dir)


class LocalStorage(Storage):
    hidden_entries_may_be_partial = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root_uri = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise StorageError(f"key {key!r} escapes the storage root {self.root}")
        return path

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{self.uri(key)} does not exist") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        # Write to a temporary file then rename: readers never see a half-written object.
        path = self._path(key)
        tmp = _complete_file_beside(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        # A symbolic link is no object of this store, whatever it points at.
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.is_symlink() and not p.name.startswith(".")
        )

    def entries(self, prefix: str) -> list[Entry]:
        folder = self._unfollowed_folder(prefix)
        try:
            with os.scandir(folder) as scan:
                found = [self._entry(prefix, item) for item in scan]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"{self.uri(prefix)} cannot be listed ({exc.strerror or exc})") from exc
        return sorted(found, key=lambda entry: entry.key)

    def _unfollowed_folder(self, prefix: str) -> Path:
        """The folder of `prefix`, refused when it is itself a symbolic link: listing it would
        treat whatever it points at (the registry, say) as this folder."""
        lexical = self.root / prefix.strip("/")
        if lexical.is_symlink():
            raise StorageError(f"{self.uri(prefix)} is a symbolic link; it is never followed")
        return self._path(prefix)

    @staticmethod
    def _entry(prefix: str, item: os.DirEntry) -> Entry:
        key = f"{prefix.rstrip('/')}/{item.name}" if prefix.strip("/") else item.name
        try:
            info = item.stat(follow_symlinks=False)  # lstat: a link is examined, not its target
        except OSError as exc:
            return Entry(key, "unreadable", error=exc.strerror or str(exc))
        kind = _kind_of(info.st_mode)
        target = None
        if kind == "link":
            with suppress(OSError):
                target = os.readlink(item.path)
        return Entry(key, kind, info.st_size, info.st_mtime, target)

    def _entry_path(self, key: str) -> Path:
        """The entry's own path: its folder resolved, its last component never followed."""
        folder, _, name = key.rstrip("/").rpartition("/")
        if name in ("", ".", ".."):
            raise StorageError(f"{self.uri(key)} names no entry")
        return (self._path(folder) if folder else self.root) / name

    def read_entry(self, key: str) -> bytes:
        path = self._entry_path(key)
        # O_NOFOLLOW: a file swapped for a link since the listing is refused, not followed;
        # O_NONBLOCK: one swapped for a FIFO does not hang the run.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise StorageError(f"{self.uri(key)} cannot be opened as a file ({exc.strerror or exc})") from exc
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise StorageError(f"{self.uri(key)} is no longer a plain file")
            return handle.read()

    def move_entry(self, key: str, target: str) -> None:
        origin, destination = self._entry_path(key), self._path(target)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.rename(origin, destination)  # renames the link or folder itself, atomically

    def delete_entry(self, key: str) -> None:
        path = self._entry_path(key)
        with suppress(FileNotFoundError):
            path.unlink()  # unlink() removes a link itself, never its target

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def modified_times(self, prefix: str = "") -> dict[str, float]:
        return {key: self._path(key).stat().st_mtime for key in self.list_keys(prefix)}

    def sizes(self, prefix: str = "") -> dict[str, int]:
        return {key: self._path(key).stat().st_size for key in self.list_keys(prefix)}

    def copy(self, source: str, target: str) -> None:
        path, origin = self._path(target), self._path(source)
        if not origin.is_file():
            raise StorageError(f"{self.uri(source)} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        try:
            shutil.copyfile(origin, tmp)  # streamed in chunks, then renamed into place whole
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read_versioned(self, key: str) -> tuple[bytes | None, str]:
        # No lock: writers replace the file by an atomic rename, so a read sees old or new whole.
        return self._read_with_token(self._path(key))

    def write_if_generation(self, key: str, data: bytes, generation: str) -> bool:
        # The lock makes check-then-rename atomic between processes; the rename makes it atomic
        # for readers, who never take the lock.
        path = self._path(key)
        with self._locked(path):
            if self._read_with_token(path)[1] != generation:
                return False
            self.write_bytes(key, data)
            return True

    def create_if_absent(self, key: str, data: bytes) -> bool:
        # A hard link from a complete temporary file: the object appears whole or not at all, and
        # link() fails when the name exists, in one system call (no lock to outlive a killed writer).
        path = self._path(key)
        tmp = _complete_file_beside(path, data, durable=True)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)

    @staticmethod
    def _read_with_token(path: Path) -> tuple[bytes | None, str]:
        if not path.is_file():
            return None, "0"
        data = path.read_bytes()
        return data, hashlib.sha256(data).hexdigest()

    @staticmethod
    @contextmanager
    def _locked(path: Path) -> Iterator[None]:
        # The lock is taken on the folder itself: no lock file is left behind.
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            yield
        finally:
            os.close(folder)  # closing releases the lock


def _complete_file_beside(path: Path, data: bytes, durable: bool = False) -> str:
    """A temporary file in `path`'s folder holding all of `data` (flushed to disk when `durable`),
    for an atomic rename or link onto `path`; removed again if writing it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


class GcsStorage(Storage):
    def __init__(self, uri: str) -> None:
        from google.cloud import storage as gcs

        self.bucket_name, self.prefix = split_gs_uri(uri)
        self.root_uri = uri.rstrip("/")
        self.client = _gcs_client(gcs)
        self.bucket = self.client.bucket(self.bucket_name)

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def read_bytes(self, key: str) -> bytes:
        from google.api_core import exceptions

        with self._reaching(key):
            try:
                return self.bucket.blob(self._name(key)).download_as_bytes(retry=_retry())
            except exceptions.NotFound:
                raise StorageError(f"{self.uri(key)} does not exist") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        from google.api_core import exceptions

        # Unconditional writes are retried too: every key the pipeline writes this way gets the
        # same bytes on a repeat (content-named versions, per-run artifacts), so a repeat is harmless.
        with self._reaching(key):
            for _ in range(_SESSION_RESTARTS + 1):
                try:
                    self.bucket.blob(self._name(key)).upload_from_string(data, retry=_retry())
                    return
                except exceptions.NotFound:
                    # Over 8 MiB the client uploads in a resumable session, which a server restart
                    # forgets (404 on the session): start over while the bucket is there.
                    if not self.bucket.exists(retry=_retry()):
                        raise StorageError(f"bucket gs://{self.bucket_name} does not exist") from None
            raise StorageError(f"{self.uri(key)}: the upload session was lost {_SESSION_RESTARTS + 1} times")

    def exists(self, key: str) -> bool:
        with self._reaching(key):
            return self.bucket.blob(self._name(key)).exists(retry=_retry())

    def list_keys(self, prefix: str = "") -> list[str]:
        return sorted(self._list_blobs(prefix))

    def modified_times(self, prefix: str = "") -> dict[str, float]:
        return {key: blob.updated.timestamp() for key, blob in self._list_blobs(prefix).items()}

    def sizes(self, prefix: str = "") -> dict[str, int]:
        return {key: int(blob.size or 0) for key, blob in self._list_blobs(prefix).items()}

    def entries(self, prefix: str) -> list[Entry]:
        """Every object under `prefix` (a bucket has no links or devices); a name ending in `/`
        is a folder placeholder, as the console creates them."""
        blobs = self._list_blobs(prefix)
        return [
            Entry(
                key,
                "folder" if key.endswith("/") else "file",
                int(blob.size or 0),
                blob.updated.timestamp() if blob.updated else 0.0,
            )
            for key, blob in sorted(blobs.items())
            if key != prefix
        ]

    def delete_entry(self, key: str) -> None:
        from google.api_core import exceptions

        # This one object: `delete` removes everything under a prefix, which would take
        # `incoming/a.npz.bak` along with `incoming/a.npz`.
        with self._reaching(key), suppress(exceptions.NotFound):
            self.bucket.blob(self._name(key)).delete(retry=_retry())

    def copy(self, source: str, target: str) -> None:
        from google.api_core import exceptions

        with self._reaching(source):
            try:  # the server copies: the bytes never pass through this process
                blob = self.bucket.blob(self._name(source))
                self.bucket.copy_blob(blob, self.bucket, self._name(target), retry=_retry())
            except exceptions.NotFound:
                raise StorageError(f"{self.uri(source)} does not exist") from None

    def _list_blobs(self, prefix: str) -> dict[str, Any]:
        from google.api_core import exceptions

        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._reaching(prefix):
            try:
                blobs = self.client.list_blobs(self.bucket_name, prefix=self._name(prefix), retry=_retry())
                return {blob.name[strip:]: blob for blob in blobs}
            except exceptions.NotFound:
                raise StorageError(f"bucket gs://{self.bucket_name} does not exist") from None

    def delete(self, key: str) -> None:
        from google.api_core import exceptions

        for name in self.list_keys(key):
            with self._reaching(name), suppress(exceptions.NotFound):  # gone already: a retried delete
                self.bucket.blob(self._name(name)).delete(retry=_retry())

    def read_versioned(self, key: str) -> tuple[bytes | None, str]:
        from google.api_core import exceptions

        blob = self.bucket.blob(self._name(key))
        with self._reaching(key):
            try:
                data = blob.download_as_bytes(retry=_retry())  # fills blob.generation from the same response
            except exceptions.NotFound:
                return None, "0"
        return data, str(blob.generation)

    def write_if_generation(self, key: str, data: bytes, generation: str) -> bool:
        from google.api_core import exceptions

        blob = self.bucket.blob(self._name(key))
        with self._reaching(key):
            try:
                # Safe to retry only because the precondition travels with every attempt.
                blob.upload_from_string(data, if_generation_match=int(generation), retry=_conditional_retry())
            except exceptions.PreconditionFailed:
                # A retried attempt fails its precondition when an earlier attempt did land (its
                # response lost in the outage): the object holding our bytes means we won.
                return self.read_versioned(key)[0] == data
        return True

    @contextmanager
    def _reaching(self, key: str) -> Iterator[None]:
        """Turn an outage that outlived the retry deadline into a `StorageError` naming the object."""
        import requests
        from google.api_core import exceptions

        try:
            yield
        except exceptions.RetryError as exc:
            raise StorageError(
                f"{self.uri(key)}: storage unreachable, gave up after {retry_deadline():g} s of retries "
                f"({exc.cause})"
            ) from exc
        except (ConnectionError, requests.exceptions.ConnectionError) as exc:
            raise StorageError(f"{self.uri(key)}: storage unreachable ({exc})") from exc


class CountingStorage(Storage):
    """A storage that counts every call of the interface made through it, then delegates it:
    what the registry benchmarks and tests measure read cost with."""

    def __init__(self, inner: Storage) -> None:
        self.inner, self.root_uri = inner, inner.root_uri
        self.hidden_entries_may_be_partial = inner.hidden_entries_may_be_partial
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, name: str, *args: Any) -> Any:
        with self._lock:
            self.calls[name] += 1
        return getattr(self.inner, name)(*args)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def read_bytes(self, key: str) -> bytes:
        return self._count("read_bytes", key)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._count("write_bytes", key, data)

    def exists(self, key: str) -> bool:
        return self._count("exists", key)

    def list_keys(self, prefix: str = "") -> list[str]:
        return self._count("list_keys", prefix)

    def delete(self, key: str) -> None:
        self._count("delete", key)

    def read_versioned(self, key: str) -> tuple[bytes | None, str]:
        return self._count("read_versioned", key)

    def write_if_generation(self, key: str, data: bytes, generation: str) -> bool:
        return self._count("write_if_generation", key, data, generation)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        return self._count("create_if_absent", key, data)

    def modified_times(self, prefix: str = "") -> dict[str, float]:
        return self._count("modified_times", prefix)

    def sizes(self, prefix: str = "") -> dict[str, int]:
        return self._count("sizes", prefix)

    def copy(self, source: str, target: str) -> None:
        self._count("copy", source, target)

    def entries(self, prefix: str) -> list[Entry]:
        return self._count("entries", prefix)

    def read_entry(self, key: str) -> bytes:
        return self._count("read_entry", key)

    def move_entry(self, key: str, target: str) -> None:
        self._count("move_entry", key, target)

    def delete_entry(self, key: str) -> None:
        self._count("delete_entry", key)


_SESSION_RESTARTS = 2  # a large upload started over after the server forgot its session


def _retry() -> Any:
    """google-cloud-storage's default policy (connection errors, 429 and 5xx, exponential backoff)
    with our deadline."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(retry_deadline())


def _conditional_retry() -> Any:
    """The same policy, applied only to requests that carry a generation precondition."""
    from google.cloud.storage.retry import ConditionalRetryPolicy, is_generation_specified

    return ConditionalRetryPolicy(_retry(), is_generation_specified, ["query_params"])


def _gcs_client(gcs):
    # With an emulator there are no credentials to find; anonymous access is what it expects.
    if settings().storage_emulator_host:
        from google.auth.credentials import AnonymousCredentials

        return gcs.Client(project="mnist-pipeline", credentials=AnonymousCredentials())
    return gcs.Client()


def split_gs_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/some/prefix` -> (`bucket`, `some/prefix`)."""
    if not uri.startswith("gs://"):
        raise StorageError(f"{uri!r} is not a gs:// URI")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} names no bucket")
    return bucket, prefix.strip("/")


def compare_and_swap(
    storage: Storage,
    key: str,
    decide: Callable[[bytes | None], tuple[bytes | None, _Result]],
    attempts: int = CAS_ATTEMPTS,
) -> _Result:
    """Update `key` from its current bytes until no other writer got in between.

    `decide(current)` (None when absent) returns (new bytes, result): None bytes write nothing and
    return the result at once; otherwise the bytes are written only if the object is still as it
    was read, and a lost race calls `decide` again on what the other writer left.
    """
    for _ in range(attempts):
        current, generation = storage.read_versioned(key)
        payload, result = decide(current)
        if payload is None or storage.write_if_generation(key, payload, generation):
            return result
    raise StorageError(f"{storage.uri(key)} kept changing; gave up after {attempts} attempts")


def open_storage(uri: str) -> Storage:
    """A `GcsStorage` for `gs://` URIs, a `LocalStorage` for paths (`file://` accepted)."""
    if uri.startswith("gs://"):
        return GcsStorage(uri)
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise StorageError(f"storage URI {uri!r}: only local paths and gs:// URIs are supported")
    return LocalStorage(uri)
