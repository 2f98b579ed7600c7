"""
### MNIST training

Ingests real MNIST, trains three Keras models (linear softmax regression, a DNN with dropout, a
CNN with conv/pool blocks) under `tf.distribute.MirroredStrategy`, evaluates each on the fixed 10k
test set (and the held-out slice of new data) and promotes the best to the model registry when it
beats the current champion.

Runs weekly (cron `MNIST_SCHEDULE`; unpausing starts nothing until the next scheduled time), from
the trigger form, and when `mnist_incoming` announces enough new labelled data (its models then
start from the champion's weights). One TaskGroup per model (`train` -> `evaluate`), built in a
loop over the table of model architectures.
XCom carries only URIs, hashes and metrics; the data and models live in the artifacts store
(`MNIST_ARTIFACTS_URI`) and the registry (`MNIST_REGISTRY_URI`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

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

from mnist_pipeline.config import PRECISIONS, settings
from mnist_pipeline.data.incoming import NEW_DATA_ASSET_NAME
from mnist_pipeline.registry.gate import GateConfig
from mnist_pipeline.training.architectures import MODEL_NAMES, MODELS

# TensorFlow is never imported here: each task imports the library step it runs.

SETTINGS = settings()  # schedule, queue and pool are read when the file is parsed
NEW_LABELLED_DATA = Asset(NEW_DATA_ASSET_NAME)
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


def _positive_or_empty(title: str, description: str, section: str) -> Param:
    """An optional positive integer: empty keeps a default, 0 and negatives are refused."""
    return Param(
        None, type=["null", "integer"], minimum=1, title=title, description=description, section=section
    )


def _fraction(default: float, title: str, description: str) -> Param:
    """A share of accuracy (0.001 = 0.1 points) in the Promotion section."""
    return Param(
        default,
        type="number",
        minimum=0,
        maximum=0.5,
        title=title,
        description=description,
        section="Promotion",
    )


def _model_params(name: str) -> dict[str, Param]:
    spec = MODELS[name].config()
    return {
        f"{name}_epochs": _positive_or_empty(
            f"{name}: epochs", f"Empty: the global epochs if set, else {spec.epochs}.", "Models"
        ),
        f"{name}_batch_size": _positive_or_empty(
            f"{name}: batch size per replica",
            f"Empty: the global batch size if set, else {spec.batch_size}.",
            "Models",
        ),
    }


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
        "Empty keeps each model's default; the global batch is this times the replicas.",
        "Training",
    ),
    "learning_rate": Param(
        None,
        type=["null", "number"],
        exclusiveMinimum=0,
        maximum=1,
        title="Peak learning rate",
        description="Empty keeps each model's default (cosine decay after a short warm-up).",
        section="Training",
    ),
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
        description="auto: mixed_float16 on GPU workers, float32 on CPU ones; or force a Keras dtype policy.",
        section="Training",
    ),
    "max_train_images": Param(
        0,
        type="integer",
        minimum=0,
        title="Training images",
        description="Train on the first N base training images only (0: all 60,000). For quick runs.",
        section="Training",
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
        minimum=1,
        title="Smallest slice that decides",
        description="A slice with fewer images is reported in the verdict but does not decide.",
        section="Promotion",
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
}


def _settings() -> Any:
    params = get_current_context()["params"]
    return settings().with_overrides(max_train_images=params["max_train_images"], source=params["source"])


def _train_config(model_name: str) -> Any:
    """Per-model values win over the global ones, which win over the model's defaults."""
    from mnist_pipeline.config import TrainConfig

    params = get_current_context()["params"]
    return TrainConfig(
        epochs=params[f"{model_name}_epochs"] or params["epochs"],
        batch_size=params[f"{model_name}_batch_size"] or params["batch_size"],
        learning_rate=params["learning_rate"],
        precision=params.get("precision", "auto"),  # absent from runs triggered before it existed
    )


def _warm_start_wanted() -> bool:
    """`warm_start`: on, off, or auto (on for runs that new labelled data started)."""
    context = get_current_context()
    wanted = context["params"].get("warm_start", "auto")
    return wanted == "on" or (wanted == "auto" and _trigger_kind(context) == "asset_triggered")


def _run_id() -> str:
    return get_current_context()["run_id"]


@contextmanager
def _no_retry_on_bad_input() -> Iterator[None]:
    """Bad data, settings or registry contents fail the task at once: a retry would fail the same
    way. Storage errors (a network blip) are left to Airflow's retries."""
    from mnist_pipeline.errors import ConfigError, DataError, RegistryError

    try:
        yield
    except (ConfigError, DataError, RegistryError) as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from exc


@task
def ingest() -> dict:
    from mnist_pipeline import steps

    with _no_retry_on_bad_input():
        return steps.ingest(_settings(), _run_id()).to_dict()


@task
def train(model_name: str, snapshot: dict) -> dict:
    from airflow.sdk.exceptions import AirflowSkipException

    from mnist_pipeline import steps
    from mnist_pipeline.data.snapshot import SnapshotInfo

    if model_name not in get_current_context()["params"]["models"]:
        raise AirflowSkipException(f"model {model_name!r} is not selected for this run")
    with _no_retry_on_bad_input():
        info = SnapshotInfo.from_dict(snapshot, "the ingest task's XCom")
        config, warm = _train_config(model_name), _warm_start_wanted()
        return steps.train(model_name, info, config, _settings(), _run_id(), warm_start=warm).to_dict()


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
    )


def _trigger_kind(context: Any) -> str:
    """`manual`, `scheduled`, `asset_triggered`, ...: the DagRunType's value, not its repr."""
    run_type = getattr(context["dag_run"], "run_type", None)
    return str(getattr(run_type, "value", run_type or "unknown"))


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
def promote(evaluations: list[dict | None]) -> dict:
    from mnist_pipeline import steps
    from mnist_pipeline.evaluation.record import EvaluationRecord

    with _no_retry_on_bad_input():
        records = [EvaluationRecord.from_dict(e, "an evaluate task's XCom") for e in evaluations if e]
        return steps.promote(records, _settings(), _run_id(), _promotion_options()).to_dict()


@task_group
def model_group(model_name: str, snapshot: dict) -> Any:
    """Train one model (on the training queue and pool: the GPU workers), then evaluate it on the
    fixed test set (on any worker)."""
    training = train.override(queue=SETTINGS.train_queue, pool=SETTINGS.train_pool)(model_name, snapshot)
    return evaluate(training)


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
    promote(evaluations)
