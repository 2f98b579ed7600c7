"""The champion/challenger gate: promote only a model that is better, and significantly so.

Both models' predictions on the same test images are paired; McNemar's exact test asks whether
the images only one of them gets right split unevenly by more than chance would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from mnist_pipeline.errors import ConfigError
from mnist_pipeline.records import Record

__all__ = ["GateConfig", "Verdict", "judge", "mcnemar_exact"]


@dataclass(frozen=True)
class GateConfig:
    margin: float = 0.001  # challenger must beat the champion by 0.1 percentage points...
    alpha: float = 0.05  # ...with McNemar's p-value below alpha...
    floor: float = 0.90  # ...or, with no champion yet, reach this accuracy.

    def __post_init__(self) -> None:
        for name, low, high in (("margin", 0.0, 1.0), ("alpha", 0.0, 1.0), ("floor", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value < high:
                raise ConfigError(f"gate {name} must be in [{low}, {high}), got {value!r}")


@dataclass(frozen=True)
class Verdict(Record):
    """A decision and every figure behind it; a manual promotion's has a reason only."""

    promote: bool
    reason: str
    challenger_accuracy: float | None = None
    champion_accuracy: float | None = None
    b: int | None = None  # test images the champion gets right and the challenger wrong
    c: int | None = None  # test images the challenger gets right and the champion wrong
    p_value: float | None = None
    forced: bool = False
    blocked: str | None = None  # why publication stopped a promotion the gate allowed

    def overridden(self) -> Verdict:
        """This verdict forced to promote, keeping what the gate said."""
        return replace(self, promote=True, forced=True, reason=f"forced (gate said: {self.reason})")


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial(b + c, 1/2) tail at min(b, c), doubled."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def judge(
    labels: np.ndarray,
    challenger_predictions: np.ndarray,
    champion_predictions: np.ndarray | None,
    config: GateConfig,
    force: bool = False,
) -> Verdict:
    """Whether the challenger should replace the champion, with every figure behind the answer."""
    if len(challenger_predictions) != len(labels):
        raise ConfigError(
            f"{len(challenger_predictions)} challenger predictions for {len(labels)} test labels"
        )
    challenger_right = challenger_predictions == labels
    accuracy = float(challenger_right.mean())
    if champion_predictions is None:
        verdict = _first_champion(accuracy, config)
    else:
        verdict = _against_champion(challenger_right, champion_predictions == labels, config)
    return verdict.overridden() if force and not verdict.promote else verdict


def _first_champion(accuracy: float, config: GateConfig) -> Verdict:
    if accuracy >= config.floor:
        return Verdict(
            True, f"no champion yet; accuracy {accuracy:.4f} reaches the floor {config.floor}", accuracy
        )
    return Verdict(
        False, f"no champion yet; accuracy {accuracy:.4f} is below the floor {config.floor}", accuracy
    )


def _against_champion(
    challenger_right: np.ndarray, champion_right: np.ndarray, config: GateConfig
) -> Verdict:
    if len(champion_right) != len(challenger_right):
        raise ConfigError("champion and challenger were not evaluated on the same test images")
    ours, theirs = float(challenger_right.mean()), float(champion_right.mean())
    b = int(np.sum(champion_right & ~challenger_right))
    c = int(np.sum(challenger_right & ~champion_right))
    p_value = mcnemar_exact(b, c)
    figures = f"accuracy {ours:.4f} vs champion {theirs:.4f}, McNemar b={b} c={c} p={p_value:.3g}"
    # The tolerance keeps 0.9931 - 0.9921 from falling a float's breadth short of 0.001.
    better = ours - theirs >= config.margin - 1e-12
    if not better:
        reason = f"not better by the margin {config.margin:.4f}: {figures}"
    elif p_value >= config.alpha:
        reason = f"better but not significant at alpha {config.alpha}: {figures}"
    else:
        reason = f"better and significant: {figures}"
    return Verdict(better and p_value < config.alpha, reason, ours, theirs, b, c, p_value)
