"""The `mnist_champion` asset, with `dag.test()`: one event, its extra naming the new champion, when a
run moves the champion; none for a dry run or a kept champion; and the consumer DAG exporting the
champion for TF Serving. A tiny linear model (2,000 images, 1 epoch), forced past the floor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.release import CHAMPION_ASSET_NAME, Release
from mnist_pipeline.registry.serving_export import SERVING_ROOT, serving_exports
from mnist_pipeline.storage import open_storage

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
TINY = {"models": ["linear"], "max_train_images": 2000, "epochs": 1}


@pytest.fixture(scope="module")
def dags(airflow_db) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("MNIST_REGISTRY_URI", str(tmp_path / "registry"))
    monkeypatch.setenv("MNIST_ARTIFACTS_URI", str(tmp_path / "artifacts"))
    return Registry(open_storage(str(tmp_path / "registry")))


def champion_events() -> list[tuple[int, str | None, str | None, dict]]:
    """Every event on the asset: (id, the run and the task that emitted it, extra)."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
        rows = session.scalars(query.where(AssetModel.name == CHAMPION_ASSET_NAME)).all()
        return [(row.id, row.source_run_id, row.source_task_id, row.extra) for row in rows]


def run_ok(dag: Any, **conf: Any) -> dict[str, str]:
    """Run `dag` with `conf`; returns each task's final state."""
    from airflow.utils.state import DagRunState

    dag_run = dag.test(run_conf=conf or None)
    assert dag_run.state == DagRunState.SUCCESS
    return task_states(dag.dag_id, dag_run.run_id)


def task_states(dag_id: str, run_id: str) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        return {ti.task_id: str(ti.state) for ti in session.scalars(query)}


def test_only_a_move_of_the_champion_is_announced_and_the_consumer_exports_it(dags, registry) -> None:
    before = champion_events()
    states = run_ok(dags["mnist_training"], **TINY, force_promote=True)
    assert (states["approval"], states["release"]) == ("skipped", "success")  # approval: none
    champion = registry.champion()
    assert champion is not None
    (event,) = [event for event in champion_events() if event not in before]
    assert event[2] == "release" and event[3] == Release.of(champion).to_dict()
    assert set(event[3]) == {"model", "version", "uri", "metrics"}

    # Started by hand (no event): the consumer exports the current champion, once.
    assert run_ok(dags["mnist_serving_export"]) == {"export": "success"}
    run_ok(dags["mnist_serving_export"])
    assert [(e.number, e.version) for e in serving_exports(registry.storage)] == [(1, champion.version)]
    assert registry.storage.exists(f"{SERVING_ROOT}/1/saved_model.pb")
    assert registry.storage.list_keys(f"{SERVING_ROOT}/1/variables/")

    announced = champion_events()
    states = run_ok(dags["mnist_training"], **TINY, force_promote=True, dry_run=True)
    assert states["release"] == "skipped" and champion_events() == announced
    states = run_ok(dags["mnist_training"], **TINY)  # the same model again: not better, kept
    assert states["release"] == "skipped" and champion_events() == announced
    assert registry.champion() == champion
