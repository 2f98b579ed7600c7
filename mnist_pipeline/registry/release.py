"""A release: the champion moved, announced as an event on the `mnist_champion` asset.

Deploy, export or notify jobs schedule on the asset instead of polling the bucket. The event's
extra is a `Release`: {model, version, uri, metrics}. Only a move emits one: a dry run, a kept
champion and a rejected or unanswered approval announce nothing.

A consumer reads the newest triggering event's extra with `release_from_extras`, which refuses a
malformed extra naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mnist_pipeline.errors import RegistryError
from mnist_pipeline.records import Record
from mnist_pipeline.registry.records import ChampionPointer
from mnist_pipeline.registry.store import validate_name

__all__ = ["CHAMPION_ASSET_NAME", "Release", "release_from_extras"]

CHAMPION_ASSET_NAME = "mnist_champion"
_EXTRA = f"the {CHAMPION_ASSET_NAME} event's extra"


@dataclass(frozen=True)
class Release(Record):
    """The version that became champion: what the asset event's extra carries."""

    model: str
    version: str
    uri: str
    metrics: dict[str, float]

    @classmethod
    def of(cls, pointer: ChampionPointer) -> Release:
        return cls(pointer.model, pointer.version, pointer.uri, dict(pointer.metrics))

    @classmethod
    def from_extra(cls, extra: object) -> Release:
        """The extra of one event; a missing or mistyped field raises `RegistryError` naming it."""
        release = cls.from_dict(extra, _EXTRA)
        validate_name("model", release.model)
        validate_name("version", release.version)
        return release


def release_from_extras(extras: Sequence[Any]) -> Release | None:
    """The newest of the triggering events' extras (oldest first, as Airflow lists them); None when
    the run has no triggering event (started by hand)."""
    if not extras:
        return None
    newest = extras[-1]
    if not newest:
        raise RegistryError(f"{_EXTRA} is empty; expected the fields model, version, uri and metrics")
    return Release.from_extra(newest)
