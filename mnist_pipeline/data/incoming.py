"""New labelled data: entries that land under `<artifacts>/incoming/`, each processed exactly once.

A shard is an `.npz` with `images` (N x 28 x 28 uint8) and `labels` (N, 0-9). Anyone with write
access may drop anything there, and a data-triggered run retrains on what is accepted with nobody
watching, so nothing dropped there may harm the store:

- Every entry is examined as it is, from one listing, never through a link (`Storage.entries`):
  a symbolic link, a folder, a device, a FIFO or a socket is set aside unread with its reason,
  and its target is never read, moved or deleted. A name holding control characters, bytes that
  are not UTF-8 or path steps is set aside too (`names`); every other name (long, Unicode,
  spaces, a leading dot) is judged as a shard. On a file system, a hidden name (a leading dot)
  changed within `HIDDEN_GRACE_SECONDS` is left for the next run: tools that write and then
  rename (rsync, this package's own storage) write under such names.
- Each entry is claimed by creating a claim object that may not exist yet (compare-and-swap), so
  two overlapping runs never both take it and a retried run picks up its own claims; a claim
  older than its lease (`MNIST_CLAIM_LEASE_SECONDS`) whose entry still waits was left by a killed
  worker, and the next run takes it over.
- Sizes are checked before anything is decompressed (`MNIST_MAX_SHARD_BYTES`,
  `MNIST_MAX_SHARD_IMAGES`; see `npz.py`). The shards that parse are then judged together, in
  batches of up to `_BATCH_BYTES` (`screening`): blank images, duplicates of accepted shards or
  of base MNIST, the yardstick guard (copies of test images or of the held-out new-data slice),
  and, with a champion, its view of the labels (`label_check`). Claims, reads and placements run
  `_PARALLEL` at a time, since they wait on storage.
- A valid shard moves to `accepted/` with a sidecar JSON (sha256, image count, statistics,
  flags); one whose labels look wrong to `quarantine/`, anything else to `rejected/` (set aside),
  each with a `.reason.txt`. Stored names start with a digest; where the sender's name could not
  stand beside its reason, a safe one is derived and the sender's name is recorded (`names`).
- Every entry is judged on its own: whatever reading or checking one raises sets it aside with
  its reason, and an entry that cannot even be placed (an OSError, a storage outage) is left for
  the next run; neither fails the run or the entries after it. Each run adds its outcomes to a
  summary the registry page shows (`incoming_summary`).

Accepted shards wait until at least `MNIST_MIN_NEW_IMAGES` images are pending, then are announced
once (an Airflow Asset event): a trickle of tiny shards does not retrain every few minutes.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.data.incoming_summary import record_outcomes
from mnist_pipeline.data.label_check import Champion
from mnist_pipeline.data.mnist import MnistData, check_images, check_labels
from mnist_pipeline.data.names import claim_name, name_problem, stored_name
from mnist_pipeline.data.npz import NpzLimits, read_npz_arrays
from mnist_pipeline.data.screening import (
    ACCEPT,
    QUARANTINE,
    Candidate,
    KnownShard,
    Verdict,
    Yardstick,
    content_hash,
    screen,
)
from mnist_pipeline.errors import DataError, StorageError
from mnist_pipeline.hashing import read_verified, sha256_hex
from mnist_pipeline.storage import Entry, Storage, compare_and_swap

__all__ = [
    "ACCEPTED",
    "CLAIMS",
    "HIDDEN_GRACE_SECONDS",
    "INCOMING",
    "NEW_DATA_ASSET_NAME",
    "QUARANTINED",
    "REJECTED",
    "ShardReport",
    "accepted_shards",
    "announce_pending",
    "parse_shard",
    "process_incoming",
    "read_accepted",
    "shard_limits",
]

NEW_DATA_ASSET_NAME = "mnist_new_labelled_data"
INCOMING, ACCEPTED, REJECTED, QUARANTINED = "incoming/", "accepted/", "rejected/", "quarantine/"
CLAIMS = "incoming-claims/"
ANNOUNCED_KEY = "incoming-state/announced.json"
HIDDEN_GRACE_SECONDS = 60.0  # a hidden entry changed this recently may still be being written
_PARALLEL = 8  # entries claimed, read and placed at once
_BATCH_BYTES = 512 * 1024**2  # entries (by listed size) read and screened together
log = logging.getLogger(__name__)
_Result = TypeVar("_Result")
_ENTRY_PROBLEMS = {
    "folder": "a folder, not a shard: shards are .npz files placed directly in incoming/; set aside whole,"
    " unread",
    "device": "a device, not a file; set aside unread",
    "fifo": "a FIFO (named pipe), not a file; set aside unread",
    "socket": "a socket, not a file; set aside unread",
    "unknown": "not a regular file; set aside unread",
}


def shard_limits(settings: PipelineSettings) -> NpzLimits:
    """The most bytes and images one shard may hold (`MNIST_MAX_SHARD_BYTES`, `_IMAGES`)."""
    return NpzLimits(settings.max_shard_bytes, settings.max_shard_images)


def parse_shard(raw: bytes, uri: str, limits: NpzLimits) -> tuple[np.ndarray, np.ndarray]:
    """A shard's (images, labels), read within `limits` (`shard_limits`) and validated; every
    defect raises `DataError` naming the shard."""
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
    rejected: list[dict[str, Any]] = field(default_factory=list)  # set aside, with their reasons
    quarantined: list[dict[str, Any]] = field(default_factory=list)  # labels that look wrong
    skipped: list[str] = field(default_factory=list)  # claimed by another run
    waiting: list[str] = field(default_factory=list)  # hidden names that may still be being written
    left: list[dict[str, Any]] = field(default_factory=list)  # could not be placed: the next run tries

    def merge(self, other: ShardReport) -> None:
        for name in ("accepted", "rejected", "quarantined", "skipped", "waiting", "left"):
            getattr(self, name).extend(getattr(other, name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "quarantined": self.quarantined,
            "skipped": self.skipped,
            "waiting": self.waiting,
            "left": self.left,
        }


def process_incoming(
    artifacts: Storage,
    run_id: str,
    base: MnistData,
    champion: Champion | None = None,
    settings: PipelineSettings | None = None,
) -> ShardReport:
    """Claim, check and place every entry waiting under `incoming/`, judged against `base` (and
    the labels against `champion`'s predictions, when there is one), within the limits and claim
    lease of `settings` (the defaults without them).

    Each entry is judged on its own: whatever reading or checking it raises, it is set aside with
    its reason and the others go on, so no entry can jam the queue."""
    report = ShardReport()
    stage = _Stage(artifacts, run_id, base, settings or PipelineSettings(), champion)
    entries = [entry for entry in artifacts.entries(INCOMING) if entry.key != INCOMING]
    for batch in _batches(entries):
        _process_batch(stage, batch, report)
    try:
        record_outcomes(artifacts, report.to_dict(), run_id)
    except StorageError as exc:  # the page's summary only: the entries are placed all the same
        log.warning("the incoming summary was not updated: %s", exc)
    return report


def _batches(entries: list[Entry]) -> list[list[Entry]]:
    """The entries in name order, cut where the next would take a batch past `_BATCH_BYTES`: a
    batch's shards are all in memory at once, and a later batch is checked against the shards
    the earlier ones accepted."""
    batches: list[list[Entry]] = [[]]
    size = 0
    for entry in entries:
        if batches[-1] and size + entry.size > _BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(entry)
        size += entry.size
    return [batch for batch in batches if batch]


def _process_batch(stage: _Stage, entries: list[Entry], report: ShardReport) -> None:
    """Claim and parse the entries, screen the shards together, place each."""
    taken = [
        shard for shard in _each(stage, report, [(entry.key, (entry,)) for entry in entries], _take) if shard
    ]
    if not taken:
        return
    verdicts = screen([shard.candidate for shard in taken], _yardstick(stage), stage.champion)
    placed = [(shard.key, (shard, verdict)) for shard, verdict in zip(taken, verdicts, strict=True)]
    _each(stage, report, placed, _place)


@dataclass
class _Stage:
    """What every entry of one run is judged with."""

    artifacts: Storage
    run_id: str
    base: MnistData
    config: PipelineSettings
    champion: Champion | None = None

    def limits(self) -> NpzLimits:
        return shard_limits(self.config)

    def claim(self, identity: str) -> bool:
        return _claim(self.artifacts, _claim_key(identity), self.run_id, self.config.claim_lease_seconds)


@dataclass(frozen=True)
class _Taken:
    """A shard this run claimed and parsed, waiting for its verdict."""

    key: str
    raw: bytes
    digest: str
    candidate: Candidate


def _name(key: str) -> str:
    return key.removeprefix(INCOMING)


def _shown(name: str) -> str:
    """The name as reports show it: as sent, or escaped where it holds what a report should not."""
    return name if name_problem(name) is None else repr(name)[1:-1]


def _each(
    stage: _Stage,
    report: ShardReport,
    items: list[tuple[str, tuple[Any, ...]]],
    work: Callable[..., _Result],
) -> list[_Result | None]:
    """`work(stage, *arguments, report)` for every (entry key, arguments), each guarded on its own
    and run `_PARALLEL` at a time: the work waits on storage (a bucket answers in milliseconds, and
    200 tiny shards make over a thousand requests). Each keeps its own report, merged in order."""

    def one(key: str, arguments: tuple[Any, ...]) -> tuple[_Result | None, ShardReport]:
        mine = ShardReport()
        return _guarded(stage, key, mine, functools.partial(work, stage, *arguments, mine)), mine

    with ThreadPoolExecutor(max_workers=_PARALLEL) as pool:
        results = list(pool.map(lambda item: one(*item), items))
    for _, mine in results:
        report.merge(mine)
    return [result for result, _ in results]


class _NotSetAside(Exception):
    """Setting an entry aside failed (a storage outage, an OSError): it stays where it is."""

    def __init__(self, reason: str, cause: BaseException) -> None:
        super().__init__(f"{reason}; not set aside ({type(cause).__name__}: {cause}): left for the next run")


def _guarded(stage: _Stage, key: str, report: ShardReport, work: Callable[[], _Result]) -> _Result | None:
    """`work` on one entry; whatever it raises stays with that entry."""
    name = _name(key)
    try:
        return work()
    except (StorageError, _NotSetAside) as exc:  # the store failed us: leave it for the next run
        log.warning("entry %r left for the next run: %s", name, exc)
        report.left.append({"shard": _shown(name), "reason": str(exc)})
        return None
    except Exception as exc:  # anything the entry made us raise: set it aside, go on with the rest
        log.exception("entry %r could not be checked", name)
        reason = f"data source {stage.artifacts.uri(key)!r}: {type(exc).__name__}: {exc}"
    try:
        _set_aside(stage, key, "invalid", reason, report)
    except _NotSetAside as exc:
        log.warning("entry %r left for the next run: %s", name, exc)
        report.left.append({"shard": _shown(name), "reason": str(exc)})
    return None


def _take(stage: _Stage, entry: Entry, report: ShardReport) -> _Taken | None:
    """Claim the entry and parse it; an entry refused on its listing, or a file that is no valid
    shard, is set aside here. None: nothing left for the batch."""
    name, uri = _name(entry.key), stage.artifacts.uri(entry.key)
    if stage.artifacts.hidden_entries_may_be_partial and _still_written(entry, name):
        report.waiting.append(_shown(name))
        return None
    refusal = _refusal(entry, name, stage.config)
    if refusal is not None:
        category, tag, problem = refusal
        if stage.claim(claim_name(name, tag)):
            _set_aside(stage, entry.key, category, f"data source {uri!r}: {problem}", report)
        else:
            report.skipped.append(_shown(name))
        return None
    raw = stage.artifacts.read_entry(entry.key)
    digest = sha256_hex(raw)
    if not stage.claim(claim_name(name, digest[:16])):
        report.skipped.append(_shown(name))
        return None
    try:
        images, labels = parse_shard(raw, uri, stage.limits())
    except DataError as exc:
        _set_aside(stage, entry.key, "invalid", str(exc), report)
        return None
    return _Taken(entry.key, raw, digest, Candidate(name, stored_name(name, digest), uri, images, labels))


def _still_written(entry: Entry, name: str) -> bool:
    return (
        name.startswith(".") and entry.kind == "file" and time.time() - entry.modified < HIDDEN_GRACE_SECONDS
    )


def _refusal(entry: Entry, name: str, config: PipelineSettings) -> tuple[str, str, str] | None:
    """(category, claim tag, problem) of an entry refused on its listing alone, never opened."""
    if entry.kind == "link":
        return (
            "link",
            f"link-{entry.modified:.0f}",
            (
                f"a symbolic link (to {entry.target!r}), not a file: links are never followed, so it is set"
                " aside unread and its target is left as it is"
            ),
        )
    if entry.kind == "unreadable":
        return "unreadable", "unreadable", f"could not be examined ({entry.error}); set aside unread"
    if entry.kind != "file":
        return entry.kind, f"{entry.kind}-{entry.modified:.0f}", _ENTRY_PROBLEMS[entry.kind]
    problem = name_problem(name)
    if problem is not None:
        return "name", f"{entry.size}-name", f"{problem}; rename it and send it again"
    if entry.size > config.max_shard_bytes:
        return (
            "invalid",
            f"{entry.size}-oversized",
            (f"{entry.size} bytes, more than the limit of {config.max_shard_bytes} (MNIST_MAX_SHARD_BYTES)"),
        )
    if not name.endswith(".npz") or "/" in name:
        return "invalid", f"{entry.size}", "not a shard: shards are .npz files placed directly in incoming/"
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


def _set_aside(
    stage: _Stage, key: str, category: str, reason: str, report: ShardReport, folder: str = REJECTED
) -> None:
    """Move the entry itself to `folder` (`rejected/`, or `quarantine/`) with its reason; one that
    cannot be moved raises `_NotSetAside` with the reason it would have had."""
    name = _name(key)
    try:
        stored = _move_aside(stage, key, reason, folder)
    except Exception as exc:
        raise _NotSetAside(reason, exc) from exc
    outcome = report.quarantined if folder == QUARANTINED else report.rejected
    outcome.append({"shard": _shown(name), "reason": reason, "category": category, "stored": stored})
    log.warning("%s %r: %s", "quarantined" if folder == QUARANTINED else "set aside", name, reason)


def _move_aside(stage: _Stage, key: str, reason: str, folder: str) -> str:
    """The reason file first, then the entry beside it: a run killed in between leaves the entry
    to be judged again. Returns the stored name (the sender's recorded where it differs)."""
    name = _name(key)
    salt = sha256_hex(f"{name}:{time.time()}".encode("utf-8", "surrogateescape"))
    stored = stored_name(name, salt)
    plain = stored == f"{salt[:16]}-{name.replace('/', '__')}"
    note = reason if plain else f"{reason}\noriginal name: {name!r}"
    stage.artifacts.write_bytes(f"{folder}{stored}.reason.txt", f"{note}\n".encode())
    try:
        stage.artifacts.move_entry(key, f"{folder}{stored}")
    except BaseException:
        stage.artifacts.delete_entry(f"{folder}{stored}.reason.txt")
        raise
    return stored


def _place(stage: _Stage, shard: _Taken, verdict: Verdict, report: ShardReport) -> None:
    """Accept, set aside or quarantine a screened shard, as its verdict says."""
    if verdict.outcome == ACCEPT:
        _accept(stage, shard, verdict, report)
    else:
        folder = QUARANTINED if verdict.outcome == QUARANTINE else REJECTED
        _set_aside(stage, shard.key, verdict.category, verdict.reason or verdict.category, report, folder)
        if folder == QUARANTINED and verdict.statistics is not None:
            report.quarantined[-1]["statistics"] = verdict.statistics.to_dict()


def _accept(stage: _Stage, shard: _Taken, verdict: Verdict, report: ShardReport) -> None:
    candidate, artifacts = shard.candidate, stage.artifacts
    info = {
        "shard": candidate.stored,
        "source": candidate.name,
        "sha256": shard.digest,
        "content_sha256": content_hash(candidate.images, candidate.labels),
        "images": len(candidate.images),
        "statistics": verdict.statistics.to_dict() if verdict.statistics else {},
        "flags": list(verdict.flags),
    }
    artifacts.write_bytes(f"{ACCEPTED}{candidate.stored}", shard.raw)
    artifacts.write_json(f"{ACCEPTED}{candidate.stored}.json", info)  # sidecar last: marks it complete
    artifacts.delete_entry(shard.key)
    report.accepted.append(info)
    flags = f", flagged: {verdict.flags[0]}" if verdict.flags else ""
    log.info("accepted shard %r: %d images%s", candidate.name, len(candidate.images), flags)


def _yardstick(stage: _Stage) -> Yardstick:
    limits = stage.limits()
    known = [
        KnownShard(shard["shard"], shard.get("source", ""), *read_accepted(stage.artifacts, shard, limits))
        for shard in accepted_shards(stage.artifacts)
    ]
    return Yardstick(stage.base, known)


def accepted_shards(artifacts: Storage) -> list[dict[str, Any]]:
    """Every completely accepted shard's sidecar, in name order."""
    return [artifacts.read_json(key) for key in artifacts.list_keys(ACCEPTED) if key.endswith(".npz.json")]


def read_accepted(
    artifacts: Storage, shard: dict[str, Any], limits: NpzLimits
) -> tuple[np.ndarray, np.ndarray]:
    """An accepted shard's (images, labels), refused unless its bytes are those accepted."""
    key = f"{ACCEPTED}{shard['shard']}"
    return parse_shard(read_verified(artifacts, key, shard["sha256"], DataError), artifacts.uri(key), limits)


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
