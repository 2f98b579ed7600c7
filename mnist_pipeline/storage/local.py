"""The storage over a local folder: atomic writes by rename, compare-and-swap under a folder lock.

Entries of folders that anyone may write into are examined as they are (lstat): a symbolic link,
a folder, a device or a FIFO is reported as such, moved as itself (a rename) and never opened, so
its target is never read, moved or deleted.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Generator
from contextlib import contextmanager, suppress
from pathlib import Path

from mnist_pipeline.errors import StorageError
from mnist_pipeline.storage.base import Entry, Storage

__all__ = ["LocalStorage"]


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
    def _entry(prefix: str, item: os.DirEntry[str]) -> Entry:
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
    def _locked(path: Path) -> Generator[None]:
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
