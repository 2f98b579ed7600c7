"""The champion/challenger gate: promote only a model that is better somewhere, and worse nowhere.

Champion and challenger are judged on the same slices: `mnist_test` (the fixed 10k MNIST test
set) and `new_data` (the held-out part of every accepted shard of new labelled data). On each
slice their predictions are paired and McNemar's exact test asks whether the images only one of
them gets right split unevenly by more than chance would; Holm's correction keeps the chance of
a false "better" at alpha across the slices. The challenger is promoted when

1. it is significantly better on at least one slice, by that slice's margin;
2. it is not worse than the champion by more than the non-inferiority margin on any slice; and
3. no digit's recall on `mnist_test` drops by more than `max_recall_drop`.

A challenger better on no slice is kept for that reason alone, as before slices existed.

A slice with fewer than `min_slice_images` images is reported but does not decide anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import cast

import numpy as np

from mnist_pipeline.errors import ConfigError
from mnist_pipeline.records import Record

__all__ = [
    "MNIST_TEST",
    "NEW_DATA",
    "GateConfig",
    "Slice",
    "SliceVerdict",
    "Verdict",
    "judge",
    "mcnemar_exact",
]

MNIST_TEST, NEW_DATA = "mnist_test", "new_data"
_TOLERANCE = 1e-12  # keeps 0.9931 - 0.9921 from falling a float's breadth short of 0.001
_DIGITS = 10


@dataclass(frozen=True)
class GateConfig:
    margin: float = 0.001  # better on mnist_test means by 0.1 points at least...
    new_data_margin: float = 0.005  # ...and on the new-data slice by 0.5 points...
    alpha: float = 0.05  # ...with McNemar's p-value (Holm-adjusted) below alpha
    non_inferiority: float = 0.001  # no slice may fall more than 0.1 points below the champion
    max_recall_drop: float = 0.01  # no digit's recall on mnist_test may fall more than 1 point
    min_slice_images: int = 200  # smaller slices are reported, not gated
    floor: float = 0.90  # with no champion yet, mnist_test accuracy must reach this

    def __post_init__(self) -> None:
        for name in ("margin", "new_data_margin", "alpha", "non_inferiority", "max_recall_drop", "floor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ConfigError(f"gate {name} must be in [0.0, 1.0), got {value!r}")
        images = cast(object, self.min_slice_images)  # checked as it came, from JSON or the CLI
        if isinstance(images, bool) or not isinstance(images, int) or images < 1:
            raise ConfigError(f"gate min_slice_images must be a positive integer, got {images!r}")

    def margin_of(self, slice_name: str) -> float:
        return self.new_data_margin if slice_name == NEW_DATA else self.margin


@dataclass(frozen=True)
class Slice:
    """One slice's labels and both models' predicted labels on it (champion: None when none)."""

    name: str
    labels: np.ndarray
    challenger: np.ndarray
    champion: np.ndarray | None = None

    def __post_init__(self) -> None:
        for who, predictions in (("challenger", self.challenger), ("champion", self.champion)):
            if predictions is not None and len(predictions) != len(self.labels):
                raise ConfigError(
                    f"slice {self.name}: {len(predictions)} {who} predictions for {len(self.labels)} labels"
                )


@dataclass(frozen=True)
class SliceVerdict(Record):
    """One slice's figures: accuracies, McNemar's b/c/p (Holm-adjusted too) and what it decided."""

    name: str
    images: int
    challenger_accuracy: float
    champion_accuracy: float | None = None
    b: int | None = None  # images the champion gets right and the challenger wrong
    c: int | None = None  # images the challenger gets right and the champion wrong
    p_value: float | None = None
    adjusted_p_value: float | None = None  # Holm's, over the slices that decide
    margin: float = 0.0
    decides: bool = True  # False: too small to decide, reported only
    better: bool = False
    worse: bool = False  # below the champion by more than the non-inferiority margin

    @property
    def gain(self) -> float:
        return self.challenger_accuracy - (self.champion_accuracy or 0.0)

    def figures(self) -> str:
        if self.champion_accuracy is None:
            return f"{self.name} {self.challenger_accuracy:.4f} on {self.images}"
        p = f" p={self.adjusted_p_value:.3g}" if self.adjusted_p_value is not None else ""
        shown = "" if self.decides else " (too small to decide)"
        return (
            f"{self.name} {self.challenger_accuracy:.4f} vs champion {self.champion_accuracy:.4f} on"
            f" {self.images}, McNemar b={self.b} c={self.c}{p}{shown}"
        )


@dataclass(frozen=True)
class Verdict(Record):
    """A decision and every figure behind it; a manual promotion's has a reason only."""

    promote: bool
    reason: str
    challenger_accuracy: float | None = None  # on mnist_test
    champion_accuracy: float | None = None
    b: int | None = None  # mnist_test's McNemar counts, as before slices existed
    c: int | None = None
    p_value: float | None = None
    forced: bool = False
    blocked: str | None = None  # why publication stopped a promotion the gate allowed
    rule: str = ""  # the rule that decided: floor, better, not-better, non-inferiority, recall, forced
    slices: list[SliceVerdict] = field(default_factory=list[SliceVerdict])
    # digit -> recall lost on mnist_test, as a fraction of its images (0.216: 21.6 percentage points)
    recall_drops: dict[str, float] = field(default_factory=dict[str, float])

    def overridden(self) -> Verdict:
        """This verdict forced to promote, keeping what the gate said."""
        return replace(
            self, promote=True, forced=True, rule="forced", reason=f"forced (gate said: {self.reason})"
        )

    def slice(self, name: str) -> SliceVerdict | None:
        return next((verdict for verdict in self.slices if verdict.name == name), None)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial(b + c, 1/2) tail at min(b, c), doubled."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def judge(slices: list[Slice], config: GateConfig, force: bool = False) -> Verdict:
    """Whether the challenger should replace the champion; `slices[0]` must be `mnist_test`."""
    if not slices or slices[0].name != MNIST_TEST:
        raise ConfigError("the gate needs the mnist_test slice first")
    if slices[0].champion is None:
        verdict = _first_champion(_accuracy(slices[0].labels, slices[0].challenger), config)
    else:
        verdict = _against_champion(slices, config)
    return verdict.overridden() if force and not verdict.promote else verdict


def _accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float((predictions == labels).mean()) if len(labels) else 0.0


def _first_champion(accuracy: float, config: GateConfig) -> Verdict:
    reaches = accuracy >= config.floor
    word = "reaches" if reaches else "is below"
    return Verdict(
        reaches,
        f"no champion yet; accuracy {accuracy:.4f} {word} the floor {config.floor}",
        accuracy,
        rule="floor",
    )


def _against_champion(slices: list[Slice], config: GateConfig) -> Verdict:
    judged = _paired(slices, config)
    drops = _recall_drops(slices[0])
    test = judged[0]
    promote, rule, reason = _decision(judged, drops, config)
    return Verdict(
        promote,
        reason,
        test.challenger_accuracy,
        test.champion_accuracy,
        test.b,
        test.c,
        test.p_value,
        rule=rule,
        slices=judged,
        recall_drops={digit: round(drop, 6) for digit, drop in drops.items()},
    )


def _paired(slices: list[Slice], config: GateConfig) -> list[SliceVerdict]:
    """Every slice's figures; Holm's correction over the slices large enough to decide."""
    raw = [_slice_figures(piece, config) for piece in slices if piece.champion is not None]
    deciding = [i for i, verdict in enumerate(raw) if verdict.decides]
    # A p-value of 0.0 is real: an overwhelming difference underflows the float (2 / 2**2000).
    p_values = [1.0 if (p := raw[i].p_value) is None else p for i in deciding]
    adjusted = dict(zip(deciding, holm(p_values), strict=True))
    judged: list[SliceVerdict] = []
    for i, verdict in enumerate(raw):
        p = adjusted.get(i)
        gain = verdict.gain
        better = (
            verdict.decides and gain >= verdict.margin - _TOLERANCE and p is not None and p < config.alpha
        )
        worse = verdict.decides and -gain > config.non_inferiority + _TOLERANCE
        judged.append(replace(verdict, adjusted_p_value=p, better=better, worse=worse))
    return judged


def _slice_figures(piece: Slice, config: GateConfig) -> SliceVerdict:
    assert piece.champion is not None
    ours, theirs = piece.challenger == piece.labels, piece.champion == piece.labels
    b, c = int(np.sum(theirs & ~ours)), int(np.sum(ours & ~theirs))
    return SliceVerdict(
        name=piece.name,
        images=len(piece.labels),
        challenger_accuracy=_accuracy(piece.labels, piece.challenger),
        champion_accuracy=_accuracy(piece.labels, piece.champion),
        b=b,
        c=c,
        p_value=mcnemar_exact(b, c),
        margin=config.margin_of(piece.name),
        decides=len(piece.labels) >= config.min_slice_images,
    )


def _recall_drops(test: Slice) -> dict[str, float]:
    """Recall points each digit loses on mnist_test, challenger against champion (gains are 0)."""
    assert test.champion is not None
    drops: dict[str, float] = {}
    for digit in range(_DIGITS):
        mask = test.labels == digit
        if mask.any():
            lost = float((test.champion[mask] == digit).mean() - (test.challenger[mask] == digit).mean())
            drops[str(digit)] = max(0.0, lost)
    return drops


def _decision(
    judged: list[SliceVerdict], drops: dict[str, float], config: GateConfig
) -> tuple[bool, str, str]:
    """(promote, rule, reason): a challenger better on no slice is kept for that reason; one that
    is better somewhere is still refused by a recall drop or a slice where it is worse."""
    figures = "; ".join(verdict.figures() for verdict in judged)
    better = [verdict.name for verdict in judged if verdict.better]
    if not better:
        gained = [
            verdict for verdict in judged if verdict.decides and verdict.gain >= verdict.margin - _TOLERANCE
        ]
        if gained:
            return (
                False,
                "not-better",
                f"better but not significant at alpha {config.alpha} (Holm-adjusted): {figures}",
            )
        return False, "not-better", f"not better by the margin on any slice: {figures}"
    refusal = _refusal(judged, drops, config)
    if refusal is not None:
        return False, refusal[0], f"{refusal[1]}: {figures}"
    return True, "better", f"better and significant on {', '.join(better)}, not worse elsewhere: {figures}"


def _refusal(
    judged: list[SliceVerdict], drops: dict[str, float], config: GateConfig
) -> tuple[str, str] | None:
    """(rule, why) when a digit's recall drops too far or a slice falls below the champion."""
    worst = max(drops, key=lambda digit: drops[digit], default=None)
    if worst is not None and drops[worst] > config.max_recall_drop + _TOLERANCE:
        limit = config.max_recall_drop * 100
        return (
            "recall",
            f"digit {worst}'s recall on mnist_test drops by {drops[worst] * 100:.2f} points"
            f" (at most {limit:.2f} allowed)",
        )
    worse = [f"{verdict.name} by {-verdict.gain * 100:.2f} points" for verdict in judged if verdict.worse]
    if worse:
        margin = config.non_inferiority * 100
        return (
            "non-inferiority",
            f"worse than the champion on {', '.join(worse)} (non-inferiority margin {margin:.2f} points)",
        )
    return None
