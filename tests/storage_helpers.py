"""Storages for tests and benchmarks: one that counts every call it passes on, and one that lets a
rival writer win the race for the registry's next commit."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from mnist_pipeline.registry.log import commit_number
from mnist_pipeline.storage import Entry, Storage

__all__ = ["CountingStorage", "RacingStorage"]


class CountingStorage(Storage):
    """A storage that counts every call of the interface made through it, then delegates it:
    what the registry tests and benchmarks measure storage cost with."""

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


class RacingStorage(CountingStorage):
    """Lets `rival` commit first, the first time anyone tries to create a commit of the log: the
    writer under test then finds its commit number taken, as when another process wins the race."""

    def __init__(self, inner: Storage, rival: Callable[[], Any]) -> None:
        super().__init__(inner)
        self.rival, self.raced, self.lost = rival, False, 0

    def create_if_absent(self, key: str, data: bytes) -> bool:
        if commit_number(key) is not None and not self.raced:
            self.raced = True
            self.rival()
        won = super().create_if_absent(key, data)
        self.lost += not won
        return won
