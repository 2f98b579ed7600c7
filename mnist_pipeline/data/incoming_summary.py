"""What the incoming runs did, in one small object the registry page reads in one call:
`incoming-state/summary.json`, with counts of every outcome (accepted, set aside, quarantined),
counts of every reason category, and the newest set-aside and quarantined entries with their
reasons. Each run adds its report through compare-and-swap, so overlapping runs lose nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from mnist_pipeline.runs import utc_now
from mnist_pipeline.storage import Storage, compare_and_swap

__all__ = ["RECENT_ENTRIES", "SUMMARY_KEY", "empty_summary", "read_summary", "record_outcomes"]

SUMMARY_KEY = "incoming-state/summary.json"
RECENT_ENTRIES = 100  # set-aside and quarantined entries kept, newest first
_OUTCOMES = {"accepted": "accepted", "rejected": "set aside", "quarantined": "quarantined"}


def empty_summary() -> dict[str, Any]:
    return {"counts": dict.fromkeys(_OUTCOMES.values(), 0), "categories": {}, "recent": [], "updated": None}


def read_summary(artifacts: Storage) -> dict[str, Any]:
    """The summary, or an empty one before the first run recorded anything."""
    raw = artifacts.read_versioned(SUMMARY_KEY)[0]
    return json.loads(raw) if raw else empty_summary()


def record_outcomes(artifacts: Storage, report: dict[str, Any], run_id: str) -> None:
    """Add one run's report (`ShardReport.to_dict()`) to the summary."""
    now = utc_now()
    entries = [
        {"time": now, "run_id": run_id, "outcome": _OUTCOMES[kind]} | _entry(item)
        for kind in ("quarantined", "rejected")
        for item in report.get(kind, [])
    ]
    added = Counter({_OUTCOMES[kind]: len(report.get(kind, [])) for kind in _OUTCOMES})
    categories = Counter(item.get("category", "invalid") for item in report.get("rejected", []))
    categories.update(item.get("category", "labels") for item in report.get("quarantined", []))
    if not entries and not added["accepted"]:
        return

    def decide(current: bytes | None) -> tuple[bytes, None]:
        summary = json.loads(current) if current else empty_summary()
        counts = summary["counts"]
        summary["counts"] = {
            outcome: counts.get(outcome, 0) + added[outcome] for outcome in _OUTCOMES.values()
        }
        summary["categories"] = dict(Counter(summary["categories"]) + categories)
        summary["recent"] = (entries[::-1] + summary["recent"])[:RECENT_ENTRIES]
        summary["updated"] = now
        return json.dumps(summary, indent=2, sort_keys=True).encode(), None

    compare_and_swap(artifacts, SUMMARY_KEY, decide)


def _entry(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "shard": item["shard"],
        "category": item.get("category", ""),
        "stored": item.get("stored", ""),
        "reason": item["reason"],
    }
