"""A shard's labels checked against the champion's confident predictions (confident learning).

Confident learning (Northcutt, Jiang and Chuang, 2021) finds label errors where a trained model
confidently predicts a class other than the given label. Its library, cleanlab, would bring
scikit-learn and pandas onto every worker for what is a few lines of numpy here; and its per-class
thresholds are computed from the very labels under test, which a shard whose labels are all wrong
corrupts. So the check is written here, with one fixed threshold:

- An example is *contradicted* when the champion gives a class other than its label a probability
  of at least `CONFIDENCE` (0.9). Each contradicted example is counted in the shard's statistics:
  any labelling gets a few wrong, and the champion is wrong about some.
- The shard's *disagreement* is the share of the champion's confident predictions that contradict
  the label. It is quarantined when, over at least `MIN_CONFIDENT` (20) confident predictions, the
  disagreement is at least `QUARANTINE_SHARE` (75%) and at least `ERROR_MULTIPLE` (5) times the
  champion's own test-set error on the shard's classes (weighted by their share of the shard).

Why these numbers: a shifted population lowers a model's confidence more than it misleads it. With
a weak champion (a small DNN at 92% test accuracy) honest new digits disagreed by 1-2%, thicker
strokes by 3-5%, digits moved 2 pixels by 15-19% (38-46% diagonally) and 3 pixels by 53%; labels
shifted by one (every 3 labelled 4) disagreed by 96-100%. A strong champion only widens the gap.

The reason names the confusion that gave the shard away, as "91% of the 7s are predicted 8", and
says the labels look shifted when most classes are confused with the class a fixed step away.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mnist_pipeline.data.mnist import NUM_CLASSES
from mnist_pipeline.records import Record

__all__ = [
    "CONFIDENCE",
    "ERROR_MULTIPLE",
    "MIN_CONFIDENT",
    "QUARANTINE_SHARE",
    "Champion",
    "LabelCheck",
    "check_labels",
    "skipped_check",
]

CONFIDENCE = 0.9  # a prediction this probable contradicts a different label
MIN_CONFIDENT = 20  # fewer confident predictions than this judge nothing
QUARANTINE_SHARE = 0.75  # the disagreement that quarantines a shard...
ERROR_MULTIPLE = 5  # ...if it is also this many times the champion's own error on those classes
_SHIFT_EVIDENCE = 3  # contradictions of one label needed to count its confusion as a shift


@dataclass(frozen=True)
class Champion:
    """What the check needs of the registry's champion; the caller loads it (this layer never
    reads the registry), and `predict` should load the model only when first called."""

    name: str  # model/version
    predict: Callable[[np.ndarray], np.ndarray]  # (N, 28, 28) uint8 -> (N, 10) probabilities
    class_error: tuple[float, ...] | None = None  # its test-set error on each true class


@dataclass(frozen=True)
class LabelCheck(Record):
    """One shard's label check, as its statistics carry it."""

    champion: str | None
    skipped: str | None = None  # why the check did not run
    confident: int = 0  # predictions at least CONFIDENCE probable
    contradicted: int = 0  # of those, the ones that name another class than the label
    disagreement: float = 0.0  # contradicted / confident
    champion_error: float | None = None  # the champion's test error on the shard's classes
    threshold: float | None = None  # the disagreement that quarantines this shard
    confusion: str | None = None  # the strongest confusion, "91% of the 7s are predicted 8"
    verdict: str | None = None  # why the shard is quarantined; None: its labels pass


def skipped_check(why: str, champion: str | None = None) -> LabelCheck:
    return LabelCheck(champion=champion, skipped=why)


def check_labels(probabilities: np.ndarray, labels: np.ndarray, champion: Champion) -> LabelCheck:
    """The check of one shard, from the champion's `probabilities` (N, 10) for its images."""
    confident = probabilities.max(axis=1) >= CONFIDENCE
    predicted = probabilities.argmax(axis=1)
    given = labels.astype(np.int64)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)  # rows: label, columns: prediction
    np.add.at(confusion, (given[confident], predicted[confident]), 1)
    total, agreeing = int(confusion.sum()), int(np.trace(confusion))
    disagreement = (total - agreeing) / total if total else 0.0
    error = _champion_error(champion, confusion.sum(axis=1))
    threshold = max(QUARANTINE_SHARE, ERROR_MULTIPLE * error) if error is not None else QUARANTINE_SHARE
    strongest = _strongest_confusion(confusion)
    quarantined = total >= MIN_CONFIDENT and disagreement >= threshold
    verdict = None
    if quarantined:
        looks = "labels look shifted" if _looks_shifted(confusion) else "labels look wrong"
        verdict = f"{strongest}: {looks}" if strongest else looks
    return LabelCheck(
        champion=champion.name,
        confident=total,
        contradicted=total - agreeing,
        disagreement=round(disagreement, 4),
        champion_error=None if error is None else round(error, 4),
        threshold=round(min(threshold, 1.0), 4),
        confusion=strongest,
        verdict=verdict,
    )


def _champion_error(champion: Champion, per_label: np.ndarray) -> float | None:
    """The champion's test error on the shard's classes, weighted as the shard weighs them."""
    if champion.class_error is None or per_label.sum() == 0:
        return None
    return float(np.dot(np.asarray(champion.class_error), per_label) / per_label.sum())


def _strongest_confusion(confusion: np.ndarray) -> str | None:
    """The label whose examples go most often to one other class: "91% of the 7s are predicted 8"."""
    wrong = confusion - np.diag(np.diag(confusion))
    if wrong.sum() == 0:
        return None
    label, other = np.unravel_index(int(wrong.argmax()), wrong.shape)
    share = wrong[label, other] / confusion[label].sum()
    return f"{share:.0%} of the {label}s are predicted {other}"


def _looks_shifted(confusion: np.ndarray) -> bool:
    """Most confused labels go to the class one fixed step away (every 3 labelled 4, ...)."""
    wrong = confusion - np.diag(np.diag(confusion))
    steps = [
        int((wrong[label].argmax() - label) % NUM_CLASSES)
        for label in range(NUM_CLASSES)
        if wrong[label].max() >= _SHIFT_EVIDENCE
    ]
    if len(steps) < 3:
        return False
    return Counter(steps).most_common(1)[0][1] >= len(steps) / 2
