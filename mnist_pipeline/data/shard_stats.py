"""What an incoming shard looks like next to base MNIST: labels, ink, blank images, and what the
duplicate and label checks found in it.

Blank images (nothing written) reject a shard: they are a scanner's or an exporter's failure, and
every label on them is noise. A strongly skewed label histogram (all ones, say) is accepted, since
a team may well collect the digits its model gets wrong, but it is flagged so people can see it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mnist_pipeline.data.label_check import LabelCheck
from mnist_pipeline.data.mnist import NUM_CLASSES
from mnist_pipeline.records import Record

__all__ = ["BLANK_INK_THRESHOLD", "ShardStatistics", "shard_statistics"]

BLANK_INK_THRESHOLD = 32  # an image with no pixel brighter than this holds no stroke
_SKEW_P_VALUE = 1e-3  # flagged only when the skew is both certain...
_SKEW_EFFECT = 0.25  # ...and large (Cramér's V), not merely detectable in a big shard


@dataclass(frozen=True)
class ShardStatistics(Record):
    images: int
    label_counts: list[int]
    ink: float  # mean pixel value, 0-255
    base_ink: float
    blank_images: int
    label_chi_square: float  # against base MNIST's label shares
    label_p_value: float
    skew: str | None = None  # why the labels are flagged as skewed; None when they are not
    copied_images: int = 0  # images that copy base training images or accepted ones (below the limit)
    label_check: LabelCheck | None = None  # the champion's view of the labels (or why it was skipped)


def shard_statistics(
    images: np.ndarray, labels: np.ndarray, base_labels: np.ndarray, base_ink: float
) -> ShardStatistics:
    """Statistics of a validated shard, its labels compared with `base_labels` (base MNIST's)."""
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    base_shares = np.bincount(base_labels, minlength=NUM_CLASSES) / len(base_labels)
    expected = base_shares * len(labels)
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    p_value = chi_square_survival(chi_square, NUM_CLASSES - 1)
    effect = math.sqrt(chi_square / (len(labels) * (NUM_CLASSES - 1)))
    skew = None
    if p_value < _SKEW_P_VALUE and effect >= _SKEW_EFFECT:
        top = int(counts.argmax())
        skew = (
            f"labels skewed: {counts[top] / len(labels):.0%} are {top} (base MNIST: {base_shares[top]:.0%});"
            f" chi-square {chi_square:.1f}, p={p_value:.2g}"
        )
    return ShardStatistics(
        images=len(labels),
        label_counts=[int(count) for count in counts],
        ink=round(float(images.mean()), 2),
        base_ink=round(base_ink, 2),
        blank_images=int((images.max(axis=(1, 2)) <= BLANK_INK_THRESHOLD).sum()),
        label_chi_square=round(chi_square, 2),
        label_p_value=p_value,
        skew=skew,
    )


def chi_square_survival(statistic: float, degrees: int) -> float:
    """P(X >= statistic) for a chi-square variable, by the Wilson-Hilferty normal approximation
    (within a few percent of the exact tail, which is all a flag needs)."""
    if statistic <= 0:
        return 1.0
    scale = 2 / (9 * degrees)
    z = ((statistic / degrees) ** (1 / 3) - (1 - scale)) / math.sqrt(scale)
    return 0.5 * math.erfc(z / math.sqrt(2))
