"""DAG integrity: it imports cleanly, is wired as designed, and keeps TensorFlow out of parsing."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline.training.architectures import MODEL_NAMES

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["mnist_training"]


def test_dags_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "mnist_training" in dagbag.dags


def test_dag_has_no_cycles_and_the_designed_shape(dag) -> None:
    dag.check_cycle()
    assert set(dag.task_group.children) == {"ingest", *MODEL_NAMES, "promote", "approval", "release"}
    for model in MODEL_NAMES:
        train, evaluate = dag.get_task(f"{model}.train"), dag.get_task(f"{model}.evaluate")
        assert dag.get_task(f"{model}.trials").upstream_task_ids == {"ingest"}
        assert train.upstream_task_ids == {"ingest", f"{model}.trials"}  # mapped over the trials
        assert dag.get_task(f"{model}.select").upstream_task_ids == {f"{model}.train"}
        assert evaluate.upstream_task_ids == {f"{model}.select"}  # only the winning trial
    assert dag.get_task("promote").upstream_task_ids == {f"{model}.evaluate" for model in MODEL_NAMES}
    assert dag.get_task("approval").upstream_task_ids == {"promote"}
    assert dag.get_task("release").upstream_task_ids == {"approval"}


def test_only_release_announces_the_champion_and_runs_when_approval_was_skipped(dag) -> None:
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from mnist_pipeline.registry.release import CHAMPION_ASSET_NAME

    with_outlets = {task.task_id: [a.name for a in task.outlets] for task in dag.tasks if task.outlets}
    assert with_outlets == {"release": [CHAMPION_ASSET_NAME]}
    assert dag.get_task("release").trigger_rule == "none_failed"  # a skipped approval (none asked)
    approval = dag.get_task("approval")
    assert isinstance(approval, ApprovalOperator) and approval.defaults == [ApprovalOperator.REJECT]


def test_the_form_offers_approval_with_a_positive_timeout(dag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    assert dag.params["approval"] == "none" and dag.params["approval_timeout_hours"] == 24
    for name in ("approval", "approval_timeout_hours"):
        assert dag.params.get_param(name).schema["section"] == "Promotion"
    for name, bad in (("approval", "maybe"), ("approval_timeout_hours", 0)):
        with pytest.raises(ParamValidationError):
            copy.deepcopy(dag.params).update({name: bad})


def test_the_approval_default_comes_from_mnist_approval(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_with(monkeypatch, MNIST_APPROVAL="required").params["approval"] == "required"


def test_the_serving_export_dag_is_scheduled_on_the_champion_asset(dagbag) -> None:
    from mnist_pipeline.registry.release import CHAMPION_ASSET_NAME

    export = dagbag.dags["mnist_serving_export"]
    assert [asset.name for asset in export.timetable.asset_condition.objects] == [CHAMPION_ASSET_NAME]
    assert [task.task_id for task in export.tasks] == ["export"]


def test_the_trigger_form_offers_exactly_the_models_the_dag_trains(dag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    offered = dag.params.get_param("models").schema["items"]["enum"]
    assert sorted(offered) == sorted(MODEL_NAMES) and dag.params["models"] == list(MODEL_NAMES)
    for model in offered:  # each one offered is accepted alone and has its own task group
        params = copy.deepcopy(dag.params)
        params.update({"models": [model]})
        params.validate()
        assert dag.get_task(f"{model}.train")
    with pytest.raises(ParamValidationError, match="'resnet' is not one of"):
        copy.deepcopy(dag.params).update({"models": ["resnet"]})


def test_an_untouched_trigger_form_starts_a_valid_run_and_every_task_retries(dag) -> None:
    params = copy.deepcopy(dag.params)
    params.validate()  # the defaults alone make a valid run
    for name in params:  # the form explains every field it shows
        assert params.get_param(name).description, name
    assert all(task.retries >= 1 for task in dag.tasks)
    # One run at a time, and no backfill of the weeks the scheduler was down.
    assert dag.catchup is False and dag.max_active_runs == 1


def test_the_form_leaves_a_typed_number_as_typed_for_airflow_to_refuse(dag) -> None:
    """The form's number field clamps what was typed into a top-level minimum or maximum (epochs 0
    became 1 and started a full run); nested in `allOf`, the bounds are Airflow's to enforce."""
    from airflow.sdk.exceptions import ParamValidationError

    for name in dag.params:
        assert not {"minimum", "maximum"} & set(dag.params.get_param(name).schema), name
    for name, bad in (("epochs", 0), ("cnn_batch_size", -1), ("promotion_margin", 0.7)):
        with pytest.raises(ParamValidationError, match=f"Invalid input for param {name}: {bad} is"):
            copy.deepcopy(dag.params).update({name: bad})


def test_the_rest_api_refuses_epochs_0_naming_the_field_and_starts_nothing(api) -> None:
    runs = "/api/v2/dags/mnist_training/dagRuns"
    before = api.get(runs).json()["total_entries"]
    for field in ("epochs", "dnn_epochs"):
        response = api.post(runs, json={"logical_date": None, "conf": {"models": ["linear"], field: 0}})
        assert response.status_code == 400, response.text
        detail = response.json()["detail"]
        assert detail.startswith(f"Invalid input for param {field}: 0 is less than the minimum of 1")
    assert api.get(runs).json()["total_entries"] == before


def test_a_run_refuses_epochs_0_naming_the_field_instead_of_reading_it_as_empty(dag) -> None:
    """Should a run's conf ever bypass the schema: 0 is not "empty", which keeps the default."""
    from mnist_pipeline.config import PipelineSettings
    from mnist_pipeline.errors import ConfigError
    from mnist_pipeline.run_params import RunParams

    defaults = {name: dag.params[name] for name in dag.params}
    for conf in ({"cnn_epochs": 0, "epochs": 3}, {"epochs": 0}):
        field = next(iter(conf))
        with pytest.raises(ConfigError, match=rf"^param {field} must be a positive integer, got 0 \(empty"):
            RunParams.from_params(defaults | conf, PipelineSettings())


@pytest.fixture(scope="module")
def fresh_parse(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """Every DAG file in turn in one fresh process (a parse is a new Python, as the dag-processor's),
    checked after each, with a schedule set and an unreachable metadata database: the first file
    that loads TensorFlow or Keras, itself or through the library modules it imports (the form, the
    run's params, the approval), is named; the training DAG's timetable is printed."""
    code = (
        "import runpy, sys\n"
        "for path in sys.argv[1:]:\n"
        "    names = runpy.run_path(path)\n"
        "    heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
        "    if heavy: sys.exit(f'{path} imports {heavy}')\n"
        "    if path.endswith('/mnist_training.py'):\n"
        "        timetable = names['dag'].timetable\n"
        "        print(type(timetable).__name__, timetable.timetable.expression)\n"
    )
    files = sorted(str(path) for path in (REPO / "dags").glob("*.py"))
    assert len(files) >= 3 and str(REPO / "dags" / "mnist_training.py") in files, files
    env = os.environ | {
        "MNIST_SCHEDULE": "15 4 * * 2",
        # An unreachable database: parsing must not need one.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:////nonexistent-folder/airflow.db",
        "AIRFLOW_HOME": str(tmp_path_factory.mktemp("parse-home")),
    }
    return subprocess.run(
        [sys.executable, "-c", code, *files], capture_output=True, text=True, env=env, timeout=120
    )


def test_parsing_the_dag_files_imports_no_tensorflow(fresh_parse: subprocess.CompletedProcess[str]) -> None:
    assert fresh_parse.returncode == 0, fresh_parse.stdout + fresh_parse.stderr[-3000:]


def test_the_schedule_parses_without_database_or_network(
    fresh_parse: subprocess.CompletedProcess[str],
) -> None:
    assert fresh_parse.returncode == 0, fresh_parse.stderr[-3000:]
    assert fresh_parse.stdout.split() == ["AssetOrTimeSchedule", "15", "4", "*", "*", "2"]


def test_unpausing_starts_nothing_before_the_next_scheduled_time(dag) -> None:
    import pendulum
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    timetable = coerce_to_core_timetable(dag.timetable)
    first = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=False),
    )
    assert first is not None and first.run_after > pendulum.now("UTC")  # no run for a slot already past
    assert first.run_after.weekday() == 0 and first.run_after.hour == 3  # the next Monday, 03:00 UTC


def parse_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """The DAG of the file parsed again, as the dag processor parses it, with `env` added to the
    environment (the queue, pool and schedule are read when the file is parsed)."""
    import runpy

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(REPO / "dags" / "mnist_training.py"))["dag"]


def test_training_tasks_go_to_the_configured_queue_and_pool_and_nothing_else_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dag = parse_with(monkeypatch, MNIST_TRAIN_QUEUE="gpu", MNIST_TRAIN_POOL="gpu")
    routed = {task.task_id: [task.queue, task.pool] for task in dag.tasks}
    assert any(task_id.endswith(".train") for task_id in routed)
    for task_id, (queue, pool) in routed.items():
        expected = ["gpu", "gpu"] if task_id.endswith(".train") else ["default", "default_pool"]
        assert [queue, pool] == expected, task_id


def test_training_runs_on_the_default_queue_when_no_queue_is_configured(dag) -> None:
    assert {dag.get_task(f"{m}.train").queue for m in MODEL_NAMES} == {"default"}


def test_an_invalid_queue_name_fails_parsing_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from mnist_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="MNIST_TRAIN_QUEUE must be a plain name"):
        parse_with(monkeypatch, MNIST_TRAIN_QUEUE="gpu queue;rm")


def test_schedule_none_keeps_only_the_new_data_trigger(monkeypatch: pytest.MonkeyPatch) -> None:
    timetable = parse_with(monkeypatch, MNIST_SCHEDULE="none").timetable
    assert type(timetable).__name__.startswith("AssetTriggeredTimetable")
    timetable = parse_with(monkeypatch, MNIST_SCHEDULE="0 3 * * 1").timetable
    assert type(timetable).__name__.startswith("AssetOrTimeSchedule")
