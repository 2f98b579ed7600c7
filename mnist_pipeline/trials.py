"""The trial table of a sweep, and how its winner is chosen: on the validation split only.

A sweep (the `sweep` run parameter, `training/sweeps.py`) trains several settings of one model in
one run. Each trial's training record carries a `TrialResult`; the `select` step keeps the best
trial by validation accuracy (a tie goes to the lower validation loss, then to the lower index),
never by anything measured on the test set, writes every trial to `<run>/<model>/trials.json`
(a `TrialTable`), and hands the winner on to evaluation with the table's small rows
(`TrialSummary`), which the model card and the registry's version page show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mnist_pipeline.errors import ConfigError
from mnist_pipeline.records import Record

__all__ = ["SELECTED_ON", "TrialResult", "TrialSummary", "TrialTable", "choose_winner"]

SELECTED_ON = "validation accuracy (higher), then validation loss (lower), then trial index (lower)"


@dataclass(frozen=True)
class TrialSummary(Record):
    """One row of the trial table, as the run's records, the model card and the registry show it."""

    index: int  # the trial's place in its model's sweep, from 0
    settings: dict[str, Any]  # the model settings the trial overrides
    val_accuracy: float  # of the weights the trial ships, on the validation split
    val_loss: float
    epochs_run: int
    train_seconds: float
    worker: str  # the host name of the worker that trained it

    @property
    def rank(self) -> tuple[float, float, int]:
        """Higher validation accuracy first; lower validation loss, then the lower index, break a tie."""
        return (self.val_accuracy, -self.val_loss, -self.index)


@dataclass(frozen=True)
class TrialResult(TrialSummary):
    """One trial as its training record carries it: its row, and its validation curves per epoch."""

    val_accuracy_per_epoch: list[float] = field(default_factory=list)
    val_loss_per_epoch: list[float] = field(default_factory=list)

    def summary(self) -> TrialSummary:
        """The row alone, without the curves: what travels on with the winner."""
        return TrialSummary.carried_over(self)


@dataclass(frozen=True)
class TrialTable(Record):
    """`<run>/<model>/trials.json`: every trial of one model in one run, and which one won."""

    model: str
    run_id: str
    winner: int  # the index of the trial that went on to evaluation
    selected_on: str
    trials: list[TrialResult]


def choose_winner(trials: Sequence[TrialSummary]) -> TrialSummary:
    """The best trial on the validation split: highest accuracy, then lowest loss, then first."""
    if not trials:
        raise ConfigError("a sweep needs at least one trial to choose from")
    return max(trials, key=lambda trial: trial.rank)
