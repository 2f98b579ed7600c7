"""A person's sign-off before the champion moves, when the run asks for one.

The gate allowed the promotion, so the version is published and the alias `candidate` points at it
(`promotion`, its decision recorded as `pending`). A person then answers the approval request
(`approval_request`: the verdict, each slice's figures and a link to the version's page):

- approved (`approve_candidate`): one commit moves the champion to the candidate and clears the
  candidate, based on the run's gate decision: if a person promoted or rolled back since, or the
  candidate moved, it is refused with what moved, when and by whom (never a lost update); the move
  is a `Release`, which the `mnist_champion` asset announces;
- rejected, or no answer before the timeout (`decline_candidate`): one commit records who rejected
  (or the timeout) and clears the run's candidate; the champion stays.

A retried step finds its answer's commit and does not answer twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

from mnist_pipeline.errors import RegistryError
from mnist_pipeline.records import Record, is_json_object
from mnist_pipeline.registry.aliases import CANDIDATE
from mnist_pipeline.registry.client import Registry, moved_since
from mnist_pipeline.registry.gate import SliceVerdict
from mnist_pipeline.registry.promotion import PromotionOutcome
from mnist_pipeline.registry.records import (
    AliasMove,
    ChampionPointer,
    Cleared,
    Commit,
    HistoryEvent,
    VersionSummary,
)
from mnist_pipeline.registry.release import Release
from mnist_pipeline.registry.state import CHAMPION, RegistryState
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.runs import utc_now

__all__ = [
    "APPROVED",
    "REJECTED",
    "TIMED_OUT",
    "VERSION_PAGE",
    "ApprovalAnswer",
    "ApprovalRequest",
    "approval_request",
    "approve_candidate",
    "decline_candidate",
    "released",
]

APPROVED, REJECTED, TIMED_OUT = "approved", "rejected", "timed-out"
APPROVE_OPTION = "Approve"  # the option of Airflow's approval operator that approves
# The Model Registry plugin's page of one version (`web.app`, mounted at /model-registry), framed
# inside the Airflow UI: its navigation view's route (`web.link.NAV_ROUTE`) followed by the page's
# own path, as the UI's address reads once the registry is opened from the navigation.
VERSION_PAGE = "/plugin/mnist-pipeline/model-registry/versions/{model}/{version}"


@dataclass(frozen=True)
class ApprovalRequest:
    """What the approval task shows: a subject line and a Markdown body."""

    subject: str
    body: str


@dataclass(frozen=True)
class ApprovalAnswer(Record):
    """A person's answer, or the timeout's: approved or not, by whom (None: nobody), when."""

    approved: bool
    user: str | None = None
    timed_out: bool = False
    at: str | None = None

    @classmethod
    def from_hitl(cls, response: Mapping[str, Any]) -> ApprovalAnswer:
        """From the result of Airflow's approval operator: its chosen option, the responding user
        ({id, name}; None when the timeout chose the default) and the time of the answer."""
        chosen: list[Any] = response.get("chosen_options") or []
        responder: object = response.get("responded_by_user") or {}
        user = cast(Mapping[str, Any], responder) if isinstance(responder, Mapping) else None
        at = response.get("responded_at")
        return cls(
            approved=list(chosen) == [APPROVE_OPTION],
            user=None if user is None else (user.get("name") or user.get("id")),
            timed_out=bool(response.get("timedout")),
            at=None if at is None else str(at),
        )

    @property
    def status(self) -> str:
        return APPROVED if self.approved else (TIMED_OUT if self.timed_out else REJECTED)

    @property
    def who(self) -> str:
        return self.user or "nobody (approval timeout)"


def approval_request(
    outcome: PromotionOutcome, run_id: str, timeout_hours: float, base_path: str = ""
) -> ApprovalRequest:
    """The request for the candidate `outcome` published: the verdict, the slices' figures, the
    champion it would replace and a link to its page (below `base_path`, the api-server's prefix)."""
    ref = _candidate_of(outcome)
    page = base_path.rstrip("/") + VERSION_PAGE.format(model=ref.model, version=ref.version)
    champion = outcome.previous_champion
    replaces = f"`{champion.model}/{champion.version}`" if champion else "no champion yet"
    accuracy = (outcome.metrics or {}).get("accuracy")
    lines = [
        f"Run `{run_id}` asks to make **`{ref}`** the champion (it replaces {replaces}).",
        "",
        f"**Verdict{' (forced)' if outcome.forced else ''}:** {outcome.verdict.reason}",
        "",
        *_slice_table(outcome.verdict.slices, accuracy),
        *_recall_lines(outcome.verdict.recall_drops),
        f"[Open `{ref}` in the Model Registry]({page})",
        "",
        f"**Approve** moves the champion to it. **Reject**, or no answer within {timeout_hours:g} h,"
        " keeps the champion and clears the candidate.",
    ]
    return ApprovalRequest(f"Make {ref} the MNIST champion?", "\n".join(lines))


def _slice_table(slices: list[SliceVerdict], accuracy: float | None) -> list[str]:
    if not slices:  # no champion yet: the floor decided on the test accuracy alone
        shown = "unknown" if accuracy is None else f"{accuracy:.4f}"
        return [f"Test accuracy (mnist_test): {shown}", ""]
    rows = [
        "| slice | images | candidate | champion | McNemar b / c | p (Holm) | decides |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for piece in slices:
        champion = "-" if piece.champion_accuracy is None else f"{piece.champion_accuracy:.4f}"
        p = "-" if piece.adjusted_p_value is None else f"{piece.adjusted_p_value:.3g}"
        rows.append(
            f"| {piece.name} | {piece.images} | {piece.challenger_accuracy:.4f} | {champion}"
            f" | {piece.b} / {piece.c} | {p} | {'yes' if piece.decides else 'no (too small)'} |"
        )
    return [*rows, ""]


def _recall_lines(drops: dict[str, float]) -> list[str]:
    lost = {digit: drop for digit, drop in drops.items() if drop > 0}
    if not lost:
        return []
    shown = ", ".join(f"{digit}: {100 * drop:.2f}" for digit, drop in sorted(lost.items()))
    return [f"Recall points lost per digit on mnist_test: {shown}", ""]


def released(
    registry: Registry, outcome: PromotionOutcome, answer: ApprovalAnswer | None, run_id: str
) -> Release | None:
    """The release the run made, if the champion moved: by the gate, or by an approval (moving it
    now). None when nothing moved: a dry run, a kept champion, a rejection."""
    if outcome.awaiting_approval:
        if answer is None or not answer.approved:
            return None
        return approve_candidate(registry, outcome, answer, run_id)
    if not outcome.promoted or outcome.dry_run or outcome.version is None:
        return None
    ref = VersionRef(outcome.model, outcome.version)
    return Release(ref.model, ref.version, registry.uri(ref), dict(outcome.metrics or {}))


def approve_candidate(
    registry: Registry, outcome: PromotionOutcome, answer: ApprovalAnswer, run_id: str
) -> Release:
    """Move the champion to the run's candidate and clear the candidate, in one commit based on the
    run's gate decision: refused (`ConflictError`) if the champion or the candidate moved since,
    naming what moved it. A retry finds the answer already committed."""
    ref = _candidate_of(outcome)
    read, decided = _decision(registry, run_id, ref)
    pointer = _approved_pointer(registry, ref, outcome, answer, run_id)

    def draft(state: RegistryState) -> Commit | None:
        if state.answer_of(run_id, ref.model) is not None:
            return None
        moved_since(registry, state, CHAMPION, decided, "this run's gate")
        moved_since(registry, state, CANDIDATE, decided, "this run's gate")
        event = _answer_event(outcome, answer, run_id, state.champion, promoted=True)
        moves = [AliasMove(CHAMPION, pointer.succeeding(state.champion)), _cleared(state, answer)]
        return _answer_commit(event, answer, decided, run_id, moves)

    commit, state = registry.commit(draft, read)
    if commit is None:
        earlier = registry.read_commit(state.answer_of(run_id, ref.model) or 0)
        if earlier is None or earlier.event is None or not earlier.event.promoted:
            raise RegistryError(f"run {run_id}'s candidate {ref} was answered already, and not approved")
    return Release(ref.model, ref.version, registry.uri(ref), dict(outcome.metrics or {}))


def decline_candidate(
    registry: Registry, outcome: PromotionOutcome, answer: ApprovalAnswer, run_id: str
) -> HistoryEvent:
    """Leave the champion, record the rejection (or the timeout) and clear the run's candidate, in
    one commit; a retry finds it."""
    ref = _candidate_of(outcome)
    read, decided = _decision(registry, run_id, ref)

    def draft(state: RegistryState) -> Commit | None:
        if state.answer_of(run_id, ref.model) is not None:
            return None
        event = _answer_event(outcome, answer, run_id, state.champion, promoted=False)
        candidate = state.alias(CANDIDATE).pointer
        ours = candidate is not None and _is_runs(candidate, ref, run_id)
        return _answer_commit(event, answer, decided, run_id, [_cleared(state, answer)] if ours else [])

    commit, state = registry.commit(draft, read)
    if commit is None:
        commit = registry.read_commit(state.answer_of(run_id, ref.model) or 0)
    if commit is None or commit.event is None:
        raise RegistryError(f"run {run_id}'s answer on {ref} is unreadable in the registry's log")
    return commit.event


def _decision(registry: Registry, run_id: str, ref: VersionRef) -> tuple[RegistryState, int]:
    """The registry's state and the commit of the run's gate decision that an answer is based on."""
    state = registry.state()
    decided = state.decision_of(run_id, ref.model)
    if decided is None:
        raise RegistryError(f"run {run_id} has no gate decision on {ref.model} in the registry to answer")
    return state, decided


def _cleared(state: RegistryState, answer: ApprovalAnswer) -> AliasMove:
    reason = "approved: it is the champion now" if answer.approved else f"{answer.status}: the champion stays"
    return AliasMove(
        CANDIDATE, cleared=Cleared(utc_now(), reason, answer.who, state.alias(CANDIDATE).pointer)
    )


def _answer_commit(
    event: HistoryEvent, answer: ApprovalAnswer, decided: int, run_id: str, moves: list[AliasMove]
) -> Commit:
    return Commit(
        0,
        "approval",
        "",
        answer.who,
        event.verdict.reason,
        based_on=decided,
        run_id=run_id,
        model=event.model,
        event=event,
        moves=moves,
    )


def _candidate_of(outcome: PromotionOutcome) -> VersionRef:
    if not outcome.awaiting_approval:
        raise RegistryError(f"{outcome.model}'s promotion awaits no approval (approval: {outcome.approval})")
    return VersionRef(outcome.model, str(outcome.version))


def _approved_pointer(
    registry: Registry, ref: VersionRef, outcome: PromotionOutcome, answer: ApprovalAnswer, run_id: str
) -> ChampionPointer:
    metadata = registry.metadata(ref)
    metrics = metadata.get("metrics")
    measured: dict[str, Any] = metrics if is_json_object(metrics) else {}
    return ChampionPointer.for_version(
        VersionSummary(ref.model, ref.version, dict(outcome.metrics or {})),
        registry.uri(ref),
        utc_now(),
        f"{outcome.verdict.reason}; approved by {answer.who}",
        forced=outcome.forced,
        run_id=run_id,
        test_hash=measured.get("test_hash"),
        data_hash=metadata.get("data_hash"),
        set_by=answer.user,
    )


def _answer_event(
    outcome: PromotionOutcome,
    answer: ApprovalAnswer,
    run_id: str,
    champion: ChampionPointer | None,
    promoted: bool,
) -> HistoryEvent:
    """The history event of the answer; its verdict keeps the gate's figures, its reason says who."""
    reason = _answer_reason(outcome.verdict.reason, answer, promoted)
    return HistoryEvent(
        kind="approval",
        model=outcome.model,
        version=outcome.version,
        verdict=replace(outcome.verdict, reason=reason, promote=promoted),
        promoted=promoted,
        run_id=run_id,
        trigger=answer.user,
        metrics=outcome.metrics,
        forced=outcome.forced and promoted,
        previous_champion=champion.summary() if champion else None,
        approval=answer.status,
        approver=answer.user,
    )


def _answer_reason(gate: str, answer: ApprovalAnswer, promoted: bool) -> str:
    if promoted:
        return f"{gate}; approved by {answer.who}"
    if answer.timed_out:
        return f"no answer before the approval timeout: the champion stays (gate: {gate})"
    return f"rejected by {answer.who}: the champion stays (gate: {gate})"


def _is_runs(pointer: ChampionPointer, ref: VersionRef, run_id: str) -> bool:
    """Whether `pointer` points at `ref` as run `run_id` published it."""
    return pointer.run_id == run_id and pointer.is_version(ref.model, ref.version)
