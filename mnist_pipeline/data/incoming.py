"""New labelled data: shards that land under `<artifacts>/incoming/`, each processed exactly once.

A shard is an `.npz` with `images` (N x 28 x 28 uint8) and `labels` (N, 0-9). Processing claims the
shard by creating a claim object that may not exist yet (compare-and-swap), so two overlapping runs
never both take it and a retried run picks up its own claims. A valid shard moves to `accepted/`
with a sidecar JSON (sha256, image count); an invalid one to `rejected/` with a `.reason.txt`.

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

from mnist_pipeline.data.mnist import check_images, check_labels
from mnist_pipeline.errors import DataError, StorageError
from mnist_pipeline.hashing import sha256_hex
from mnist_pipeline.storage import Storage, compare_and_swap

__all__ = [
    "ACCEPTED",
    "NEW_DATA_ASSET_NAME",
    "ShardReport",
    "accepted_shards",
    "announce_pending",
    "parse_shard",
    "process_incoming",
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


def process_incoming(artifacts: Storage, run_id: str) -> ShardReport:
    """Claim, validate and place every shard waiting under `incoming/`."""
    report = ShardReport()
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
        _place(artifacts, name, raw, digest, report)
        artifacts.delete(key)
    return report


def _claim(artifacts: Storage, claim_key: str, run_id: str) -> bool:
    """True when this run owns the shard: it created the claim now, or in an earlier try."""
    payload = json.dumps({"run_id": run_id}).encode()
    if artifacts.write_if_generation(claim_key, payload, "0"):
        return True
    return json.loads(artifacts.read_bytes(claim_key)).get("run_id") == run_id


def _place(artifacts: Storage, name: str, raw: bytes, digest: str, report: ShardReport) -> None:
    stored = f"{digest[:16]}-{name}"  # content in the name: a re-sent shard never overwrites another
    try:
        images, _ = parse_shard(raw, artifacts.uri(f"{INCOMING}{name}"))
    except DataError as exc:
        artifacts.write_bytes(f"{REJECTED}{stored}", raw)
        artifacts.write_bytes(f"{REJECTED}{stored}.reason.txt", f"{exc}\n".encode())
        report.rejected.append({"shard": name, "reason": str(exc)})
        log.warning("rejected shard %s: %s", name, exc)
        return
    info = {"shard": stored, "source": name, "sha256": digest, "images": len(images)}
    artifacts.write_bytes(f"{ACCEPTED}{stored}", raw)
    artifacts.write_json(f"{ACCEPTED}{stored}.json", info)  # sidecar last: marks the shard complete
    report.accepted.append(info)
    log.info("accepted shard %s: %d images", name, len(images))


def accepted_shards(artifacts: Storage) -> list[dict[str, Any]]:
    """Every completely accepted shard's sidecar, in name order."""
    return [artifacts.read_json(key) for key in artifacts.list_keys(ACCEPTED) if key.endswith(".npz.json")]


def announce_pending(artifacts: Storage, threshold: int) -> dict[str, Any] | None:
    """Mark the accepted shards not yet announced as announced, if they hold >= `threshold` images.

    Returns the announcement (shards, image count) or None below the threshold. Compare-and-swap
    on the ledger: overlapping runs never announce the same shard twice.
    """

    def decide(raw: bytes | None) -> tuple[bytes | None, dict[str, Any] | None]:
        announced = set(json.loads(raw)["shards"]) if raw else set()
        pending = [s for s in accepted_shards(artifacts) if s["shard"] not in announced]
        images = sum(s["images"] for s in pending)
        if not pending or images < threshold:
            return None, None
        ledger = {"shards": sorted(announced | {s["shard"] for s in pending})}
        return json.dumps(ledger, indent=2).encode(), {
            "shards": [s["shard"] for s in pending],
            "images": images,
        }

    return compare_and_swap(artifacts, ANNOUNCED_KEY, decide)
