"""New labelled data: shards that land under `<artifacts>/incoming/`, each processed exactly once.

A shard is an `.npz` with `images` (N x 28 x 28 uint8) and `labels` (N, 0-9). Processing claims the
shard by creating a claim object that may not exist yet (compare-and-swap), so two overlapping runs
never both take it and a retried run picks up its own claims. A valid shard moves to `accepted/`
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

import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnist_pipeline.data.duplicates import DuplicateIndex
from mnist_pipeline.data.mnist import MnistData, check_images, check_labels
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


def parse_shard(raw: bytes, uri: str) -> tuple[np.ndarray, np.ndarray]:
    """A shard's (images, labels), validated; every defect raises `DataError` naming the shard."""
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            missing = sorted({"images", "labels"} - set(npz.files))
            if missing:
                raise DataError(f"data source {uri!r}: shard lacks arrays {missing}")
            images, labels = npz["images"], npz["labels"]
    except (OSError, ValueError, EOFError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"data source {uri!r}: not a readable .npz shard ({exc})") from exc
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
    """Claim, validate and place every shard waiting under `incoming/`, judged against `base`."""
    report = ShardReport()
    yardstick: Yardstick | None = None  # built on the first shard: most runs find none
    for key in artifacts.list_keys(INCOMING):
        name = key.removeprefix(INCOMING)
        if not name.endswith(".npz") or "/" in name:
            continue
        try:
            raw = artifacts.read_bytes(key)
        except StorageError:
            continue  # another run moved it between our listing and our read
        digest = sha256_hex(raw)
        if not _claim(artifacts, f"{CLAIMS}{name}-{digest[:16]}.json", run_id):
            report.skipped.append(name)
            continue
        yardstick = yardstick or Yardstick.of(base, artifacts)
        _place(artifacts, name, raw, digest, report, yardstick)
        artifacts.delete(key)
    return report


def _claim(artifacts: Storage, claim_key: str, run_id: str) -> bool:
    """True when this run owns the shard: it created the claim now, or in an earlier try."""
    payload = json.dumps({"run_id": run_id}).encode()
    if artifacts.write_if_generation(claim_key, payload, "0"):
        return True
    return json.loads(artifacts.read_bytes(claim_key)).get("run_id") == run_id


def _place(
    artifacts: Storage, name: str, raw: bytes, digest: str, report: ShardReport, yardstick: Yardstick
) -> None:
    stored = f"{digest[:16]}-{name}"  # content in the name: a re-sent shard never overwrites another
    uri = artifacts.uri(f"{INCOMING}{name}")
    try:
        images, labels = parse_shard(raw, uri)
        stats = yardstick.check(images, labels, uri)
    except DataError as exc:
        artifacts.write_bytes(f"{REJECTED}{stored}", raw)
        artifacts.write_bytes(f"{REJECTED}{stored}.reason.txt", f"{exc}\n".encode())
        report.rejected.append({"shard": name, "reason": str(exc)})
        log.warning("rejected shard %s: %s", name, exc)
        return
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
