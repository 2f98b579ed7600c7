"""
### MNIST training

Ingests real MNIST, trains three Keras models (linear softmax regression, a DNN with dropout, a
CNN with conv/pool blocks) under `tf.distribute.MirroredStrategy`, evaluates each on the fixed 10k
test set (and the held-out slice of new data) and promotes the best to the model registry when it
beats the current champion.

Runs weekly (cron `MNIST_SCHEDULE`; unpausing starts nothing until the next scheduled time), from
the trigger form, and when `mnist_incoming` announces enough new labelled data (its models then
start from the champion's weights). One TaskGroup per model (`trials` -> `train`, mapped over
the trials -> `select` -> `evaluate`), built in a loop over the table of model architectures.
The `sweep` parameter tries several settings of a model in one run: `train` is mapped over its
trials (each on the training queue and pool, so several GPU workers train side by side), `select`
keeps the best on the validation split only, and only that one is evaluated on the test set and
goes to the gate. Without a sweep, each model trains once, as it always did.
XCom carries only URIs, hashes and metrics; the data and models live in the artifacts store
(`MNIST_ARTIFACTS_URI`) and the registry (`MNIST_REGISTRY_URI`).

With `approval=required`, a promotion the gate allows publishes the version as the alias
`candidate` and waits in `approval` (Airflow's approval operator) for a person: approve, and
`release` moves the champion; reject, or no answer within `approval_timeout_hours`, and the
champion stays. `release` announces each move of the champion as an event on the `mnist_champion`
asset (which `mnist_serving_export` schedules on); it is skipped, emitting nothing, when nothing
moved.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, Asset, TriggerRule, XComArg, get_current_context, task, task_group

from mnist_pipeline.config import settings
from mnist_pipeline.data.incoming import NEW_DATA_ASSET_NAME
from mnist_pipeline.orchestration.approval import CandidateApproval, approval_answer, promotion_outcome
from mnist_pipeline.orchestration.failures import no_retry_on_bad_input
from mnist_pipeline.orchestration.form import training_params, training_schedule
from mnist_pipeline.registry.release import CHAMPION_ASSET_NAME
from mnist_pipeline.run_params import RunParams
from mnist_pipeline.training.architectures import MODEL_NAMES

# TensorFlow is never imported here: each task imports the library step it runs.

SETTINGS = settings()  # the schedule, the form's defaults, queue and pool: read when the file is parsed
NEW_LABELLED_DATA = Asset(NEW_DATA_ASSET_NAME)
CHAMPION_RELEASES = Asset(CHAMPION_ASSET_NAME)  # one event per move of the champion


def _run_of(context: Any) -> RunParams:
    """The run's params and settings, read and checked once at the task's start."""
    return RunParams.from_context(context, settings())


def _run() -> RunParams:
    return _run_of(get_current_context())


@task
def ingest() -> dict:
    from mnist_pipeline import steps

    with no_retry_on_bad_input():
        run = _run()  # epochs 0 or a sweep over the limit fails the run here, before any data is read
        return steps.ingest(run.settings, run.run_id).to_dict()


@task
def trials(model_name: str) -> list[dict]:
    """The model's trials in this run, which `train` is mapped over: one without a sweep."""
    from airflow.sdk.exceptions import AirflowSkipException

    with no_retry_on_bad_input():
        run = _run()
        if model_name not in run.models:
            raise AirflowSkipException(f"model {model_name!r} is not selected for this run")
        return [trial.to_dict() for trial in run.trials(model_name)]


@task
def train(model_name: str, snapshot: dict, trial: dict) -> dict:
    """One trial of the model (the only one without a sweep), labelled with its settings."""
    from mnist_pipeline import steps
    from mnist_pipeline.data.snapshot import SnapshotInfo
    from mnist_pipeline.training.sweeps import Trial

    context = get_current_context()
    with no_retry_on_bad_input():
        run = _run_of(context)
        planned = Trial.from_dict(trial, "the trials task's XCom")
        context["trial_label"] = planned.label  # type: ignore[typeddict-unknown-key]
        info = SnapshotInfo.from_dict(snapshot, "the ingest task's XCom")
        config = run.train_config(model_name)
        record = steps.train(
            model_name, info, config, run.settings, run.run_id, run.warm_start, planned, use_cache=run.cache
        )
        return record.to_dict()


@task
def select(model_name: str, trainings: list[dict]) -> dict:
    """The training that goes on to the test set: the sweep's trial best on validation."""
    from mnist_pipeline import steps
    from mnist_pipeline.training.record import TrainingRecord

    with no_retry_on_bad_input():
        run = _run()
        records = [TrainingRecord.from_dict(training, "a train task's XCom") for training in trainings]
        return steps.select(model_name, records, run.settings, run.run_id).to_dict()


@task
def evaluate(training: dict) -> dict:
    from mnist_pipeline import steps
    from mnist_pipeline.training.record import TrainingRecord

    with no_retry_on_bad_input():
        run = _run()
        record = TrainingRecord.from_dict(training, "the train task's XCom")
        return steps.evaluate(record, run.settings).to_dict()


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
def promote(evaluations: list[dict | None]) -> dict:
    from mnist_pipeline import lineage, steps
    from mnist_pipeline.evaluation.record import EvaluationRecord

    with no_retry_on_bad_input(retry_on_conflict=True):
        run = _run()
        records = [EvaluationRecord.from_dict(e, "an evaluate task's XCom") for e in evaluations if e]
        outcome = steps.promote(records, run.settings, run.run_id, run.promotion_options())
        lineage.promoted(records, outcome, run.settings)  # OpenLineage: the models in, the version out
        return outcome.to_dict()


@task(outlets=[CHAMPION_RELEASES], trigger_rule=TriggerRule.NONE_FAILED)
def release() -> dict:
    """Announce the champion's move (the gate's, or an approved candidate's, which moves now) as
    an event on `mnist_champion`; skipped (no event) when nothing moved."""
    from airflow.sdk.exceptions import AirflowSkipException

    from mnist_pipeline import steps

    context = get_current_context()
    with no_retry_on_bad_input():
        run = _run_of(context)
        outcome, answer = promotion_outcome(context["ti"]), approval_answer(context["ti"])
        made = steps.release(outcome, answer, run.settings, run.run_id) if outcome else None
    if made is None:
        raise AirflowSkipException("the champion did not move (kept, dry run or not approved): no event")
    context["outlet_events"][CHAMPION_RELEASES].extra = made.to_dict()
    return made.to_dict()


# Airflow types a task group's return as None or a DAGNode, though returning an XComArg is documented.
@task_group  # pyright: ignore[reportCallIssue, reportArgumentType]
def model_group(model_name: str, snapshot: XComArg) -> XComArg:
    """Train one model once per trial of its sweep (mapped instances on the training queue and
    pool: the GPU workers, trials side by side), keep the trial best on validation, then evaluate it
    on the fixed test set (on any worker)."""
    planned = trials(model_name)
    snapshot >> planned  # a bad sweep fails `ingest` first: the trials are not even listed
    trainings = (
        train.override(
            queue=SETTINGS.train_queue, pool=SETTINGS.train_pool, map_index_template="{{ trial_label }}"
        )
        .partial(model_name=model_name, snapshot=snapshot)
        .expand(trial=planned)
    )
    # TaskFlow passes XComArgs, resolved to their values before the task runs; pyright sees the values' types.
    return evaluate(select(model_name, trainings))  # pyright: ignore[reportArgumentType]


with DAG(
    dag_id="mnist_training",
    schedule=training_schedule(SETTINGS, [NEW_LABELLED_DATA]),
    start_date=None,  # unpausing starts nothing until the next scheduled time (see the schedule)
    catchup=False,
    max_active_runs=1,
    tags=["mnist", "keras", "training"],
    doc_md=__doc__,
    params=training_params(SETTINGS),  # pyright: ignore[reportArgumentType]  # the DAG makes it a ParamsDict
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
) as dag:
    snapshot = ingest()
    evaluations = [model_group.override(group_id=name)(name, snapshot) for name in MODEL_NAMES]
    approval = CandidateApproval(
        task_id="approval",
        subject="Make the candidate the MNIST champion?",  # replaced by the run's own question
        defaults=ApprovalOperator.REJECT,  # no answer before the timeout rejects
        run_params=_run_of,
    )
    promote(evaluations) >> approval >> release()
