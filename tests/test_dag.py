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
