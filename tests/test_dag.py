"""DAG integrity: it imports cleanly, is wired as designed, and keeps TensorFlow out of parsing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert set(dag.task_group.children) == {"ingest", "linear", "dnn", "cnn", "promote"}
    for model in ("linear", "dnn", "cnn"):
        train, evaluate = dag.get_task(f"{model}.train"), dag.get_task(f"{model}.evaluate")
        assert train.upstream_task_ids == {"ingest"}
        assert evaluate.upstream_task_ids == {f"{model}.train"}
    assert dag.get_task("promote").upstream_task_ids == {"linear.evaluate", "dnn.evaluate", "cnn.evaluate"}


def test_dag_declares_schedule_tags_retries_and_docs(dag) -> None:
    assert dag.tags >= {"mnist", "keras"}
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.doc_md and "MNIST" in dag.doc_md
    assert all(task.retries >= 1 for task in dag.tasks)
    assert set(dag.params) >= {"models", "epochs", "batch_size"}


def test_parsing_the_dag_file_does_not_import_tensorflow() -> None:
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules); "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "dags" / "mnist_training.py")],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def parse_in_subprocess(code: str, **env: str) -> str:
    """Run `code` after loading the DAG file in a fresh interpreter with `env` added: the queue,
    pool and schedule are read when the file is parsed."""
    prelude = "import runpy, sys; dag = runpy.run_path(sys.argv[1])['dag']; "
    result = subprocess.run(
        [sys.executable, "-c", prelude + code, str(REPO / "dags" / "mnist_training.py")],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_training_tasks_go_to_the_configured_queue_and_pool_and_nothing_else_does() -> None:
    code = "print(sorted({t.task_id: (t.queue, t.pool) for t in dag.tasks}.items()))"
    routed = eval(parse_in_subprocess(code, MNIST_TRAIN_QUEUE="gpu", MNIST_TRAIN_POOL="gpu"))
    for task_id, (queue, pool) in routed:
        expected = ("gpu", "gpu") if task_id.endswith(".train") else ("default", "default_pool")
        assert (queue, pool) == expected, task_id


def test_training_runs_on_the_default_queue_when_no_queue_is_configured(dag) -> None:
    assert {dag.get_task(f"{m}.train").queue for m in ("linear", "dnn", "cnn")} == {"default"}


def test_an_invalid_queue_name_fails_parsing_with_a_clear_error() -> None:
    code = "import runpy, sys; runpy.run_path(sys.argv[1])"
    result = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "dags" / "mnist_training.py")],
        capture_output=True,
        text=True,
        env={**os.environ, "MNIST_TRAIN_QUEUE": "gpu queue;rm"},
        timeout=120,
    )
    assert result.returncode != 0 and "MNIST_TRAIN_QUEUE must be a plain name" in result.stderr


def test_schedule_none_keeps_only_the_new_data_trigger() -> None:
    code = "print(type(dag.timetable).__name__)"
    assert parse_in_subprocess(code, MNIST_SCHEDULE="none").startswith("AssetTriggeredTimetable")
    assert parse_in_subprocess(code, MNIST_SCHEDULE="0 3 * * 1").startswith("AssetOrTimeSchedule")
