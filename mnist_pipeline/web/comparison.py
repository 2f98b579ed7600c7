"""A version side by side with the champion (or, for the champion, with the champion it replaced):
test accuracy, loss and each digit's recall with the signed differences, and the McNemar figures of
the decision that promoted it. A few reads at most: the figures the champion pointer or history
event quotes cost nothing; per-class recall costs both versions' `metrics.json` and the other's
metadata, only when this version has per-class figures."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

from mnist_pipeline.errors import RegistryError
from mnist_pipeline.hashing import sha256_hex
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent
from mnist_pipeline.registry.store import VersionRef

__all__ = ["compare_with_champion"]

log = logging.getLogger(__name__)
_METRICS_FILE = "metrics.json"  # a version's full test metrics, per-class recall among them
_Described = tuple[VersionRef, dict[str, Any]]  # a version and its metadata


def compare_with_champion(
    registry: Registry,
    version: _Described,
    champion: ChampionPointer | None,
    promoting: HistoryEvent | None,
    link: Callable[[VersionRef], str],
) -> dict[str, Any] | None:
    """`version` (its ref and metadata) beside the champion, or, being the champion, beside the
    champion it replaced (`other` None: it replaced none); None when there is no champion.
    Accuracy and loss are those the pointer or event quotes: no read. Per-class recall costs both
    versions' metrics.json and the other's metadata, only when this version has per-class figures."""
    if champion is None:
        return None
    ref = version[0]
    is_champion = champion.is_version(ref.model, ref.version)
    replaced = promoting.previous_champion if promoting else None
    paired = promoting.verdict.slices if promoting else []
    other = replaced if is_champion else champion.summary()
    shown: dict[str, Any] = {
        "against_champion": not is_champion,
        "promoting_recorded": promoting is not None,
        # The promoting decision's McNemar figures were against the champion of its day.
        "decided_against": f"{replaced.model}/{replaced.version}" if replaced else None,
        "mcnemar": [piece.to_dict() for piece in paired if piece.b is not None],
        "other": None,
        "rows": [],
    }
    if other is None:
        return shown
    other_ref = VersionRef(other.model, other.version)
    rows = _comparison_rows(registry, version, other_ref, other.metrics or {})
    compared = {"model": other.model, "version": other.version, "link": link(other_ref)}
    return shown | {"other": compared, "rows": rows}


def _comparison_rows(
    registry: Registry, mine: _Described, other_ref: VersionRef, other: dict[str, float]
) -> list[dict[str, str]]:
    """Test accuracy, loss, then each digit's recall when both versions have per-class figures."""
    this = _metrics_of(mine[1])
    rows = [
        _difference_row("test accuracy", this.get("accuracy"), other.get("accuracy"), percent=True),
        _difference_row("loss", this.get("loss"), other.get("loss"), percent=False, higher_is_better=False),
    ]
    this_recall = _per_class_recall(registry, *mine)
    other_recall = (
        _per_class_recall(registry, other_ref, _metadata_or_empty(registry, other_ref)) if this_recall else {}
    )
    for digit in sorted(this_recall.keys() & other_recall.keys()):
        rows.append(
            _difference_row(f"recall of digit {digit}", this_recall[digit], other_recall[digit], percent=True)
        )
    return rows


def _metadata_or_empty(registry: Registry, ref: VersionRef) -> dict[str, Any]:
    # A compared version that cannot be read only loses its per-class rows.
    try:
        return registry.metadata(ref)
    except RegistryError:
        return {}


def _metrics_of(metadata: dict[str, Any]) -> dict[str, Any]:
    metrics = metadata.get("metrics")
    return metrics if isinstance(metrics, dict) else {}


def _per_class_recall(registry: Registry, ref: VersionRef, metadata: dict[str, Any]) -> dict[str, float]:
    """Each digit's test recall: from the metadata's metrics when they carry it, else from the
    version's metrics.json, checked against the sha256 its metadata lists (one read); {} when
    neither has it or the file does not match."""
    per_class = _metrics_of(metadata).get("per_class")
    expected = (metadata.get("files_sha256") or {}).get(_METRICS_FILE)
    if per_class is None and expected is not None:
        data = registry.storage.read_bytes(f"{ref.prefix}/{_METRICS_FILE}")
        if sha256_hex(data) != expected:
            log.warning("model registry page: %s/%s does not match its sha256", ref, _METRICS_FILE)
            return {}
        per_class = _metrics_of({"metrics": json.loads(data)}).get("per_class")
    if not isinstance(per_class, dict):
        return {}
    recalls = {str(digit): row.get("recall") for digit, row in per_class.items() if isinstance(row, dict)}
    return {digit: number for digit, value in recalls.items() if (number := _number(value)) is not None}


def _difference_row(
    name: str, mine: object, theirs: object, percent: bool, higher_is_better: bool = True
) -> dict[str, str]:
    """Both figures and the signed difference, toned "yes" when better and "no" when worse."""
    this, other = _number(mine), _number(theirs)
    row = {"name": name, "this": _figure(this, percent), "other": _figure(other, percent)}
    if this is None or other is None:
        return row | {"difference": "", "tone": ""}
    # Rounded as shown, so that a difference shown as zero is neither signed nor coloured.
    difference = round((this - other) * 100, 2) if percent else round(this - other, 4)
    if difference == 0:
        return row | {"difference": "0.00 pt" if percent else "0.0000", "tone": ""}
    tone = "yes" if (difference > 0) == higher_is_better else "no"
    return row | {"difference": f"{difference:+.2f} pt" if percent else f"{difference:+.4f}", "tone": tone}


def _figure(value: float | None, percent: bool) -> str:
    if value is None:
        return "?"
    return f"{value * 100:.2f}%" if percent else f"{value:.4f}"


def _number(value: object) -> float | None:
    # Metadata is JSON: a missing, NaN or non-numeric figure is shown as unknown.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)
