"""New labelled data: shards that land under `<artifacts>/incoming/`, each processed exactly once.

A shard is an `.npz` with `images` (N x 28 x 28 uint8) and `labels` (N, 0-9). Processing claims the
shard by creating a claim object that may not exist yet (compare-and-swap), so two overlapping runs
never both take it and a retried run picks up its own claims; a claim older than its lease
(`MNIST_CLAIM_LEASE_SECONDS`) whose file still waits was left by a killed worker, and the next run
takes it over. Every file is judged on its own: anything it makes the reader raise rejects that
file with its reason, never the batch. Sizes are checked before anything is decompressed
(`MNIST_MAX_SHARD_BYTES`, `MNIST_MAX_SHARD_IMAGES`; see `npz.py`). A valid shard moves to `accepted/`
with a sidecar JSON (sha256, image count, statistics, flags); an invalid one to `rejected/` with a
`.reason.txt`.

The yardstick guard: a shard holding images that duplicate MNIST test images (exactly, shifted by
a pixel, or with a few pixels changed) is rejected, since training on them would inflate the very
accuracy the gate compares; so is one that duplicates images of the held-out `new_data` slice, or
that holds blank images. A strongly skewed label histogram is accepted but flagged.

Accepted shards wait until at least `MNIST_MIN_NEW_IMAGES` images are pending, then are announced
once (an Airflow Asset event): a trickle of tiny shards does not retrain every few minutes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnist_pipeline.config import PipelineSettings, settings
from mnist_pipeline.data.duplicates import DuplicateIndex
from mnist_pipeline.data.mnist import MnistData, check_images, check_labels
from mnist_pipeline.data.npz import NpzLimits, read_npz_arrays
from mnist_pipeline.data.shard_stats import ShardStatistics, shard_statistics
from mnist_pipeline.data.slices import held_out_mask
from mnist_pipeline.errors import DataError, StorageError
from mnist_pipeline.hashing import read_verified, sha256_hex
from mnist_pipeline.storage import Storage, compare_and_swap

__all__ = [
    "ACCEPTED",
    "INCOMING",
    "NEW_DATA_ASSET_NAME",
    "ShardReport",
    "Yardstick",
    "accepted_shards",
    "announce_pending",
    "parse_shard",
    "process_incoming",
    "read_accepted",
]

NEW_DATA_ASSET_NAME = "mnist_new_labelled_data"
INCOMING, ACCEPTED, REJECTED = "incoming/", "accepted/", "rejected/"
CLAIMS = "incoming-claims/"
ANNOUNCED_KEY = "incoming-state/announced.json"
log = logging.getLogger(__name__)


def parse_shard(raw: bytes, uri: str, limits: NpzLimits | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A shard's (images, labels), read within `limits` (the settings' by default) and validated;
    every defect raises `DataError` naming the shard."""
    if limits is None:
        config = settings()
        limits = NpzLimits(config.max_shard_bytes, config.max_shard_images)
    arrays = read_npz_arrays(raw, ("images", "labels"), uri, limits)
    images, labels = arrays["images"], arrays["labels"]
    check_images(images, "images", uri)
    check_labels(labels, "labels", uri)
    if len(images) != len(labels):
        raise DataError(f"data source {uri!r}: {len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.uint8)


@dataclass
class ShardReport:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # claimed by another run

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": self.rejected, "skipped": self.skipped}


class Yardstick:
    """What every shard is checked against: base MNIST's test images, label shares and ink, and
    the held-out slice of the shards accepted so far (it grows as this run accepts more)."""

    def __init__(self, base: MnistData, held_out: np.ndarray) -> None:
        self.test_index = DuplicateIndex.of(base.x_test)
        self.held_out = DuplicateIndex.of(held_out)
        self.base_labels, self.base_ink = base.y_train, float(base.x_train.mean())

    @classmethod
    def of(cls, base: MnistData, artifacts: Storage) -> Yardstick:
        held = [images[held_out_mask(images)] for images, _ in _accepted_arrays(artifacts)]
        return cls(base, np.concatenate(held) if held else np.zeros((0, 28, 28), dtype=np.uint8))

    def check(self, images: np.ndarray, labels: np.ndarray, uri: str) -> ShardStatistics:
        """The shard's statistics; blank images or duplicates of the yardstick raise `DataError`."""
        stats = shard_statistics(images, labels, self.base_labels, self.base_ink)
        total = len(images)
        if stats.blank_images:
            raise DataError(
                f"data source {uri!r}: {stats.blank_images} of {total} images are blank (no stroke)"
            )
        for duplicated, what in (
            (self.test_index, "MNIST test images"),
            (self.held_out, "held-out new-data images"),
        ):
            count = int(duplicated.duplicates(images).sum())
            if count:
                raise DataError(
                    f"data source {uri!r}: {count} of {total} images duplicate {what} (exactly, shifted by a"
                    " pixel or with a few pixels changed); training on them would leak the yardstick"
                )
        return stats

    def accept(self, images: np.ndarray) -> None:
        """Add an accepted shard's held-out images, so later shards are checked against them too."""
        held = images[held_out_mask(images)]
        if len(held):
            self.held_out = DuplicateIndex.of(np.concatenate([self.held_out.images, held]))


def process_incoming(artifacts: Storage, run_id: str, base: MnistData) -> ShardReport:
    """Claim, validate and place every file waiting under `incoming/`, judged against `base`.

    Each file is judged on its own: whatever reading or checking it raises, it is rejected with
    its reason and the others go on, so no file can jam the queue."""
    report = ShardReport()
    stage = _Stage(artifacts, run_id, base, settings())
    for key, size in artifacts.sizes(INCOMING).items():
        name = key.removeprefix(INCOMING)
        try:
            _process_one(stage, key, name, size, report)
        except StorageError as exc:  # the store itself failed: leave the file for the next run
            log.warning("shard %s left for the next run: %s", name, exc)
        except Exception as exc:  # anything the file made us raise: reject it, go on with the rest
            log.exception("shard %s could not be checked", name)
            _reject(
                stage, key, name, f"data source {artifacts.uri(key)!r}: {type(exc).__name__}: {exc}", report
            )
    return report


@dataclass
class _Stage:
    """What every file of one run is judged with; the yardstick is built on the first shard."""

    artifacts: Storage
    run_id: str
    base: MnistData
    config: PipelineSettings
    yardstick: Yardstick | None = None

    def limits(self) -> NpzLimits:
        return NpzLimits(self.config.max_shard_bytes, self.config.max_shard_images)

    def claim(self, identity: str) -> bool:
        return _claim(self.artifacts, _claim_key(identity), self.run_id, self.config.claim_lease_seconds)


def _process_one(stage: _Stage, key: str, name: str, size: int, report: ShardReport) -> None:
    refusal = _refusal_from_listing(name, size, stage.config)
    if refusal is not None:
        identity, problem = refusal
        if stage.claim(identity):
            _reject(stage, key, name, f"data source {stage.artifacts.uri(key)!r}: {problem}", report)
        else:
            report.skipped.append(name)
        return
    raw = stage.artifacts.read_bytes(key)
    digest = sha256_hex(raw)
    if not stage.claim(f"{name}-{digest[:16]}"):
        report.skipped.append(name)
        return
    stage.yardstick = stage.yardstick or Yardstick.of(stage.base, stage.artifacts)
    _place(stage, stage.yardstick, key, name, raw, digest, report)


def _refusal_from_listing(name: str, size: int, config: PipelineSettings) -> tuple[str, str] | None:
    """(claim identity, problem) for a file refused on its listing alone, never read into memory."""
    if size > config.max_shard_bytes:
        return f"{name}-{size}-oversized", (
            f"{size} bytes, more than the limit of {config.max_shard_bytes} (MNIST_MAX_SHARD_BYTES)"
        )
    if not name.endswith(".npz") or "/" in name:
        return f"{name}-{size}", "not a shard: shards are .npz files placed directly in incoming/"
    return None


def _claim_key(identity: str) -> str:
    return f"{CLAIMS}{identity.replace('/', '__')}.json"


def _claim(artifacts: Storage, claim_key: str, run_id: str, lease_seconds: float) -> bool:
    """True when this run owns the file: it claimed it now or in an earlier try, or took it over
    from a run whose claim outlived its lease (a worker killed between claiming and placing)."""
    now = time.time()
    payload = json.dumps({"run_id": run_id, "claimed_at": now}).encode()

    def decide(current: bytes | None) -> tuple[bytes | None, bool]:
        if current is None:
            return payload, True
        owner, claimed_at = _claim_of(artifacts, claim_key, current)
        if owner == run_id:
            return None, True
        if now - claimed_at <= lease_seconds:
            return None, False
        log.warning(
            "taking over %s: claimed by %s %.0f s ago, past its lease", claim_key, owner, now - claimed_at
        )
        return payload, True

    return compare_and_swap(artifacts, claim_key, decide)


def _claim_of(artifacts: Storage, claim_key: str, current: bytes) -> tuple[str, float]:
    """(owner, claimed at) of a stored claim; claims written before leases existed carry no time,
    and their object's write time stands in for it."""
    try:
        claim = json.loads(current)
        owner = str(claim["run_id"])
    except (ValueError, KeyError, TypeError):
        return "an unreadable claim", 0.0
    if isinstance(claim.get("claimed_at"), int | float):
        return owner, float(claim["claimed_at"])
    return owner, artifacts.modified_times(claim_key).get(claim_key, 0.0)


def _stored_name(name: str, digest: str) -> str:
    """Content in the name, so a re-sent shard never overwrites another; folders flattened."""
    return f"{digest[:16]}-{name.replace('/', '__')}"


def _reject(stage: _Stage, key: str, name: str, reason: str, report: ShardReport) -> None:
    """Move the file to `rejected/` with a reason file beside it (copied first, then removed)."""
    stored = _stored_name(name, sha256_hex(f"{name}:{time.time()}".encode()))
    stage.artifacts.copy(key, f"{REJECTED}{stored}")
    stage.artifacts.write_bytes(f"{REJECTED}{stored}.reason.txt", f"{reason}\n".encode())
    stage.artifacts.delete(key)
    report.rejected.append({"shard": name, "reason": reason})
    log.warning("rejected %s: %s", name, reason)


def _place(
    stage: _Stage, yardstick: Yardstick, key: str, name: str, raw: bytes, digest: str, report: ShardReport
) -> None:
    artifacts, uri = stage.artifacts, stage.artifacts.uri(key)
    try:
        images, labels = parse_shard(raw, uri, stage.limits())
        stats = yardstick.check(images, labels, uri)
    except DataError as exc:
        _reject(stage, key, name, str(exc), report)
        return
    stored = _stored_name(name, digest)
    flags = [stats.skew] if stats.skew else []
    info = {
        "shard": stored,
        "source": name,
        "sha256": digest,
        "images": len(images),
        "statistics": stats.to_dict(),
        "flags": flags,
    }
    artifacts.write_bytes(f"{ACCEPTED}{stored}", raw)
    artifacts.write_json(f"{ACCEPTED}{stored}.json", info)  # sidecar last: marks the shard complete
    artifacts.delete(key)
    yardstick.accept(images)
    report.accepted.append(info)
    log.info("accepted shard %s: %d images%s", name, len(images), f", flagged: {flags[0]}" if flags else "")


def accepted_shards(artifacts: Storage) -> list[dict[str, Any]]:
    """Every completely accepted shard's sidecar, in name order."""
    return [artifacts.read_json(key) for key in artifacts.list_keys(ACCEPTED) if key.endswith(".npz.json")]


def read_accepted(artifacts: Storage, shard: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """An accepted shard's (images, labels), refused unless its bytes are those accepted."""
    key = f"{ACCEPTED}{shard['shard']}"
    return parse_shard(read_verified(artifacts, key, shard["sha256"], DataError), artifacts.uri(key))


def _accepted_arrays(artifacts: Storage) -> list[tuple[np.ndarray, np.ndarray]]:
    return [read_accepted(artifacts, shard) for shard in accepted_shards(artifacts)]


def announce_pending(artifacts: Storage, threshold: int) -> dict[str, Any] | None:
    """Mark the accepted shards not yet announced as announced, if they hold >= `threshold` images.

    Returns the announcement (shards, image count, flagged shards) or None below the threshold.
    Compare-and-swap on the ledger: overlapping runs never announce the same shard twice.
    """

    def decide(raw: bytes | None) -> tuple[bytes | None, dict[str, Any] | None]:
        announced = set(json.loads(raw)["shards"]) if raw else set()
        pending = [s for s in accepted_shards(artifacts) if s["shard"] not in announced]
        images = sum(s["images"] for s in pending)
        if not pending or images < threshold:
            return None, None
        ledger = {"shards": sorted(announced | {s["shard"] for s in pending})}
        flagged = [{"shard": s["shard"], "flags": s["flags"]} for s in pending if s.get("flags")]
        announcement = {"shards": [s["shard"] for s in pending], "images": images, "flagged": flagged}
        return json.dumps(ledger, indent=2).encode(), announcement

    return compare_and_swap(artifacts, ANNOUNCED_KEY, decide)
