"""The model registry: published versions and the champion pointer, on any `Storage`.

Layout under the registry root:
    mnist/models/<model>/<version>/model.keras, saved_model/..., metrics.json, metadata.json
    mnist/champion.json   -> {model, version, uri, metrics, promoted_at, run_id}

`metadata.json` is written last and lists the sha256 of every other file: a version without it is
incomplete and never listed, so readers never see a half-published version.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_pipeline.errors import ConfigError, RegistryError, StorageError
from mnist_pipeline.sources import sha256_hex
from mnist_pipeline.storage import Storage

__all__ = [
    "ModelRegistry",
    "VersionRef",
    "brief",
    "chain_pointer",
    "parse_ref",
    "stale_upload_seconds",
    "validate_name",
]
log = logging.getLogger(__name__)

ROOT = "mnist"
CHAMPION_KEY = f"{ROOT}/champion.json"
METADATA_FILE = "metadata.json"
PREDICTIONS_FILE = "predictions.npy"
POINTER_HISTORY_DEPTH = 10  # how many earlier champions a pointer remembers, for rollback
# Names become object paths: letters, digits, '.', '_', '-' only, and never '..'.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# An uncommitted version untouched this long is a crashed publish's leftover, not one in progress.
STALE_UPLOAD_ENV = "MNIST_STALE_UPLOAD_SECONDS"
DEFAULT_STALE_UPLOAD_S = 3600.0


def stale_upload_seconds() -> float:
    raw = os.environ.get(STALE_UPLOAD_ENV) or str(DEFAULT_STALE_UPLOAD_S)
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"environment variable {STALE_UPLOAD_ENV} must be a number, got {raw!r}") from None


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
        return f"{ROOT}/models/{self.model}/{self.version}"

    def __str__(self) -> str:
        return f"{self.model}/{self.version}"


class ModelRegistry:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def uri(self, ref: VersionRef) -> str:
        return self.storage.uri(ref.prefix)

    def publish(self, ref: VersionRef, local_dir: Path, metadata: dict[str, Any]) -> dict[str, Any]:
        """Upload every file of `local_dir`, then `metadata.json` with their sha256 (the commit mark)."""
        if self.is_published(ref):
            return self.metadata(ref)  # idempotent: a retried task re-publishes nothing
        self.remove_stale_uploads(keep=ref)
        files = {
            path.relative_to(local_dir).as_posix(): sha256_hex(path.read_bytes())
            for path in sorted(Path(local_dir).rglob("*"))
            if path.is_file() and path.name != METADATA_FILE
        }
        self.storage.upload_dir(local_dir, ref.prefix)
        full = {**metadata, "model": ref.model, "version": ref.version, "files_sha256": files}
        self.storage.write_json(f"{ref.prefix}/{METADATA_FILE}", full)
        return full

    def remove_stale_uploads(self, keep: VersionRef) -> list[VersionRef]:
        """Delete versions without their commit mark whose newest file is older than
        `MNIST_STALE_UPLOAD_SECONDS`: what a publish killed mid-upload left. Younger ones may still
        be uploading in another process, and `keep` is about to be rewritten anyway."""
        newest: dict[VersionRef, float] = {}
        committed: set[VersionRef] = set()
        for key, modified in self.storage.modified_times(f"{ROOT}/models/").items():
            ref = _version_of(key)
            if ref is None:
                continue
            newest[ref] = max(newest.get(ref, 0.0), modified)
            if key == f"{ref.prefix}/{METADATA_FILE}":
                committed.add(ref)
        cutoff = time.time() - stale_upload_seconds()
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
        for key in self.storage.list_keys(f"{ROOT}/models/"):
            parts = key.split("/")
            if len(parts) == 5 and parts[4] == METADATA_FILE:
                refs.append(VersionRef(parts[2], parts[3]))
        return sorted(refs, key=lambda ref: (ref.model, ref.version))

    def champion(self) -> dict[str, Any] | None:
        return self.champion_versioned()[0]

    def champion_versioned(self) -> tuple[dict[str, Any] | None, str]:
        """The champion pointer and its generation, for a later `swap_champion`."""
        data, generation = self.storage.read_versioned(CHAMPION_KEY)
        return (json.loads(data) if data is not None else None), generation

    def swap_champion(self, pointer: dict[str, Any], generation: str) -> bool:
        """Point at a completely published version, only if the pointer is still at `generation`.

        Returns False when another promotion moved the pointer first: re-read, re-decide.
        """
        ref = VersionRef(pointer["model"], pointer["version"])
        if not self.is_published(ref):
            raise RegistryError(f"cannot make {ref} champion: it is not completely published")
        payload = json.dumps(pointer, indent=2, sort_keys=True).encode()
        return self.storage.write_if_generation(CHAMPION_KEY, payload, generation)

    def predictions(self, ref: VersionRef) -> np.ndarray:
        """The version's predicted labels on the test set it was evaluated on (sha256-verified)."""
        return np.load(io.BytesIO(self.verified_file(ref, PREDICTIONS_FILE)), allow_pickle=False)

    def verified_file(self, ref: VersionRef, name: str) -> bytes:
        """A version's file, refused unless its bytes match the sha256 recorded at publication."""
        expected = self.metadata(ref)["files_sha256"].get(name)
        if expected is None:
            raise RegistryError(f"version {ref} has no file {name!r}")
        data = self.storage.read_bytes(f"{ref.prefix}/{name}")
        if sha256_hex(data) != expected:
            raise RegistryError(f"version {ref}: {name} does not match its recorded sha256; refusing it")
        return data


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


def chain_pointer(pointer: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """`pointer` remembering `previous` (and its predecessors, up to a fixed depth) for rollback."""
    if previous is None:
        return pointer
    trimmed = node = dict(previous)
    for _ in range(POINTER_HISTORY_DEPTH - 1):
        if not isinstance(node.get("previous"), dict):
            break
        node["previous"] = dict(node["previous"])
        node = node["previous"]
    node.pop("previous", None)
    return {**pointer, "previous": trimmed}


def brief(pointer: dict[str, Any] | None) -> dict[str, Any] | None:
    """A pointer's identity and figures, without its chain of predecessors (for history events)."""
    if pointer is None:
        return None
    return {"model": pointer["model"], "version": pointer["version"], "metrics": pointer.get("metrics")}
