"""The champion's SavedModel in TF Serving's layout: `<registry>/serving/mnist/<n>/`.

TF Serving, pointed at `<registry>/serving/mnist` (a folder or a gs:// prefix), serves the highest
integer-named folder and picks up each new one as it appears. Each export copies the published
version's `saved_model/` (every file checked against the sha256 its `metadata.json` recorded,
before anything is written) into the next number, and records which version that number is in
`<n>.json` beside it (TF Serving ignores names that are not integers).

- The number is claimed by creating `<n>.json` only if it does not exist yet (compare-and-swap),
  so two exports never share a folder; `saved_model.pb` is written last, so a server listing the
  folder mid-copy finds no model yet rather than a partial one.
- Idempotent: when the newest export already is the version, nothing new is written (an export
  cut short is completed). A version that is champion again after another (A, B, A) gets a new
  number: the server must switch back to it.
- A release that is no longer the champion (a later one superseded it) is not exported: the
  server would switch to a model that no longer serves.
- Without a release (a run started by hand or by the clock), the current champion is exported;
  with no champion yet there is nothing to export (`NoChampionError`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from mnist_pipeline.errors import RegistryError, StorageError
from mnist_pipeline.hashing import read_verified
from mnist_pipeline.records import Record
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.release import Release
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.runs import utc_now
from mnist_pipeline.storage import CAS_ATTEMPTS, Storage

__all__ = [
    "SERVING_ROOT",
    "ExportOutcome",
    "NoChampionError",
    "ServingExport",
    "export_release",
    "export_version",
    "serving_exports",
]

SERVING_ROOT = "serving/mnist"  # TF Serving's model base path, under the registry root
_SAVED_MODEL = "saved_model/"
_GRAPH = "saved_model.pb"  # written last: its presence means the folder is complete
_NUMBERED = re.compile(rf"^{SERVING_ROOT}/(\d+)(?:/|\.json$)")


class NoChampionError(RegistryError):
    """No release to export and no champion yet: nothing to serve, not a fault."""


@dataclass(frozen=True)
class ServingExport(Record):
    """`<n>.json`: which registry version the folder `<n>/` holds, and its files' sha256."""

    number: int
    model: str
    version: str
    uri: str  # the registry version it was copied from
    files_sha256: dict[str, str]  # relative to <n>/
    exported_at: str

    def is_version(self, ref: VersionRef) -> bool:
        return (self.model, self.version) == (ref.model, ref.version)


@dataclass(frozen=True)
class ExportOutcome(Record):
    """What an export did, for the task's XCom: the folder, or why there is none."""

    model: str
    version: str
    written: bool  # False: already exported, or superseded
    number: int | None = None
    path: str | None = None  # the <n>/ folder's URI
    note: str = ""
    files: list[str] = field(default_factory=list[str])  # written by this export


def export_release(registry: Registry, release: Release | None) -> ExportOutcome:
    """Export the release an event announced (None: the current champion), if it still is champion."""
    champion = registry.champion()
    if release is None:
        if champion is None:
            raise NoChampionError("nothing to export: no mnist_champion event and no champion yet")
        release = Release.of(champion)
    ref = VersionRef(release.model, release.version)
    if release.uri != registry.uri(ref):
        raise RegistryError(
            f"the release names {release.uri}, but this registry holds {ref} at {registry.uri(ref)}"
        )
    if champion is None or not champion.is_version(ref.model, ref.version):
        now = f"{champion.model}/{champion.version}" if champion else "no champion"
        note = f"{ref} is no longer the champion ({now}): not exported, a server would serve it"
        return ExportOutcome(ref.model, ref.version, written=False, note=note)
    return export_version(registry, ref)


def export_version(registry: Registry, ref: VersionRef) -> ExportOutcome:
    """Copy `ref`'s SavedModel to the next `<n>/`, unless the newest export already is `ref`."""
    files = _verified_saved_model(registry, ref)
    storage = registry.storage
    for _ in range(CAS_ATTEMPTS):
        numbers = _numbers(storage)
        latest = _read_export(storage, max(numbers)) if numbers else None
        if latest is not None and latest.is_version(ref):
            return _complete(storage, latest, files, claimed=False)
        number = max(numbers, default=0) + 1
        digests = {name: sha for name, (sha, _) in files.items()}
        claim = ServingExport(number, ref.model, ref.version, registry.uri(ref), digests, utc_now())
        payload = json.dumps(claim.to_dict(), indent=2, sort_keys=True).encode()
        if storage.write_if_generation(_record_key(number), payload, "0"):
            return _complete(storage, claim, files, claimed=True)
    raise StorageError(f"{storage.uri(SERVING_ROOT)}: other exports kept taking the next number")


def serving_exports(storage: Storage) -> list[ServingExport]:
    """Every recorded export, lowest number first."""
    return [export for n in _numbers(storage) if (export := _read_export(storage, n)) is not None]


def _verified_saved_model(registry: Registry, ref: VersionRef) -> dict[str, tuple[str, bytes]]:
    """Each file of the version's SavedModel (name relative to it) with its sha256 and verified
    bytes: a tampered or truncated file stops the export before anything is written."""
    recorded = registry.metadata(ref).get("files_sha256", {})
    wanted = {name: sha for name, sha in recorded.items() if name.startswith(_SAVED_MODEL)}
    if f"{_SAVED_MODEL}{_GRAPH}" not in wanted:
        raise RegistryError(f"version {ref} has no {_SAVED_MODEL}{_GRAPH} to export for serving")
    return {
        name.removeprefix(_SAVED_MODEL): (sha, read_verified(registry.storage, f"{ref.prefix}/{name}", sha))
        for name, sha in wanted.items()
    }


def _complete(
    storage: Storage, export: ServingExport, files: dict[str, tuple[str, bytes]], claimed: bool
) -> ExportOutcome:
    """Write the files `<n>/` lacks, the graph last; an export already complete writes nothing."""
    folder = f"{SERVING_ROOT}/{export.number}"
    present = set(storage.list_keys(f"{folder}/"))
    missing = sorted((name for name in files if f"{folder}/{name}" not in present), key=lambda n: n == _GRAPH)
    for name in missing:
        storage.write_bytes(f"{folder}/{name}", files[name][1])
    written = claimed or bool(missing)
    note = f"exported as {export.number}" if written else f"already exported as {export.number}"
    return ExportOutcome(
        export.model, export.version, written, export.number, storage.uri(folder), note, missing
    )


def _numbers(storage: Storage) -> list[int]:
    """Every number in use: recorded exports and folders alike (a folder put there by hand too)."""
    keys = storage.list_keys(f"{SERVING_ROOT}/")
    return sorted({int(match.group(1)) for key in keys if (match := _NUMBERED.match(key))})


def _read_export(storage: Storage, number: int) -> ServingExport | None:
    """The record of `<number>/`; None when that folder has none (not ours: a new number is taken)."""
    key = _record_key(number)
    if not storage.exists(key):
        return None
    return ServingExport.from_dict(storage.read_json(key), storage.uri(key))


def _record_key(number: int) -> str:
    return f"{SERVING_ROOT}/{number}.json"
