"""Sweeps: the `sweep` parameter's expansion and every refusal (in the library, in Airflow's own
param validation, through the REST API that the trigger form posts to), the choice of a winner
on validation, and a 2x2 CNN sweep run end to end with `dag.test()`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline.config import PipelineSettings, TrainConfig
from mnist_pipeline.errors import ConfigError
from mnist_pipeline.evaluation.model_card import render_model_card
from mnist_pipeline.runs import model_key, trial_key
from mnist_pipeline.training.architectures import MODEL_NAMES, MODELS
from mnist_pipeline.training.record import TrainingRecord
from mnist_pipeline.training.sweeps import Trial, check_sweep, expand_sweep, sweep_schema
from mnist_pipeline.trials import TrialResult, TrialSummary, TrialTable, choose_winner

REPO = Path(__file__).resolve().parent.parent
LIMIT = PipelineSettings().max_trials  # 16: the DAG file is parsed without MNIST_MAX_TRIALS
GRID = {"cnn": {"learning_rate": [0.001, 0.003], "dropout": [0.2, 0.4]}}
# (sweep, the field the refusal names, what it says): every way a sweep is refused.
REFUSED = {
    "unknown model": ({"resnet": {"dropout": [0.2]}}, "sweep", "'resnet' is not one of ['linear', 'dnn'"),
    "unknown setting": ({"cnn": {"lr": [0.1]}}, "sweep.cnn", "'lr' is not one of ['epochs'"),
    "unknown setting in a trial": ({"cnn": [{"dropout": 0.2}, {"lr": 0.1}]}, "sweep.cnn[1]", "'lr'"),
    "a setting of another model": ({"linear": {"dropout": [0.2]}}, "sweep.linear", "'dropout' is not one"),
    "empty list": ({"cnn": {"dropout": []}}, "sweep.cnn.dropout", "should be non-empty"),
    "empty list of trials": ({"cnn": []}, "sweep.cnn", "should be non-empty"),
    "empty grid": ({"cnn": {}}, "sweep.cnn", "should be non-empty"),
    "a string for a number": ({"cnn": {"dropout": ["0.2"]}}, "sweep.cnn.dropout[0]", "not of type 'number'"),
    "a fraction for an integer": ({"dnn": [{"epochs": 1.5}]}, "sweep.dnn[0].epochs", "not of type 'integer'"),
    "a boolean for an integer": ({"cnn": {"epochs": [True]}}, "sweep.cnn.epochs[0]", "not of type 'integer'"),
    "out of range": ({"cnn": {"dropout": [0.2, 1.0]}}, "sweep.cnn.dropout[1]", "maximum of 1"),
    "a zero learning rate": ({"dnn": {"learning_rate": [0]}}, "sweep.dnn.learning_rate[0]", "minimum of 0"),
    "no layers": ({"dnn": {"hidden_units": [[]]}}, "sweep.dnn.hidden_units[0]", "should be non-empty"),
    "neither grid nor list": ({"cnn": 0.2}, "sweep.cnn", "not of type 'object', 'array'"),
    "repeated values": ({"cnn": {"dropout": [0.2, 0.2]}}, "sweep.cnn.dropout", "non-unique"),
    "too many trials listed": (
        {"cnn": [{"dropout": 0.01 * i} for i in range(LIMIT + 1)]},
        "sweep.cnn",
        f"{LIMIT + 1} trials, more than the limit of {LIMIT} (MNIST_MAX_TRIALS)",
    ),
    "a grid list longer than the limit": (
        {"dnn": {"epochs": list(range(1, LIMIT + 2))}},
        "sweep.dnn.epochs",
        f"{LIMIT + 1} values, more than the limit of {LIMIT}",
    ),
}
# Each list within the limit, their product beyond it: no JSON schema can say so; the library does.
TOO_LARGE_A_GRID = {
    "cnn": {"learning_rate": [0.001, 0.002, 0.003, 0.004, 0.005], "dropout": [0.1, 0.2, 0.3, 0.4]}
}


# --- expansion -----------------------------------------------------------------------------------


def test_a_grid_expands_to_every_combination_the_first_setting_varying_slowest() -> None:
    trials = expand_sweep(GRID, "cnn", LIMIT)
    assert [trial.settings for trial in trials] == [
        {"learning_rate": 0.001, "dropout": 0.2},
        {"learning_rate": 0.001, "dropout": 0.4},
        {"learning_rate": 0.003, "dropout": 0.2},
        {"learning_rate": 0.003, "dropout": 0.4},
    ]
    assert [trial.index for trial in trials] == [0, 1, 2, 3] and all(trial.swept for trial in trials)
    assert len({trial.key("run") for trial in trials}) == 4  # each its own model and checkpoint


def test_an_explicit_list_keeps_its_trials_with_values_as_the_config_declares_them() -> None:
    sweep = {"cnn": [{"learning_rate": 0.001}, {"learning_rate": 1, "epochs": 2.0, "filters": [16, 32.0]}]}
    first, second = expand_sweep(sweep, "cnn", LIMIT)
    assert first.settings == {"learning_rate": 0.001}
    assert second.settings == {"learning_rate": 1.0, "epochs": 2, "filters": [16, 32]}
    assert isinstance(second.settings["epochs"], int) and isinstance(second.settings["learning_rate"], float)


def test_a_model_the_sweep_does_not_name_trains_once_where_it_always_did() -> None:
    for sweep in (None, {}, GRID):
        (trial,) = expand_sweep(sweep, "dnn", LIMIT)
        assert trial == Trial("dnn", 0) and not trial.swept
        assert trial.key("run-1") == model_key("run-1", "dnn")
    assert expand_sweep(GRID, "cnn", LIMIT)[2].key("run-1") == trial_key("run-1", "cnn", 2)
    assert trial_key("run-1", "cnn", 2) == "runs/run-1/cnn/trials/2"


def test_a_trial_overrides_the_run_settings_and_the_model_settings() -> None:
    trial = Trial("cnn", 1, {"learning_rate": 0.003, "epochs": 2, "dropout": 0.4, "filters": [16, 32]}, True)
    config, model_settings = trial.configs(TrainConfig(epochs=5, batch_size=64, precision="float32"))
    assert (config.epochs, config.batch_size, config.learning_rate) == (2, 64, 0.003)
    assert config.precision == "float32" and model_settings == {"dropout": 0.4, "filters": (16, 32)}
    assert Trial("cnn", 0).configs(TrainConfig(epochs=5)) == (TrainConfig(epochs=5), {})


def test_a_trial_survives_xcom() -> None:
    trial = expand_sweep(GRID, "cnn", LIMIT)[3]
    assert Trial.from_dict(json.loads(json.dumps(trial.to_dict())), "xcom") == trial


# --- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_library_refuses_a_bad_sweep_naming_the_field(case: str) -> None:
    sweep, field, message = REFUSED[case]
    with pytest.raises(ConfigError) as refused:
        check_sweep(sweep, LIMIT)
    assert str(refused.value).startswith(f"{field}: ") and message in str(refused.value)


def test_the_library_refuses_a_grid_whose_product_exceeds_the_limit_before_anything_trains() -> None:
    for check in (
        lambda: expand_sweep(TOO_LARGE_A_GRID, "cnn", LIMIT),
        lambda: check_sweep(TOO_LARGE_A_GRID, LIMIT),
    ):
        with pytest.raises(ConfigError, match=r"^sweep\.cnn: 20 trials, more than the limit of 16"):
            check()
    assert len(expand_sweep(TOO_LARGE_A_GRID, "cnn", 20)) == 20


def test_the_trial_limit_is_a_setting() -> None:
    assert PipelineSettings.from_env({"MNIST_MAX_TRIALS": "4"}).max_trials == 4
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match="MNIST_MAX_TRIALS"):
            PipelineSettings.from_env({"MNIST_MAX_TRIALS": bad})
    with pytest.raises(ConfigError, match=r"5 trials, more than the limit of 4 \(MNIST_MAX_TRIALS\)"):
        expand_sweep({"dnn": [{"dropout": 0.1 * i} for i in range(5)]}, "dnn", 4)


# --- the schema, as Airflow validates the parameter ---------------------------------------------------


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags")).dags["mnist_training"]


def test_airflow_validates_the_sweep_with_the_draft_the_library_uses_and_whose_metaschema_it_meets(
    dag,
) -> None:
    """Airflow's jsonschema picks the validator from `$schema` and checks the schema against that
    draft's metaschema at each validation: draft 7, whose check is cheap (2020-12's took 120 ms for
    this schema, on every Param validation of every parse)."""
    from jsonschema import Draft7Validator
    from jsonschema.validators import validator_for

    schema = dag.params.get_param("sweep").schema
    assert validator_for(schema) is Draft7Validator
    Draft7Validator.check_schema(schema)
    good, bad = {"cnn": {"dropout": [0.2, 0.4]}}, {"cnn": {"dropout": [2]}}
    assert Draft7Validator(schema).is_valid(good) and not Draft7Validator(schema).is_valid(bad)


def test_the_schema_is_generated_from_the_model_table_and_each_models_config(dag) -> None:
    from dataclasses import fields

    schema = dag.params.get_param("sweep").schema
    named, entries = schema["allOf"]
    assert named["propertyNames"]["enum"] == list(MODEL_NAMES) == list(entries["properties"])
    defs = schema["$defs"]
    for name, spec in MODELS.items():
        settings = sorted(f.name for f in fields(spec.config_type))
        grid, trials, trial = (defs[f"{name}.{part}"]["allOf"] for part in ("grid", "trials", "trial"))
        assert (
            sorted(grid[1]["propertyNames"]["enum"]) == settings == sorted(trial[1]["propertyNames"]["enum"])
        )
        assert {"maxItems": LIMIT} in trials
        assert all({"maxItems": LIMIT} in defs[f"{name}.{setting}.values"]["allOf"] for setting in settings)
    assert "dropout" not in defs["linear.grid"]["allOf"][1]["propertyNames"]["enum"]
    generated = sweep_schema(MODELS, LIMIT)
    assert {key: schema[key] for key in generated} == generated  # plus the form's title and section
    assert dag.params["sweep"] == {}  # no sweep: one training per model


def test_a_bad_sweep_is_refused_in_one_short_line_per_wrong_field(dag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    bad = {"cnn": {"dropout": [2], "lr": [0.1]}, "dnn": [{"hidden_units": [0]}], "linear": {"epochs": {}}}
    with pytest.raises(ConfigError) as refused:
        check_sweep(bad, LIMIT)
    lines = str(refused.value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        "sweep.cnn",
        "sweep.cnn.dropout[0]",
        "sweep.dnn[0].hidden_units[0]",
        "sweep.linear.epochs",
    ]
    assert "'lr' is not one of ['epochs'" in lines[0] and lines[1].endswith("the maximum of 1")
    assert lines[2].endswith("less than the minimum of 1") and lines[3].endswith("is not of type 'array'")
    huge = {"cnn": {"dropout": {"values": list(range(10_000))}}}
    with pytest.raises(
        ConfigError, match=r"^sweep\.cnn\.dropout: \{'values': \[0, 1, 2, 3, \.\.\.\]\} is not of"
    ):
        check_sweep(huge, LIMIT)
    # Airflow's own refusal (form, REST API, `dags test -c`) quotes the one check that failed.
    with pytest.raises(ParamValidationError) as by_airflow:
        copy.deepcopy(dag.params).update({"sweep": {"cnn": {"dropout": [2]}}})
    assert len(str(by_airflow.value)) < 400 and "On instance['cnn']['dropout'][0]" in str(by_airflow.value)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_airflow_refuses_a_bad_sweep_before_any_task_runs(dag, case: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    sweep, _, message = REFUSED[case]
    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError, match="Invalid input for param sweep") as refused:
        params.update({"sweep": sweep})
        params.validate()
    if "limit" not in message:  # the schema says "is too long"; the library counts the trials
        assert message.split(" (")[0] in str(refused.value)
    assert len(str(refused.value)) < 1500  # the check that failed, not every model's schema


def test_airflow_accepts_a_good_sweep_and_a_grid_too_large_only_the_library_can_count(dag) -> None:
    for sweep in (GRID, {"dnn": [{"hidden_units": [256]}, {"hidden_units": [512, 256], "epochs": 3}]}):
        params = copy.deepcopy(dag.params)
        params.update({"sweep": sweep})
        assert params.validate()["sweep"] == sweep
    params = copy.deepcopy(dag.params)
    params.update({"sweep": TOO_LARGE_A_GRID})
    params.validate()  # each list is within the limit: the ingest task refuses the product


# --- choosing the winner ---------------------------------------------------------------------------


def summary(index: int, accuracy: float, loss: float) -> TrialSummary:
    return TrialSummary(index, {"dropout": 0.1 * index}, accuracy, loss, 1, 2.5, "gpu@host")


def test_the_winner_has_the_best_validation_accuracy_then_the_lowest_validation_loss() -> None:
    assert choose_winner([summary(0, 0.95, 0.2), summary(1, 0.97, 0.3), summary(2, 0.96, 0.1)]).index == 1
    assert choose_winner([summary(0, 0.97, 0.3), summary(1, 0.97, 0.2), summary(2, 0.96, 0.1)]).index == 1
    assert choose_winner([summary(0, 0.97, 0.2), summary(1, 0.97, 0.2)]).index == 0  # a full tie: the first
    with pytest.raises(ConfigError):
        choose_winner([])
    assert not {"accuracy", "test_accuracy", "loss"} & set(summary(0, 0.9, 0.1).to_dict())  # no test figures


def training_record(index: int | None, accuracy: float, loss: float, sha256: str) -> TrainingRecord:
    trial = None
    if index is not None:
        row = summary(index, accuracy, loss).to_dict()
        trial = TrialResult(**row, val_accuracy_per_epoch=[accuracy], val_loss_per_epoch=[loss])
    return TrainingRecord(
        model="cnn", run_id="run-1", data_hash="d", model_uri="u", model_sha256=sha256, trained_at="t",
        epochs_run=1, train_seconds=2.5, global_batch_size=128, replicas=1, model_config={},
        train_config={}, trial=trial,
    )  # fmt: skip


def test_select_keeps_the_best_trial_on_validation_writes_the_table_and_moves_the_winner_up(
    tmp_path: Path,
) -> None:
    from mnist_pipeline.hashing import sha256_hex
    from mnist_pipeline.steps import select
    from mnist_pipeline.storage import open_storage

    settings = PipelineSettings(artifacts_uri=str(tmp_path))
    artifacts, records = open_storage(settings.artifacts_uri), []
    for index, (accuracy, loss) in enumerate([(0.95, 0.2), (0.97, 0.3), (0.97, 0.25)]):
        model = f"model {index}".encode()
        artifacts.write_bytes(f"{trial_key('run-1', 'cnn', index)}/model.keras", model)
        record = training_record(index, accuracy, loss, sha256_hex(model))
        artifacts.write_json(f"{trial_key('run-1', 'cnn', index)}/training.json", {"history": {"i": [index]}})
        records.append(record)

    chosen = select("cnn", list(reversed(records)), settings, "run-1")
    assert chosen.trial.index == 2 and [row.index for row in chosen.trials] == [0, 1, 2]
    assert type(chosen.trials[0]) is TrialSummary  # the rows alone travel on, not the curves
    table = TrialTable.from_dict(artifacts.read_json("runs/run-1/cnn/trials.json"), "trials.json")
    assert table.winner == 2 and table.trials[2].settings == {"dropout": 0.2} and len(table.trials) == 3
    assert artifacts.read_bytes("runs/run-1/cnn/model.keras") == b"model 2"
    stored = artifacts.read_json("runs/run-1/cnn/training.json")
    assert stored["history"] == {"i": [2]} and stored["trial"]["index"] == 2 and len(stored["trials"]) == 3
    assert chosen.model_uri == artifacts.uri("runs/run-1/cnn/model.keras")


def test_without_a_sweep_select_passes_the_one_training_on_and_its_record_is_as_before(
    tmp_path: Path,
) -> None:
    from mnist_pipeline.steps import select

    record = training_record(None, 0.0, 0.0, "abc")
    assert select("cnn", [record], PipelineSettings(artifacts_uri=str(tmp_path)), "run-1") is record
    assert not list(tmp_path.rglob("*"))  # nothing written
    assert "trial" not in record.to_dict() and "trials" not in record.to_dict()


def test_the_model_card_shows_the_trials_when_there_was_more_than_one() -> None:
    rows = [summary(0, 0.95, 0.2).to_dict(), summary(1, 0.97, 0.3).to_dict()]
    metadata = {"model": "cnn", "version": "v", "data_hash": "d"}
    metrics = {
        "test_images": 10,
        "test_hash": "h",
        "accuracy": 0.9,
        "errors": 1,
        "loss": 0.3,
        "per_class": {},
    }
    card = render_model_card(metadata, metrics, None, {"trials": rows, "trial": rows[1]})
    trials = card.split("## Trials")[1].split("## Gate verdict")[0]
    assert "| **1** | **dropout=0.1** | **0.9700** | **0.3000** | **1** | **2.5** | **gpu@host** |" in trials
    assert "| 0 | dropout=0.0 | 0.9500 | 0.2000 | 1 | 2.5 | gpu@host |" in trials
    assert "validation split" in trials and "test set played no part" in trials
    for training in ({"trials": rows[:1], "trial": rows[0]}, {}):  # one trial, or no sweep: no table
        assert "## Trials" not in render_model_card(metadata, metrics, None, training)


# --- refused by the REST API (what the trigger form posts to) ---------------------------------------


@pytest.mark.parametrize(
    "case", ["unknown setting", "empty list", "a string for a number", "too many trials listed"]
)
def test_the_rest_api_refuses_a_bad_sweep_with_400_naming_it(api, case: str) -> None:
    sweep, _, _ = REFUSED[case]
    body = {"logical_date": None, "conf": {"sweep": sweep, "models": ["cnn"]}}
    response = api.post("/api/v2/dags/mnist_training/dagRuns", json=body)
    assert response.status_code == 400, response.text
    assert "Invalid input for param sweep" in response.json()["detail"]


# --- end to end ------------------------------------------------------------------------------------


@pytest.fixture
def local_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    uris = {
        "MNIST_ARTIFACTS_URI": str(tmp_path / "artifacts"),
        "MNIST_REGISTRY_URI": str(tmp_path / "registry"),
    }
    for name, uri in uris.items():
        monkeypatch.setenv(name, uri)
    return uris


def task_instances(run_id: str) -> dict[tuple[str, int], str | None]:
    """Each task instance of the run, (task id, map index) -> state."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(TaskInstance).where(
            TaskInstance.dag_id == "mnist_training", TaskInstance.run_id == run_id
        )
        return {
            (ti.task_id, ti.map_index): getattr(ti.state, "value", ti.state) for ti in session.scalars(query)
        }


@pytest.mark.slow  # runs the DAG with dag.test()
def test_a_grid_too_large_fails_the_first_task_at_once_and_nothing_trains(
    airflow_db, dag, local_stores: dict[str, str]
) -> None:
    dag_run = dag.test(run_conf={"models": ["cnn"], "sweep": TOO_LARGE_A_GRID})
    states = task_instances(dag_run.run_id)
    assert dag_run.state == "failed" and states[("ingest", -1)] == "failed"
    assert {state for (task, _), state in states.items() if task.endswith((".trials", ".train"))} == {
        "upstream_failed"
    }
    assert not Path(local_stores["MNIST_ARTIFACTS_URI"]).exists()  # not even the data was read


@pytest.mark.slow
def test_a_2x2_cnn_sweep_trains_four_trials_and_evaluates_only_the_winner(
    airflow_db, dag, local_stores: dict[str, str]
) -> None:
    from mnist_pipeline.storage import open_storage
    from mnist_pipeline.workers import worker_hostname

    conf = {"models": ["cnn"], "epochs": 1, "max_train_images": 2000, "sweep": GRID, "force_promote": True}
    dag_run = dag.test(run_conf=conf)
    assert dag_run.state == "success"
    states = task_instances(dag_run.run_id)
    trained = {index: state for (task, index), state in states.items() if task == "cnn.train"}
    assert trained == {0: "success", 1: "success", 2: "success", 3: "success"}  # 4 mapped instances
    assert [key for key in states if key[0] == "cnn.evaluate"] == [("cnn.evaluate", -1)]
    assert states[("dnn.train", -1)] == "skipped"  # not selected: no trial of it ran

    artifacts = open_storage(local_stores["MNIST_ARTIFACTS_URI"])
    prefix = model_key(dag_run.run_id, "cnn")
    table = TrialTable.from_dict(artifacts.read_json(f"{prefix}/trials.json"), "trials.json")
    expected = [trial.settings for trial in expand_sweep(GRID, "cnn", LIMIT)]
    assert [row.settings for row in table.trials] == expected
    assert table.winner == choose_winner(table.trials).index
    assert {row.worker for row in table.trials} == {worker_hostname()}
    assert all(row.epochs_run == 1 and len(row.val_accuracy_per_epoch) == 1 for row in table.trials)
    assert_only_the_winner_was_evaluated(artifacts, dag_run.run_id, table)
    assert_the_published_version_shows_the_trials(local_stores["MNIST_REGISTRY_URI"], table)


def assert_only_the_winner_was_evaluated(artifacts: Any, run_id: str, table: TrialTable) -> None:
    from mnist_pipeline.evaluation.record import EvaluationRecord

    prefix = model_key(run_id, "cnn")
    evaluated = [key for key in artifacts.list_keys(prefix) if key.endswith("/metrics.json")]
    assert evaluated == [f"{prefix}/metrics.json"]  # the winner alone met the test set
    evaluation = EvaluationRecord.from_dict(artifacts.read_json(f"{prefix}/evaluation.json"), "evaluation")
    assert evaluation.trial.index == table.winner and len(evaluation.trials) == 4
    assert evaluation.trial.settings == table.trials[table.winner].settings
    winner = artifacts.read_json(f"{trial_key(run_id, 'cnn', table.winner)}/training.json")
    assert evaluation.model_sha256 == winner["model_sha256"]
    assert not [key for key in artifacts.list_keys(prefix) if "/checkpoint/" in key]


def assert_the_published_version_shows_the_trials(registry_uri: str, table: TrialTable) -> None:
    from mnist_pipeline.registry.client import Registry
    from mnist_pipeline.registry.store import VersionRef
    from mnist_pipeline.storage import open_storage
    from mnist_pipeline.web.app import load_version
    from mnist_pipeline.web.templates import render

    registry = Registry(open_storage(registry_uri))
    champion = registry.champion()
    ref = VersionRef(champion.model, champion.version)
    assert registry.metadata(ref)["winning_trial"] == table.winner
    assert "## Trials" in registry.verified_file(ref, "model_card.md").decode()
    page = render("version", **load_version(registry, ref, lambda name: name), overview_link="/")
    assert page.count("<tr data-trial=") == 4 and "winner" in page.split('id="trials"')[1]
