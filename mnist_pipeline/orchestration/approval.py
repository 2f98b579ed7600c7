"""The training DAG's `approval` task: Airflow's approval operator, asking about the candidate.

Also how the tasks after `promote` read what it decided and what the person answered (XCom).
Imports no TensorFlow: the steps it runs are imported when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

from airflow.providers.standard.operators.hitl import ApprovalOperator

from mnist_pipeline.orchestration.failures import no_retry_on_bad_input
from mnist_pipeline.registry.approval import ApprovalAnswer
from mnist_pipeline.registry.promotion import PromotionOutcome
from mnist_pipeline.run_params import RunParams

__all__ = ["APPROVAL_TASK", "PROMOTE_TASK", "CandidateApproval", "approval_answer", "promotion_outcome"]

PROMOTE_TASK, APPROVAL_TASK = "promote", "approval"  # the task ids whose XComs are read here


def promotion_outcome(ti: Any) -> PromotionOutcome | None:
    """The promote task's outcome; None when promote did not run."""
    payload = ti.xcom_pull(task_ids=PROMOTE_TASK)
    return PromotionOutcome.from_dict(payload, "the promote task's XCom") if payload else None


def approval_answer(ti: Any) -> ApprovalAnswer | None:
    """The person's answer to the approval task; None when it asked nobody (skipped)."""
    response = ti.xcom_pull(task_ids=APPROVAL_TASK)
    return ApprovalAnswer.from_hitl(response) if response else None


def _api_base_path() -> str:
    """The api-server's path prefix (`[api] base_url`): the approval's link to the version page."""
    from airflow.sdk.configuration import conf

    return urlparse(conf.get("api", "base_url", fallback="") or "").path


def _no_approval_reason(outcome: PromotionOutcome | None) -> str:
    """Why the approval task asks nobody, as its skip message says in the task log."""
    if outcome is None:
        return "no approval needed: promote did not run"
    if outcome.promoted:
        return "no approval needed: approval was not required, the gate moved the champion"
    what = "a dry run" if outcome.dry_run else "the gate promoted nothing"
    return f"no approval asked: {what} ({outcome.verdict.reason}); one is asked only for a promotion"


class CandidateApproval(ApprovalOperator):
    """Airflow's approval operator, asking a person about the candidate `promote` published.

    Skipped when the run's promotion awaits no approval (approval not required, a kept champion, a
    dry run). The question (verdict, slices, link) and the timeout are known only at run time, so
    they are set here before the operator records its request. Reject, or the timeout (whose
    default answer is Reject), records the decision and skips `release`: no asset event.

    `run_params` resolves the run's params and settings from the task's context: the DAG file,
    where the task starts, reads the settings (both `execute` and, after the deferral, a new
    worker's `execute_complete` call it)."""

    def __init__(self, *, run_params: Callable[[Any], RunParams], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_params = run_params

    def execute(self, context: Any) -> Any:
        from airflow.sdk.exceptions import AirflowSkipException

        from mnist_pipeline.registry.approval import approval_request

        outcome = promotion_outcome(context["ti"])
        if outcome is None or not outcome.awaiting_approval:
            raise AirflowSkipException(_no_approval_reason(outcome))
        with no_retry_on_bad_input():
            hours = self.run_params(context).approval_timeout_hours
        request = approval_request(outcome, context["run_id"], hours, _api_base_path())
        self.subject, self.body = request.subject, request.body
        self.response_timeout = timedelta(hours=hours)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from mnist_pipeline import steps

        if "error" not in event:  # an error event fails the task in the operator: nothing is decided
            answer = ApprovalAnswer.from_hitl(event)
            if not answer.approved:
                with no_retry_on_bad_input():
                    run = self.run_params(context)
                    # execute asked only about an outcome awaiting approval: promote's outcome is there.
                    outcome = promotion_outcome(context["ti"])
                    steps.decline(outcome, answer, run.settings, run.run_id)  # pyright: ignore[reportArgumentType]
        return super().execute_complete(context=context, event=event)
