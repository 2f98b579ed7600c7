"""The model registry: published versions and the champion pointer, on any `Storage`.

Layout under the registry root (all of it: `layout`):
    mnist/models/<model>/<version>/model.keras, saved_model/..., metrics.json, metadata.json
    mnist/champion.json   -> {model, version, uri, metrics, promoted_at, run_id}
    mnist/index/versions.json   -> every committed version's summary (`index`)
Other aliases than the champion are moved by `aliases`, with the pointer checks of this module.

`metadata.json` is written last and lists the sha256 of every other file: a version without it is
incomplete and never listed, so readers never see a half-published version.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mnist_pipeline.config import settings
from mnist_pipeline.errors import RegistryError, StorageError
from mnist_pipeline.evaluation.metrics import labels_from_npy
from mnist_pipeline.hashing import read_verified, sha256_hex
from mnist_pipeline.registry.index import index_version
from mnist_pipeline.registry.layout import CHAMPION_KEY, METADATA_FILE, MODELS_PREFIX
from mnist_pipeline.registry.records import ChampionPointer
from mnist_pipeline.storage import Storage, compare_and_swap

__all__ = ["CHAMPION_KEY", "ModelRegistry", "VersionRef", "parse_ref", "validate_name"]
log = logging.getLogger(__name__)
_Result = TypeVar("_Result")

PREDICTIONS_FILE = "predictions.npy"
# Names become object paths: letters, digits, '.', '_', '-' only, and never '..'.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_PATTERN.match(name) or ".." in name:
        raise RegistryError(
            f"{kind} name {name!r} is not allowed: use letters, digits, '.', '_' or '-' "
            "(no slashes, no '..', at most 128 characters)"
        )
    return name


@dataclass(frozen=True)
class VersionRef:
    model: str
    version: str

    def __post_init__(self) -> None:
        validate_name("model", self.model)
        validate_name("version", self.version)

    @property
    def prefix(self) -> str:
        return f"{MODELS_PREFIX}{self.model}/{self.version}"

    def __str__(self) -> str:
        return f"{self.model}/{self.version}"


class ModelRegistry:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def uri(self, ref: VersionRef) -> str:
        return self.storage.uri(ref.prefix)

    def publish(self, ref: VersionRef, local_dir: Path, metadata: dict[str, Any]) -> dict[str, Any]:
        """Upload every file of `local_dir`, then `metadata.json` with their sha256 (the commit mark),
        then the version's entry in the versions index."""
        if self.is_published(ref):
            published = self.metadata(ref)  # idempotent: a retried task re-publishes nothing
            # An earlier try may have died between its commit mark and the index.
            index_version(self.storage, ref.model, ref.version, published)
            return published
        self.remove_stale_uploads(keep=ref)
        files = {
            path.relative_to(local_dir).as_posix(): sha256_hex(path.read_bytes())
            for path in sorted(Path(local_dir).rglob("*"))
            if path.is_file() and path.name != METADATA_FILE
        }
        self.storage.upload_dir(local_dir, ref.prefix)
        full = {**metadata, "model": ref.model, "version": ref.version, "files_sha256": files}
        self.storage.write_json(f"{ref.prefix}/{METADATA_FILE}", full)
        index_version(self.storage, ref.model, ref.version, full)
        return full

    def remove_stale_uploads(self, keep: VersionRef) -> list[VersionRef]:
        """Delete versions without their commit mark whose newest file is older than
        `MNIST_STALE_UPLOAD_SECONDS`: what a publish killed mid-upload left. Younger ones may still
        be uploading in another process, and `keep` is about to be rewritten anyway."""
        newest: dict[VersionRef, float] = {}
        committed: set[VersionRef] = set()
        for key, modified in self.storage.modified_times(MODELS_PREFIX).items():
            ref = _version_of(key)
            if ref is None:
                continue
            newest[ref] = max(newest.get(ref, 0.0), modified)
            if key == f"{ref.prefix}/{METADATA_FILE}":
                committed.add(ref)
        cutoff = time.time() - settings().stale_upload_seconds
        stale = [ref for ref, at in newest.items() if ref not in committed and ref != keep and at < cutoff]
        for ref in stale:
            log.warning("removing %s: an upload that never committed (no %s)", self.uri(ref), METADATA_FILE)
            self.storage.delete(ref.prefix)
        return stale

    def is_published(self, ref: VersionRef) -> bool:
        return self.storage.exists(f"{ref.prefix}/{METADATA_FILE}")

    def metadata(self, ref: VersionRef) -> dict[str, Any]:
        try:
            return self.storage.read_json(f"{ref.prefix}/{METADATA_FILE}")
        except StorageError:
            raise RegistryError(f"unknown version {ref} in registry {self.storage.root_uri}") from None

    def versions(self) -> list[VersionRef]:
        """Every completely published version, oldest version name first within each model."""
        refs = []
        for key in self.storage.list_keys(MODELS_PREFIX):
            parts = key.split("/")
            if len(parts) == 5 and parts[4] == METADATA_FILE:
                refs.append(VersionRef(parts[2], parts[3]))
        return sorted(refs, key=lambda ref: (ref.model, ref.version))

    def champion(self) -> ChampionPointer | None:
        return self.parse_champion(self.storage.read_versioned(CHAMPION_KEY)[0])

    def parse_champion(self, data: bytes | None) -> ChampionPointer | None:
        """The champion pointer stored as `data` (None: no champion yet); malformed: `RegistryError`."""
        if data is None:
            return None
        return ChampionPointer.from_dict(self.parse_json(CHAMPION_KEY, data), self.storage.uri(CHAMPION_KEY))

    def parse_json(self, key: str, data: bytes) -> Any:
        """A pointer object's bytes as JSON; bytes that are not JSON: `RegistryError` naming the object."""
        try:
            return json.loads(data)
        except ValueError as exc:
            raise RegistryError(f"{self.storage.uri(key)} is not valid JSON ({exc})") from None

    def champion_payload(self, pointer: ChampionPointer, role: str = "champion") -> bytes:
        """`pointer` as the bytes of `champion.json`, or of the pointer of the alias `role` names;
        it must point at a completely published version."""
        ref = VersionRef(pointer.model, pointer.version)
        if not self.is_published(ref):
            raise RegistryError(f"cannot make {ref} {role}: it is not completely published")
        return json.dumps(pointer.to_dict(), indent=2, sort_keys=True).encode()

    def move_champion(
        self, decide: Callable[[ChampionPointer | None], tuple[ChampionPointer | None, _Result]]
    ) -> _Result:
        """Compare-and-swap on `champion.json`: `decide(current)` returns (the new pointer, or None to
        leave it, and a result); a lost race decides again on the pointer the other writer left."""

        def on_bytes(data: bytes | None) -> tuple[bytes | None, _Result]:
            pointer, result = decide(self.parse_champion(data))
            return (None if pointer is None else self.champion_payload(pointer)), result

        return compare_and_swap(self.storage, CHAMPION_KEY, on_bytes)

    def champion_ref(self) -> VersionRef | None:
        champion = self.champion()
        return VersionRef(champion.model, champion.version) if champion else None

    def predictions(self, ref: VersionRef) -> np.ndarray:
        """The version's predicted labels on the test set it was evaluated on (sha256-verified)."""
        return labels_from_npy(self.verified_file(ref, PREDICTIONS_FILE))

    def verified_file(self, ref: VersionRef, name: str) -> bytes:
        """A version's file, refused unless its bytes match the sha256 recorded at publication."""
        expected = self.metadata(ref).get("files_sha256", {}).get(name)
        if expected is None:
            raise RegistryError(f"version {ref} has no file {name!r}")
        return read_verified(self.storage, f"{ref.prefix}/{name}", expected)


def _version_of(key: str) -> VersionRef | None:
    """The version a registry key belongs to; None for keys that are no version's file."""
    parts = key.split("/")
    if len(parts) < 5 or parts[1] != "models":
        return None
    try:
        return VersionRef(parts[2], parts[3])
    except RegistryError:
        return None  # not a name this registry would have written: leave it alone


def parse_ref(text: str) -> VersionRef:
    """`MODEL/VERSION` -> VersionRef, with the names validated."""
    model, slash, version = text.partition("/")
    if not slash:
        raise RegistryError(f"{text!r} is not MODEL/VERSION")
    return VersionRef(model, version)
