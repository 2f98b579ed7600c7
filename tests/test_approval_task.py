"""The DAG's approval operator, without a cluster: it asks nobody when no candidate waits, and a
rejection is recorded through the run's own settings before the operator skips `release`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mnist_pipeline import steps
from mnist_pipeline.config import settings
from mnist_pipeline.orchestration.approval import CandidateApproval
from mnist_pipeline.run_params import RunParams


class FakeTi:
    """A task instance whose XComs are `pushed`, by task id."""

    def __init__(self, pushed: dict[str, Any]) -> None:
        self.pushed, self.try_number = pushed, 1

    def xcom_pull(self, task_ids: str) -> Any:
        return self.pushed.get(task_ids)


def context(pushed: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {
        "params": params,
        "run_id": "manual__1",
        "dag_run": SimpleNamespace(run_type="manual"),
        "ti": FakeTi(pushed),
    }


def run_params(context: dict[str, Any]) -> RunParams:
    """As the DAG file resolves them: the settings read where the task starts."""
    return RunParams.from_context(context, settings())


def operator() -> CandidateApproval:
    return CandidateApproval(
        task_id="approval", subject="?", defaults=CandidateApproval.REJECT, run_params=run_params
    )


def test_nobody_is_asked_when_promote_did_not_run() -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    with pytest.raises(AirflowSkipException, match="no approval needed: promote did not run"):
        operator().execute(context({}))


def test_a_rejection_is_recorded_with_the_runs_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MNIST_ARTIFACTS_URI", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MNIST_REGISTRY_URI", str(tmp_path / "registry"))
    monkeypatch.setenv("MNIST_MAX_TRAIN_IMAGES", "3000")
    declined: list[tuple[Any, ...]] = []
    monkeypatch.setattr(steps, "decline", lambda *args: declined.append(args))
    event = {
        "chosen_options": [CandidateApproval.REJECT],
        "params_input": {},
        "responded_at": datetime(2025, 1, 1, tzinfo=UTC),
        "responded_by_user": {"id": "1", "name": "admin"},
    }
    operator().execute_complete(context({}, max_train_images=None), event)
    ((outcome, answer, settings, run_id),) = declined
    assert outcome is None and not answer.approved and answer.user == "admin"
    assert (settings.registry_uri, settings.max_train_images, run_id) == (
        str(tmp_path / "registry"),
        3000,
        "manual__1",
    )
