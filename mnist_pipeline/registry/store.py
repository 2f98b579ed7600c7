"""Version names and the files of versions, on any `Storage`:
    mnist/models/<model>/<version>/model.keras, saved_model/..., metrics.json, metadata.json

`metadata.json` is written last and lists the sha256 of every other file. A version is published
only once a commit of the registry's log says so (`client`), after its files are all uploaded.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.errors import RegistryError
from mnist_pipeline.evaluation.metrics import labels_from_npy
from mnist_pipeline.hashing import read_verified, sha256_hex
from mnist_pipeline.records import is_json_object
from mnist_pipeline.registry.layout import METADATA_FILE, MODELS_PREFIX
from mnist_pipeline.storage import Storage

__all__ = ["VersionRef", "VersionStore", "parse_ref", "validate_name"]
log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.npy"
# Names become object paths: letters, digits, '.', '_', '-' only, and never '..'.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_name(kind: str, name: object) -> str:
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


class VersionStore:
    """The files of published versions under `mnist/models/`: uploads, metadata and verified reads.
    Whether a version is published is the log's to say (`client.Registry`), not this store's."""

    def __init__(
        self, storage: Storage, stale_upload_seconds: float = PipelineSettings.stale_upload_seconds
    ) -> None:
        self.storage = storage
        self.stale_upload_seconds = stale_upload_seconds

    def uri(self, ref: VersionRef) -> str:
        return self.storage.uri(ref.prefix)

    def upload(self, ref: VersionRef, local_dir: Path, metadata: dict[str, Any]) -> dict[str, Any]:
        """Upload every file of `local_dir`, then `metadata.json` with their sha256; returns the
        metadata. A version whose metadata.json exists is uploaded already (a retried task, or a
        version published before): its metadata is returned and nothing is written."""
        existing = self.storage.read_versioned(f"{ref.prefix}/{METADATA_FILE}")[0]
        if existing is not None:
            return self.parse_metadata(ref, existing)
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

    def remove_stale_uploads(
        self, keep: VersionRef, published: set[VersionRef] | None = None
    ) -> list[VersionRef]:
        """Delete versions without their metadata.json whose newest file is older than
        `stale_upload_seconds` (`MNIST_STALE_UPLOAD_SECONDS`): what an upload killed midway left.
        Younger ones may still be uploading in another process, and `keep` is about to be
        rewritten anyway."""
        newest: dict[VersionRef, float] = {}
        committed: set[VersionRef] = set(published or ())
        for key, modified in self.storage.modified_times(MODELS_PREFIX).items():
            ref = _version_of(key)
            if ref is None:
                continue
            newest[ref] = max(newest.get(ref, 0.0), modified)
            if key == f"{ref.prefix}/{METADATA_FILE}":
                committed.add(ref)
        cutoff = time.time() - self.stale_upload_seconds
        stale = [ref for ref, at in newest.items() if ref not in committed and ref != keep and at < cutoff]
        for ref in stale:
            log.warning("removing %s: an upload that never committed (no %s)", self.uri(ref), METADATA_FILE)
            self.storage.delete(ref.prefix)
        return stale

    def uploaded(self) -> list[VersionRef]:
        """Every version whose files are uploaded completely (its metadata.json exists)."""
        refs: list[VersionRef] = []
        for key in self.storage.list_keys(MODELS_PREFIX):
            parts = key.split("/")
            if len(parts) == 5 and parts[4] == METADATA_FILE:
                try:
                    refs.append(VersionRef(parts[2], parts[3]))
                except RegistryError:
                    continue  # not a name this registry would have written
        return sorted(refs, key=lambda ref: (ref.model, ref.version))

    def metadata(self, ref: VersionRef) -> dict[str, Any]:
        key = f"{ref.prefix}/{METADATA_FILE}"
        data = self.storage.read_versioned(key)[0]
        if data is None:
            raise RegistryError(f"unknown version {ref} in registry {self.storage.root_uri}")
        return self.parse_metadata(ref, data)

    def parse_metadata(self, ref: VersionRef, data: bytes) -> dict[str, Any]:
        key = f"{ref.prefix}/{METADATA_FILE}"
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise RegistryError(f"{key} of version {ref} is unreadable: not valid JSON ({exc})") from None
        if not is_json_object(payload):
            raise RegistryError(f"{key} of version {ref} is unreadable: not a JSON object")
        return payload

    def predictions(self, ref: VersionRef) -> np.ndarray:
        """The version's predicted labels on the test set it was evaluated on (sha256-verified)."""
        return labels_from_npy(self.verified_file(ref, PREDICTIONS_FILE))

    def verified_file(self, ref: VersionRef, name: str) -> bytes:
        """A version's file, refused unless its bytes match the sha256 recorded at publication."""
        files = self.metadata(ref).get("files_sha256", {})
        expected = files.get(name) if is_json_object(files) else None
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
