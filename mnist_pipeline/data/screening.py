"""What a batch of parsed shards is judged on before any is placed, each check done once for the
whole batch: one duplicate lookup for every image of every shard, one batched prediction by the
champion. Each shard is then judged on its own, in name order, against base MNIST, the shards
accepted before, and the shards of this batch accepted before it:

1. Blank images reject it (`shard_stats`).
2. The same images and labels as an accepted shard set it aside as a duplicate, naming that shard.
3. Copies of MNIST test images, or of the held-out new-data slice, reject it: the yardstick
   guard, since training on them would inflate the very accuracy the gate compares.
4. More than `DUPLICATE_SHARE` (5%) of its images copying base training images or accepted ones
   sets it aside as a duplicate, naming where most copies come from. A genuine collection copies
   none (two writers' digits differ in dozens of pixels, `duplicates`); 5% leaves room for a few
   digits re-sent within an otherwise new shard, which its statistics count.
5. With a champion, labels it confidently contradicts far beyond its own error quarantine the
   shard (`label_check`); without one the check is skipped, and the statistics say so.

A strongly skewed label histogram is accepted but flagged.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from mnist_pipeline.data.duplicates import DuplicateIndex
from mnist_pipeline.data.label_check import Champion, LabelCheck, check_labels, skipped_check
from mnist_pipeline.data.mnist import MnistData
from mnist_pipeline.data.shard_stats import ShardStatistics, shard_statistics
from mnist_pipeline.data.slices import held_out_mask

__all__ = [
    "ACCEPT",
    "DUPLICATE_SHARE",
    "QUARANTINE",
    "REJECT",
    "Candidate",
    "KnownShard",
    "Verdict",
    "Yardstick",
    "base_index",
    "content_hash",
    "screen",
]

log = logging.getLogger(__name__)
ACCEPT, REJECT, QUARANTINE = "accept", "reject", "quarantine"
DUPLICATE_SHARE = 0.05  # more copied images than this sets a shard aside as a duplicate
_TEST, _BASE = -1, -2  # origins of reference images that are no accepted shard
_COPIED = "(exactly, shifted by a pixel or with a few pixels changed)"


def content_hash(images: np.ndarray, labels: np.ndarray) -> str:
    """What a shard holds, whatever archive it came in: the same digits and labels hash equal."""
    digest = hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class KnownShard:
    """An accepted shard, as later shards are compared with it."""

    stored: str
    source: str
    images: np.ndarray
    labels: np.ndarray

    def named(self) -> str:
        return f"the accepted shard {self.stored!r} (sent as {self.source!r})"


@dataclass(frozen=True)
class Candidate:
    """A parsed shard of this batch: `stored` is the name it would be accepted under."""

    name: str
    stored: str
    uri: str
    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Verdict:
    outcome: str  # ACCEPT, REJECT or QUARANTINE
    category: str  # accepted, blank, duplicate, leak or labels
    reason: str | None = None
    statistics: ShardStatistics | None = None
    flags: tuple[str, ...] = ()


class Yardstick:
    """Every image a shard is compared with, in one index: base MNIST's test and training images,
    and the images of every accepted shard (their held-out slice marked)."""

    def __init__(self, base: MnistData, accepted: list[KnownShard]) -> None:
        self.known = accepted
        self.contents = {content_hash(shard.images, shard.labels): shard for shard in accepted}
        parts = [(base.x_test, _TEST), (base.x_train, _BASE)]
        parts += [(shard.images, k) for k, shard in enumerate(accepted)]
        self.index = base_index(base).extended(np.concatenate([s.images for s in accepted] or [_NO_IMAGES]))
        self.origin = np.concatenate([np.full(len(images), origin) for images, origin in parts])
        held = [np.zeros(len(base.x_test) + len(base.x_train), dtype=bool)]
        self.held = np.concatenate(held + [held_out_mask(shard.images) for shard in accepted])
        self.base_labels, self.base_ink = base.y_train, float(base.x_train.mean())


_NO_IMAGES = np.zeros((0, 28, 28), dtype=np.uint8)
_BASE_INDEXES: dict[str, DuplicateIndex] = {}  # the last base's, by its images' hash


def base_index(base: MnistData) -> DuplicateIndex:
    """The duplicate index of base MNIST's test then training images, built once per process for
    the same images (a process that checks several batches hashes 70,000 images once, not per
    batch); found by the images' sha256, so that other images never get a stale index."""
    digest = hashlib.sha256()
    for images in (base.x_test, base.x_train):
        digest.update(np.ascontiguousarray(images, dtype=np.uint8).data)
    key = digest.hexdigest()
    if key not in _BASE_INDEXES:
        index = DuplicateIndex.of(np.concatenate([base.x_test, base.x_train]))
        _BASE_INDEXES.clear()  # one MNIST at a time: 70,000 images and their tables are 80 MB
        _BASE_INDEXES[key] = index
    return _BASE_INDEXES[key]


def screen(candidates: list[Candidate], yardstick: Yardstick, champion: Champion | None) -> list[Verdict]:
    """A verdict for every candidate, in their order: each judged against those accepted before."""
    batch = _Batch(candidates, yardstick)
    needing = [k for k in range(len(candidates)) if not batch.refused(k)]
    checks = _label_checks(candidates, needing, champion)
    accepted: set[int] = set()
    verdicts = []
    for k in range(len(candidates)):
        # A shard not checked failed an order-free check already, and fails it again here.
        verdict = batch.verdict(k, accepted, checks.get(k) or skipped_check("an earlier check failed"))
        if verdict.outcome == ACCEPT:
            accepted.add(k)
        verdicts.append(verdict)
    return verdicts


@dataclass(frozen=True)
class _Copies:
    """What a shard's images copy: counts of test and held-out copies, and the origin of every
    other copied image."""

    test: int
    held: int
    origins: Counter[str]

    @property
    def copied(self) -> int:
        return sum(self.origins.values())


class _Batch:
    """The batch's images in one array, with every copy among them and of the yardstick found."""

    def __init__(self, candidates: list[Candidate], yardstick: Yardstick) -> None:
        self.candidates, self.yardstick = candidates, yardstick
        sizes = [len(candidate.images) for candidate in candidates]
        images = np.concatenate([candidate.images for candidate in candidates])
        self.shard_of = np.repeat(np.arange(len(candidates)), sizes)
        self.held = held_out_mask(images)
        self.known_pairs = yardstick.index.pairs(images)
        query, reference = DuplicateIndex.of(images).pairs(images)
        earlier = self.shard_of[reference] < self.shard_of[query]  # a shard never copies itself
        self.batch_pairs = (query[earlier], reference[earlier])
        self.contents = [content_hash(candidate.images, candidate.labels) for candidate in candidates]

    def refused(self, k: int) -> bool:
        """Whether shard `k` fails a check that no other shard of the batch can change (1-4 of
        the module's, before any is accepted): then it needs no label check."""
        candidate = self.candidates[k]
        stats = shard_statistics(candidate.images, candidate.labels, *self._base())
        return isinstance(self._refusal(k, set(), stats), Verdict)

    def verdict(self, k: int, accepted: set[int], check: LabelCheck) -> Verdict:
        """Shard `k`'s verdict, with the batch's shards `accepted` so far and its label check."""
        candidate = self.candidates[k]
        stats = shard_statistics(candidate.images, candidate.labels, *self._base())
        refusal = self._refusal(k, accepted, stats)
        if isinstance(refusal, Verdict):
            return refusal
        stats = replace(stats, copied_images=refusal.copied, label_check=check)
        if check.verdict:
            reason = _label_reason(candidate.uri, check)
            return Verdict(QUARANTINE, "labels", reason, stats)
        return Verdict(ACCEPT, "accepted", None, stats, (stats.skew,) if stats.skew else ())

    def _base(self) -> tuple[np.ndarray, float]:
        return self.yardstick.base_labels, self.yardstick.base_ink

    def _refusal(self, k: int, accepted: set[int], stats: ShardStatistics) -> Verdict | _Copies:
        """The verdict of the first check (1-4 of the module's) the shard fails, else its copies."""
        uri, total = self.candidates[k].uri, stats.images
        if stats.blank_images:
            reason = f"{stats.blank_images} of {total} images are blank (no stroke)"
            return Verdict(REJECT, "blank", f"data source {uri!r}: {reason}")
        original = self._same_content(k, accepted)
        if original:
            reason = f"the same images and labels as {original}; set aside as a duplicate"
            return Verdict(REJECT, "duplicate", f"data source {uri!r}: {reason}")
        copies = self._copies(k, accepted)
        for count, what in ((copies.test, "MNIST test images"), (copies.held, "held-out new-data images")):
            if count:
                reason = (
                    f"{count} of {total} images duplicate {what} {_COPIED}; training on them would leak"
                    " the yardstick"
                )
                return Verdict(REJECT, "leak", f"data source {uri!r}: {reason}")
        if copies.copied > DUPLICATE_SHARE * total:
            return Verdict(REJECT, "duplicate", f"data source {uri!r}: {_copies_reason(copies, total)}")
        return copies

    def _same_content(self, k: int, accepted: set[int]) -> str | None:
        known = self.yardstick.contents.get(self.contents[k])
        if known is not None:
            return known.named()
        for earlier in sorted(accepted):
            if self.contents[earlier] == self.contents[k]:
                return self._batch_named(earlier)
        return None

    def _batch_named(self, k: int) -> str:
        candidate = self.candidates[k]
        return f"the accepted shard {candidate.stored!r} (sent as {candidate.name!r})"

    def _copies(self, k: int, accepted: set[int]) -> _Copies:
        query, reference = self.known_pairs
        mine = self.shard_of[query] == k
        query, reference = query[mine], reference[mine]
        origin = self.yardstick.origin[reference]
        held = self.yardstick.held[reference]
        test = len(np.unique(query[origin == _TEST]))
        held_queries = set(query[(origin >= 0) & held].tolist())
        origins = {
            int(q): self._known_named(int(o)) for q, o in zip(query, origin, strict=True) if o != _TEST
        }
        batch_query, batch_reference = self.batch_pairs
        taken = (self.shard_of[batch_query] == k) & np.isin(self.shard_of[batch_reference], list(accepted))
        for q, r in zip(batch_query[taken].tolist(), batch_reference[taken].tolist(), strict=True):
            if self.held[r]:
                held_queries.add(q)
            origins.setdefault(q, self._batch_named(int(self.shard_of[r])))
        for q in held_queries:
            origins.pop(q, None)  # counted as a leak, not as a duplicate
        return _Copies(test, len(held_queries), Counter(origins.values()))

    def _known_named(self, origin: int) -> str:
        return "base MNIST training images" if origin == _BASE else self.yardstick.known[origin].named()


def _copies_reason(copies: _Copies, total: int) -> str:
    source, count = copies.origins.most_common(1)[0]
    others = copies.copied - count
    more = f", {others} more copy other images" if others else ""
    return (
        f"{copies.copied} of {total} images ({copies.copied / total:.0%}) copy images already known"
        f" {_COPIED}, more than {DUPLICATE_SHARE:.0%}: {count} copy {source}{more}; set aside as a duplicate"
    )


def _label_reason(uri: str, check: LabelCheck) -> str:
    error = "unknown" if check.champion_error is None else f"{check.champion_error:.1%}"
    return (
        f"data source {uri!r}: {check.verdict} (the champion {check.champion} contradicts"
        f" {check.disagreement:.0%} of its {check.confident} confident predictions; its own test error"
        f" on these classes is {error}; quarantined at {check.threshold:.0%} or more)"
    )


def _label_checks(
    candidates: list[Candidate], needing: list[int], champion: Champion | None
) -> dict[int, LabelCheck]:
    """Each shard's label check, from one prediction over every image of the shards `needing` it."""
    if champion is None:
        return {k: skipped_check("no champion in the registry yet") for k in needing}
    if not needing:
        return {}  # nothing to predict: the model is never loaded
    try:
        probabilities = champion.predict(np.concatenate([candidates[k].images for k in needing]))
    except Exception as exc:  # the model could not be loaded or run: accept unchecked, and say so
        log.exception("the champion %s could not check the labels", champion.name)
        why = f"the champion could not predict ({type(exc).__name__}: {exc})"
        return {k: skipped_check(why, champion.name) for k in needing}
    bounds = np.cumsum([len(candidates[k].images) for k in needing])[:-1]
    parts = np.split(np.asarray(probabilities), bounds)
    return {
        k: check_labels(part, candidates[k].labels, champion) for k, part in zip(needing, parts, strict=True)
    }
