"""
### MNIST training

Ingests real MNIST, trains every registered Keras model (linear softmax regression, a DNN with
dropout, a CNN with conv/pool blocks) under `tf.distribute.MirroredStrategy`, evaluates each on the
fixed 10k test set and promotes the best to the model registry when it beats the current champion.

One TaskGroup per model (`train` -> `evaluate`), built in a loop over the model registry.
XCom carries only URIs, hashes and metrics; the data and models live in the artifacts store
(`MNIST_ARTIFACTS_URI`) and the registry (`MNIST_REGISTRY_URI`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, TriggerRule, get_current_context, task, task_group

from mnist_pipeline.models import MODEL_NAMES

# TensorFlow is never imported here: each task imports the library step it runs.

PARAMS = {
    "models": Param(
        list(MODEL_NAMES),
        type="array",
        items={"type": "string", "enum": list(MODEL_NAMES)},
        uniqueItems=True,
        minItems=1,
        title="Models",
        description="Which registered models to train; the others are skipped.",
    ),
    "epochs": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        title="Epochs",
        description="Epochs for every model; empty keeps each model's own default.",
    ),
    "batch_size": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        title="Batch size per replica",
        description="Empty keeps each model's default; the global batch is this times the replicas.",
    ),
    "promotion_margin": Param(
        0.001,
        type="number",
        minimum=0,
        maximum=0.5,
        title="Promotion margin",
        description="Test accuracy the challenger must gain over the champion (0.001 = 0.1 points),"
        " on top of a significant McNemar test.",
    ),
    "force_promote": Param(
        False,
        type="boolean",
        title="Force promotion",
        description="Promote the run's best model even if the gate says no; recorded as forced.",
    ),
    "dry_run": Param(
        False,
        type="boolean",
        title="Dry run",
        description="Decide and report the verdict, but write nothing to the registry.",
    ),
    "max_train_images": Param(
        0,
        type="integer",
        minimum=0,
        title="Training images",
        description="Train on the first N training images only (0: all 60,000). For quick runs.",
    ),
}


def _settings() -> Any:
    from mnist_pipeline.config import PipelineSettings

    params = get_current_context()["params"]
    return PipelineSettings.from_env().with_overrides(max_train_images=params["max_train_images"])


def _train_config() -> Any:
    from mnist_pipeline.config import TrainConfig

    params = get_current_context()["params"]
    return TrainConfig(epochs=params["epochs"], batch_size=params["batch_size"])


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
    from mnist_pipeline.pipeline import ingest as ingest_step

    with _no_retry_on_bad_input():
        return ingest_step(_settings(), _run_id())


@task
def train(model_name: str, snapshot: dict) -> dict:
    from airflow.sdk.exceptions import AirflowSkipException

    from mnist_pipeline.pipeline import train as train_step

    if model_name not in get_current_context()["params"]["models"]:
        raise AirflowSkipException(f"model {model_name!r} is not selected for this run")
    with _no_retry_on_bad_input():
        return train_step(model_name, snapshot, _train_config(), _settings(), _run_id())


@task
def evaluate(training: dict) -> dict:
    from mnist_pipeline.pipeline import evaluate as evaluate_step

    with _no_retry_on_bad_input():
        return evaluate_step(training, _settings())


def _promotion_options() -> Any:
    from mnist_pipeline.gate import GateConfig
    from mnist_pipeline.promotion import PromotionOptions

    context = get_current_context()
    params = context["params"]
    return PromotionOptions(
        gate=GateConfig(margin=params["promotion_margin"]),
        force=params["force_promote"],
        dry_run=params["dry_run"],
        trigger=_trigger_kind(context),
    )


def _trigger_kind(context: Any) -> str:
    """`manual`, `scheduled`, `asset_triggered`, ...: the DagRunType's value, not its repr."""
    run_type = getattr(context["dag_run"], "run_type", None)
    return str(getattr(run_type, "value", run_type or "unknown"))


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
def promote(evaluations: list[dict | None]) -> dict:
    from mnist_pipeline.promotion import promote as promote_step

    with _no_retry_on_bad_input():
        return promote_step([e for e in evaluations if e], _settings(), _run_id(), _promotion_options())


@task_group
def model_group(model_name: str, snapshot: dict) -> Any:
    """Train one registered model, then evaluate it on the fixed test set."""
    return evaluate(train(model_name, snapshot))


with DAG(
    dag_id="mnist_training",
    schedule="@weekly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
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
