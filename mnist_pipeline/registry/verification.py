"""Verifications of a version: each `mnist-pipeline verify` of it, kept as a side record.

    mnist/models/<model>/<version>/verifications/<time>.json

A verification is an observation about a version (retrained from its lineage, did the same
weights come out?), not a change to the registry: it moves no alias and decides nothing. So it is
no commit of the log, whose commits are changes folded into the state every reader reads, and it
is not part of the registry's truth: it is not among the version's files (`files_sha256`), not
folded, not checked by `registry verify`, not rewritten by `registry repair`. Each is written
create-if-absent under a name of its own and never rewritten; the version's page shows the newest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mnist_pipeline.errors import MnistPipelineError, RegistryError
from mnist_pipeline.records import Record
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.training.cache_key import describe_device

__all__ = [
    "DIFFERS",
    "OUTCOMES",
    "REFUSED",
    "REPRODUCED",
    "VERIFICATIONS",
    "Verification",
    "latest_verification",
    "record_verification",
]

VERIFICATIONS = "verifications"  # under the version's prefix
REPRODUCED, DIFFERS, REFUSED = "reproduced", "differs", "refused"
OUTCOMES = (REPRODUCED, DIFFERS, REFUSED)
_NAME_ATTEMPTS = 100


@dataclass(frozen=True)
class Verification(Record):
    """One retraining of a version from its recorded lineage, and what came of it."""

    model: str
    version: str
    verified_at: str
    outcome: str  # reproduced, differs or refused (it could not be retrained)
    reasons: list[str] = field(default_factory=list[str])  # why it differs, or why it was refused
    notes: list[str] = field(default_factory=list[str])  # what differed without changing the weights
    arrays: int = 0  # weight arrays compared
    identical_arrays: int = 0  # of those, bitwise equal
    max_abs_diff: float | None = None  # the largest difference of any weight (0.0: identical)
    recorded_accuracy: float | None = None  # on the test set, as published
    accuracy: float | None = None  # the retrained model's, on the same test set
    train_seconds: float | None = None
    # The retraining's code, libraries, device.
    environment: dict[str, Any] = field(default_factory=dict[str, Any])
    actor: str = ""

    @property
    def weights_identical(self) -> bool:
        return self.outcome == REPRODUCED

    @property
    def accuracy_difference(self) -> float | None:
        if self.accuracy is None or self.recorded_accuracy is None:
            return None
        return self.accuracy - self.recorded_accuracy

    def headline(self) -> str:
        """One line: the version page's and the first of the CLI's report."""
        when = self.verified_at
        if self.outcome == REFUSED:
            return f"could not be retrained ({when}): {'; '.join(self.reasons)}"
        shift = self.accuracy_difference
        accuracy = f", test accuracy {shift:+.4f}" if shift is not None else ""
        if self.outcome == REPRODUCED:
            return f"reproduced ({when}): retrained to bitwise identical weights{accuracy}"
        return (
            f"not reproduced ({when}): weights differ by up to {self.max_abs_diff:.3g}{accuracy};"
            f" why: {'; '.join(self.reasons)}"
        )

    def report(self) -> list[str]:
        """The CLI's report, a line each."""
        lines = [f"{self.model}/{self.version}: {self.outcome}"]
        if self.outcome != REFUSED:
            word = "identical" if self.outcome == REPRODUCED else "differ"
            largest = "" if self.outcome == REPRODUCED else f"; largest difference {self.max_abs_diff:.3g}"
            lines.append(
                f"weights: {word} ({self.identical_arrays} of {self.arrays} arrays bitwise equal{largest})"
            )
            lines.append(
                f"test accuracy: {self.recorded_accuracy:.4f} recorded, {self.accuracy:.4f} retrained"
                f" (difference {self.accuracy_difference:+.4f})"
            )
        if self.environment.get("device"):
            device = describe_device(self.environment["device"])
            lines.append(f"retrained in {self.train_seconds} s on {device}")
        lines += [f"why: {reason}" for reason in self.reasons]
        lines += [f"note: {note}" for note in self.notes]
        return lines


def record_verification(registry: Registry, verification: Verification) -> str:
    """Write `verification` beside its version's files under a new name; returns its URI."""
    ref = VersionRef(verification.model, verification.version)
    payload = json.dumps(verification.to_dict(), indent=2, sort_keys=True).encode()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    for attempt in range(_NAME_ATTEMPTS):
        key = f"{ref.prefix}/{VERIFICATIONS}/{stamp}{f'-{attempt}' if attempt else ''}.json"
        if registry.storage.create_if_absent(key, payload):
            return registry.storage.uri(key)
    raise RegistryError(f"no free name for a verification of {ref} at {stamp}")


def latest_verification(registry: Registry, ref: VersionRef) -> Verification | None:
    """The newest verification of `ref` that can be read; None when it was never verified."""
    keys = registry.storage.list_keys(f"{ref.prefix}/{VERIFICATIONS}/")
    for key in sorted(keys, reverse=True):  # names start with their time
        try:
            return Verification.from_dict(registry.storage.read_json(key), registry.storage.uri(key))
        except MnistPipelineError:  # a side record: an unreadable one is passed over, never fatal
            continue
    return None
