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

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import (
    DAG,
    Asset,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    TriggerRule,
    get_current_context,
    task,
    task_group,
)

from mnist_pipeline.config import APPROVAL_MODES, PRECISIONS, settings
from mnist_pipeline.data.incoming import NEW_DATA_ASSET_NAME
from mnist_pipeline.registry.gate import GateConfig
from mnist_pipeline.registry.release import CHAMPION_ASSET_NAME
from mnist_pipeline.training.architectures import MODEL_NAMES, MODELS
from mnist_pipeline.training.sweeps import sweep_schema

# TensorFlow is never imported here: each task imports the library step it runs.

SETTINGS = settings()  # schedule, queue and pool are read when the file is parsed
NEW_LABELLED_DATA = Asset(NEW_DATA_ASSET_NAME)
CHAMPION_RELEASES = Asset(CHAMPION_ASSET_NAME)  # one event per move of the champion
GATE = GateConfig()  # the form's promotion defaults


def _schedule() -> Any:
    """Weekly, or as soon as enough new labelled data has been accepted (mnist_incoming).
    `MNIST_SCHEDULE=none` keeps only the data trigger (and the form)."""
    if SETTINGS.schedule.lower() == "none":
        return [NEW_LABELLED_DATA]
    # No start_date and no run for a slot already past: unpausing starts nothing until the next
    # scheduled time (with a start_date, catchup=False would run the latest past slot at once).
    timetable = CronTriggerTimetable(SETTINGS.schedule, timezone="UTC", run_immediately=timedelta(0))
    return AssetOrTimeSchedule(timetable=timetable, assets=[NEW_LABELLED_DATA])


def _bounds(**limits: float) -> dict[str, Any]:
    """`minimum`/`maximum` (or the exclusive ones) for a number Param, nested in `allOf`.

    The trigger form's number field clamps what was typed into a top-level minimum/maximum when it
    loses focus: epochs 0 silently became 1 and started a run nobody asked for. Nested, the form
    leaves the value as typed, and Airflow's validation of the run's conf (form, REST API, `dags
    test -c`) still refuses it: `Invalid input for param epochs: 0 is less than the minimum of 1`."""
    return {"allOf": [limits]}


def _positive_or_empty(title: str, description: str, section: str) -> Param:
    """An optional positive integer: empty keeps a default, 0 and negatives are refused."""
    return Param(
        None,
        type=["null", "integer"],
        title=title,
        description=f"{description} At least 1.",
        section=section,
        **_bounds(minimum=1),
    )


def _fraction(default: float, title: str, description: str) -> Param:
    """A share of accuracy (0.001 = 0.1 points) in the Promotion section."""
    return Param(
        default,
        type="number",
        title=title,
        description=f"{description} From 0 to 0.5.",
        section="Promotion",
        **_bounds(minimum=0, maximum=0.5),
    )


def _model_params(name: str) -> dict[str, Param]:
    spec = MODELS[name].config()
    return {
        f"{name}_epochs": _positive_or_empty(
            f"{name}: epochs", f"Empty: the global epochs if set, else {spec.epochs}.", "Models"
        ),
        f"{name}_batch_size": _positive_or_empty(
            f"{name}: batch size per replica",
            f"Empty: the global batch size if set, else {spec.batch_size}"
            + (
                f", halved on a small slice until an epoch has {spec.min_steps_per_epoch} steps."
                if spec.min_steps_per_epoch
                else "."
            ),
            "Models",
        ),
    }


def _sweep_param() -> Param:
    """Per model, the settings to try: its JSON schema (from the model table and each model's
    config fields) makes the trigger form and the REST API refuse a bad sweep, the field named."""
    limit = SETTINGS.max_trials
    return Param(
        {},
        title="Sweep",
        description="Per model, lists of values for any of its settings, tried as a grid, e.g."
        ' {"cnn": {"learning_rate": [0.001, 0.002], "dropout": [0.2, 0.3]}} (4 trials); or a list of'
        ' trials, e.g. {"cnn": [{"learning_rate": 0.001}, {"learning_rate": 0.002, "dropout": 0.3}]}.'
        " Each trial trains as its own task on the training workers; the trial best on the validation"
        f" split goes on to the test set and the gate. At most {limit} trials per model"
        " (MNIST_MAX_TRIALS). Empty: each model trains once.",
        section="Sweep",
        **sweep_schema(MODELS, limit),
    )


PARAMS = {
    "models": Param(
        list(MODEL_NAMES),
        type="array",
        items={"type": "string", "enum": list(MODEL_NAMES)},
        examples=list(MODEL_NAMES),  # an array with examples: the form offers a multi-select
        uniqueItems=True,
        minItems=1,
        title="Models",
        description="Which models to train; the others are skipped.",
        section="Models",
    ),
    **{key: param for name in MODEL_NAMES for key, param in _model_params(name).items()},
    "epochs": _positive_or_empty(
        "Epochs (all models)",
        "Epochs for every model without its own; empty keeps each model's default.",
        "Training",
    ),
    "batch_size": _positive_or_empty(
        "Batch size per replica (all models)",
        "Empty keeps each model's default (the DNN's shrinks on a small slice, so an epoch keeps "
        "enough steps); the global batch is this times the replicas.",
        "Training",
    ),
    "learning_rate": Param(
        None,
        type=["null", "number"],
        title="Peak learning rate",
        description="Above 0, at most 1. Empty keeps each model's default (cosine decay after a short"
        " warm-up).",
        section="Training",
        **_bounds(exclusiveMinimum=0, maximum=1),
    ),
    "sweep": _sweep_param(),
    "warm_start": Param(
        "auto",
        type="string",
        enum=["auto", "on", "off"],
        title="Warm start",
        description="Start each model from the champion's weights when the champion is the same"
        " architecture, with a short schedule. auto: on for runs started by new data, off otherwise.",
        section="Training",
    ),
    "precision": Param(
        "auto",
        type="string",
        enum=list(PRECISIONS),
        title="Precision",
        description="auto: mixed_float16 on GPU workers; on CPUs that multiply bfloat16 in hardware"
        " (AMX or AVX-512 BF16) mixed_bfloat16 for the CNN, float32 for the others; float32 on other"
        " CPUs. Or force a Keras dtype policy.",
        section="Training",
    ),
    "max_train_images": Param(
        0,
        type="integer",
        title="Training images",
        description="Train on the first N base training images only (0: all 60,000). For quick runs.",
        section="Training",
        **_bounds(minimum=0),
    ),
    "source": Param(
        None,
        type=["null", "string"],
        title="Data source",
        description="Overrides MNIST_SOURCE: an https:// URL (with #sha256=...), a local path or gs:// URI.",
        section="Data",
    ),
    "promotion_margin": _fraction(
        GATE.margin,
        "Promotion margin (mnist_test)",
        "Accuracy the challenger must gain over the champion on the fixed 10k test set to count as"
        " better there (0.001 = 0.1 points), on top of a significant McNemar test.",
    ),
    "new_data_margin": _fraction(
        GATE.new_data_margin,
        "Promotion margin (new_data)",
        "Accuracy the challenger must gain on the held-out slice of newly landed data to count as"
        " better there.",
    ),
    "non_inferiority_margin": _fraction(
        GATE.non_inferiority,
        "Non-inferiority margin",
        "The challenger may be at most this much below the champion on any slice (0.001 = 0.1 points).",
    ),
    "max_recall_drop": _fraction(
        GATE.max_recall_drop,
        "Largest recall drop per digit",
        "No digit's recall on mnist_test may fall more than this below the champion's (0.01 = 1 point).",
    ),
    "min_slice_images": Param(
        GATE.min_slice_images,
        type="integer",
        title="Smallest slice that decides",
        description="At least 1. A slice with fewer images is reported in the verdict but does not decide.",
        section="Promotion",
        **_bounds(minimum=1),
    ),
    "force_promote": Param(
        False,
        type="boolean",
        title="Force promotion",
        description="Promote the run's best model even if the gate says no; recorded as forced.",
        section="Promotion",
    ),
    "dry_run": Param(
        False,
        type="boolean",
        title="Dry run",
        description="Decide and report the verdict, but write nothing to the registry.",
        section="Promotion",
    ),
    "approval": Param(
        SETTINGS.approval,
        type="string",
        enum=list(APPROVAL_MODES),
        title="Approval",
        description="required: a promotion the gate allows is published as the candidate and waits"
        " for a person to approve it (the approval task) before the champion moves. Default:"
        " MNIST_APPROVAL.",
        section="Promotion",
    ),
    "approval_timeout_hours": Param(
        24,
        type="number",
        exclusiveMinimum=0,
        title="Approval timeout (hours)",
        description="With approval required: no answer within this long rejects the candidate.",
        section="Promotion",
    ),
}


def _settings() -> Any:
    params = get_current_context()["params"]
    return settings().with_overrides(max_train_images=params["max_train_images"], source=params["source"])


def _train_config(model_name: str) -> Any:
    """Per-model values win over the global ones, which win over the model's defaults."""
    from mnist_pipeline.config import TrainConfig

    params = get_current_context()["params"]
    return TrainConfig(
        epochs=_first_given(params, f"{model_name}_epochs", "epochs"),
        batch_size=_first_given(params, f"{model_name}_batch_size", "batch_size"),
        learning_rate=params["learning_rate"],
        precision=params.get("precision", "auto"),  # absent from runs triggered before it existed
    )


def _first_given(params: Any, *keys: str) -> int | None:
    """The first of `keys` that is set (not empty); None keeps the model's default. A value below 1
    is refused naming its field, never read as "empty": `or` would turn epochs 0 into the default."""
    from mnist_pipeline.errors import ConfigError

    for key in keys:
        value = params.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"param {key} must be a positive integer or empty (the default), got {value!r}")
        return value
    return None


def _check_positive_params() -> None:
    """Every epochs and batch size field, checked before the run reads any data."""
    params = get_current_context()["params"]
    for setting in ("epochs", "batch_size"):
        for key in (setting, *(f"{name}_{setting}" for name in MODEL_NAMES)):
            _first_given(params, key)


def _warm_start_wanted() -> bool:
    """`warm_start`: on, off, or auto (on for runs that new labelled data started)."""
    context = get_current_context()
    wanted = context["params"].get("warm_start", "auto")
    return wanted == "on" or (wanted == "auto" and _trigger_kind(context) == "asset_triggered")


def _run_id() -> str:
    return get_current_context()["run_id"]


@contextmanager
def _no_retry_on_bad_input(retry_on_conflict: bool = False) -> Iterator[None]:
    """Bad data, settings or registry contents fail the task at once: a retry would fail the same
    way. Storage errors (a network blip) are left to Airflow's retries, and so is a gate decision
    refused because the champion moved since the gate: the retry judges against the new champion."""
    from mnist_pipeline.errors import ConfigError, ConflictError, DataError, RegistryError

    try:
        yield
    except ConflictError as exc:
        if not retry_on_conflict:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(exc)) from exc
        raise RuntimeError(f"{exc} (Airflow's retry re-runs the gate)") from exc
    except (ConfigError, DataError, RegistryError) as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from exc


@task
def ingest() -> dict:
    from mnist_pipeline import steps

    with _no_retry_on_bad_input():
        _check_positive_params()  # epochs 0 fails the run here, naming the field, before anything trains
        _check_sweep()  # a bad sweep fails the run here, before any data is read or model trained
        return steps.ingest(_settings(), _run_id()).to_dict()


def _sweep() -> dict:
    return get_current_context()["params"].get("sweep") or {}  # absent from runs before sweeps


def _check_sweep() -> None:
    """Every model's trials, against the limit (a grid's product, which no JSON schema can bound)."""
    from mnist_pipeline.training.sweeps import check_sweep

    check_sweep(_sweep(), settings().max_trials)


@task
def trials(model_name: str) -> list[dict]:
    """The model's trials in this run, which `train` is mapped over: one without a sweep."""
    from airflow.sdk.exceptions import AirflowSkipException

    from mnist_pipeline.training.sweeps import expand_sweep

    if model_name not in get_current_context()["params"]["models"]:
        raise AirflowSkipException(f"model {model_name!r} is not selected for this run")
    with _no_retry_on_bad_input():
        return [trial.to_dict() for trial in expand_sweep(_sweep(), model_name, settings().max_trials)]


@task
def train(model_name: str, snapshot: dict, trial: dict) -> dict:
    """One trial of the model (the only one without a sweep), labelled with its settings."""
    from mnist_pipeline import steps
    from mnist_pipeline.data.snapshot import SnapshotInfo
    from mnist_pipeline.training.sweeps import Trial

    with _no_retry_on_bad_input():
        info = SnapshotInfo.from_dict(snapshot, "the ingest task's XCom")
        planned = Trial.from_dict(trial, "the trials task's XCom")
        get_current_context()["trial_label"] = _trial_label(planned)  # type: ignore[typeddict-unknown-key]
        config, warm = _train_config(model_name), _warm_start_wanted()
        record = steps.train(model_name, info, config, _settings(), _run_id(), warm_start=warm, trial=planned)
        return record.to_dict()


def _trial_label(trial: Any) -> str:
    """The mapped instance's name in the UI: `trial 1: learning_rate=0.001, dropout=0.3`."""
    shown = ", ".join(f"{name}={value}" for name, value in trial.settings.items())
    return f"trial {trial.index}: {shown or 'model defaults'}"


@task
def select(model_name: str, trainings: list[dict]) -> dict:
    """The training that goes on to the test set: the sweep's trial best on validation."""
    from mnist_pipeline import steps
    from mnist_pipeline.training.record import TrainingRecord

    with _no_retry_on_bad_input():
        records = [TrainingRecord.from_dict(training, "a train task's XCom") for training in trainings]
        return steps.select(model_name, records, _settings(), _run_id()).to_dict()


@task
def evaluate(training: dict) -> dict:
    from mnist_pipeline import steps
    from mnist_pipeline.training.record import TrainingRecord

    with _no_retry_on_bad_input():
        record = TrainingRecord.from_dict(training, "the train task's XCom")
        return steps.evaluate(record, _settings()).to_dict()


def _promotion_options() -> Any:
    from mnist_pipeline.registry.promotion import PromotionOptions

    context = get_current_context()
    params = context["params"]
    return PromotionOptions(
        gate=GateConfig(
            margin=params["promotion_margin"],
            new_data_margin=params["new_data_margin"],
            non_inferiority=params["non_inferiority_margin"],
            max_recall_drop=params["max_recall_drop"],
            min_slice_images=params["min_slice_images"],
        ),
        force=params["force_promote"],
        dry_run=params["dry_run"],
        trigger=_trigger_kind(context),
        run_conf=dict(params),
        approval=params.get("approval", "none") == "required",  # absent from runs before approvals
        attempt=getattr(context["ti"], "try_number", None),
    )


def _trigger_kind(context: Any) -> str:
    """`manual`, `scheduled`, `asset_triggered`, ...: the DagRunType's value, not its repr."""
    run_type = getattr(context["dag_run"], "run_type", None)
    return str(getattr(run_type, "value", run_type or "unknown"))


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
def promote(evaluations: list[dict | None]) -> dict:
    from mnist_pipeline import lineage, steps
    from mnist_pipeline.evaluation.record import EvaluationRecord

    with _no_retry_on_bad_input(retry_on_conflict=True):
        records = [EvaluationRecord.from_dict(e, "an evaluate task's XCom") for e in evaluations if e]
        outcome = steps.promote(records, _settings(), _run_id(), _promotion_options())
        lineage.promoted(records, outcome, _settings())  # OpenLineage: the models in, the version out
        return outcome.to_dict()


def _promotion_outcome(context: Any) -> Any:
    """The promote task's outcome (a PromotionOutcome); None when promote did not run."""
    from mnist_pipeline.registry.promotion import PromotionOutcome

    payload = context["ti"].xcom_pull(task_ids="promote")
    return PromotionOutcome.from_dict(payload, "the promote task's XCom") if payload else None


def _api_base_path() -> str:
    """The api-server's path prefix (`[api] base_url`): the approval's link to the version page."""
    from urllib.parse import urlparse

    from airflow.sdk.configuration import conf

    return urlparse(conf.get("api", "base_url", fallback="") or "").path


def _no_approval_reason(outcome: Any) -> str:
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
    default answer is Reject), records the decision and skips `release`: no asset event."""

    def execute(self, context: Any) -> Any:
        from airflow.sdk.exceptions import AirflowSkipException

        from mnist_pipeline.registry.approval import approval_request

        outcome = _promotion_outcome(context)
        if outcome is None or not outcome.awaiting_approval:
            raise AirflowSkipException(_no_approval_reason(outcome))
        hours = float(context["params"]["approval_timeout_hours"])
        request = approval_request(outcome, context["run_id"], hours, _api_base_path())
        self.subject, self.body = request.subject, request.body
        self.response_timeout = timedelta(hours=hours)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from mnist_pipeline import steps
        from mnist_pipeline.registry.approval import ApprovalAnswer

        if "error" not in event:  # an error event fails the task in the operator: nothing is decided
            answer = ApprovalAnswer.from_hitl(event)
            if not answer.approved:
                with _no_retry_on_bad_input():
                    steps.decline(_promotion_outcome(context), answer, _settings(), _run_id())
        return super().execute_complete(context=context, event=event)


@task(outlets=[CHAMPION_RELEASES], trigger_rule=TriggerRule.NONE_FAILED)
def release() -> dict:
    """Announce the champion's move (the gate's, or an approved candidate's, which moves now) as
    an event on `mnist_champion`; skipped (no event) when nothing moved."""
    from airflow.sdk.exceptions import AirflowSkipException

    from mnist_pipeline import steps
    from mnist_pipeline.registry.approval import ApprovalAnswer

    context = get_current_context()
    outcome = _promotion_outcome(context)
    response = context["ti"].xcom_pull(task_ids="approval")
    answer = ApprovalAnswer.from_hitl(response) if response else None
    with _no_retry_on_bad_input():
        made = steps.release(outcome, answer, _settings(), _run_id()) if outcome else None
    if made is None:
        raise AirflowSkipException("the champion did not move (kept, dry run or not approved): no event")
    context["outlet_events"][CHAMPION_RELEASES].extra = made.to_dict()
    return made.to_dict()


@task_group
def model_group(model_name: str, snapshot: Any) -> Any:
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
    return evaluate(select(model_name, trainings))


with DAG(
    dag_id="mnist_training",
    schedule=_schedule(),
    catchup=False,
    max_active_runs=1,
    tags=["mnist", "keras", "training"],
    doc_md=__doc__,
    params=PARAMS,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
) as dag:
    snapshot = ingest()
    evaluations = [model_group.override(group_id=name)(name, snapshot) for name in MODEL_NAMES]
    approval = CandidateApproval(
        task_id="approval",
        subject="Make the candidate the MNIST champion?",  # replaced by the run's own question
        defaults=ApprovalOperator.REJECT,  # no answer before the timeout rejects
    )
    promote(evaluations) >> approval >> release()
