"""The storage interface every backend implements, and the one read-decide-write loop over it.

Keys are `/`-separated paths relative to a storage root. `compare_and_swap` is the one
read-decide-write loop every shared object (the champion pointer, the incoming ledger) is updated
through. Folders that anyone may write into are read through `entries`, `read_entry`,
`move_entry` and `delete_entry`, which backends implement without ever following a link.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mnist_pipeline.errors import StorageError

__all__ = ["CAS_ATTEMPTS", "ENTRY_KINDS", "Entry", "Storage", "compare_and_swap"]

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
        written: list[str] = []
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
