"""The CLI takes every param of the trigger form, under the same name (dashed), and a CLI run
honours them as a DAG run does. Fast: the steps are replaced by recorders, nothing trains."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline import cli, steps
from mnist_pipeline.config import PipelineSettings, TrainConfig
from mnist_pipeline.data.snapshot import SnapshotInfo
from mnist_pipeline.orchestration.form import training_params
from mnist_pipeline.registry.gate import GateConfig
from mnist_pipeline.run_params import RunParams
from mnist_pipeline.runs import run_key
from mnist_pipeline.storage import open_storage


def flags_by_command() -> dict[str, set[str]]:
    """Every option flag of `mnist-pipeline`, by command ("" for those before the command)."""
    parser = cli._parser()
    found = {"": {flag for action in parser._actions for flag in action.option_strings}}
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        found[name] = {flag for action in sub._actions for flag in action.option_strings}
    return found


def test_every_form_param_is_a_cli_option_of_the_same_name() -> None:
    flags = flags_by_command()
    for name in training_params(PipelineSettings()):
        flag = "--" + name.replace("_", "-")
        assert flag in flags[""] or flag in flags["run"], name  # `run` is a whole DAG run
    training = {"epochs", "batch_size", "learning_rate", "precision", "warm_start", "cnn_epochs"}
    assert {f"--{name.replace('_', '-')}" for name in training} <= flags["train"]
    gate = {"promotion_margin", "new_data_margin", "non_inferiority_margin", "max_recall_drop"}
    gate |= {"min_slice_images", "force_promote", "dry_run", "approval", "approval_timeout_hours"}
    assert {f"--{name.replace('_', '-')}" for name in gate} <= flags["promote"]
    assert {"--force", "--margin", "--dry-run"} <= flags["promote"]  # the names it had before


def test_no_cli_option_resolves_as_the_untouched_form() -> None:
    operator = PipelineSettings(max_train_images=3000)
    form = {name: param.value for name, param in training_params(operator).items()}
    from_cli = RunParams.from_params(cli.options.given_options(cli._parser().parse_args(["run"])), operator)
    from_form = RunParams.from_params(form, operator)
    assert from_cli.settings == from_form.settings and from_cli.settings.max_train_images == 3000
    assert from_cli.promotion_options().gate == from_form.promotion_options().gate == GateConfig()
    for name in ("models", "sweep", "warm_start_mode", "precision", "approval_timeout_hours"):
        assert getattr(from_cli, name) == getattr(from_form, name), name


@dataclass
class Recorder:
    """Stands in for the steps: records what each was given."""

    calls: dict[str, list[Any]] = field(default_factory=dict)

    def step(self, name: str, result: Any) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.setdefault(name, []).append((args, kwargs))
            return result(*args) if callable(result) else result

        return record


class Outcome:
    """A step's record, as far as the CLI prints it."""

    def to_dict(self) -> dict[str, Any]:
        return {"promoted": False}


SNAPSHOT = SnapshotInfo("0" * 64, "uri", "source", 3000, 10000)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Recorder:
    monkeypatch.setenv("MNIST_ARTIFACTS_URI", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MNIST_REGISTRY_URI", str(tmp_path / "registry"))
    monkeypatch.delenv("MNIST_APPROVAL", raising=False)
    recorder = Recorder()
    monkeypatch.setattr(steps, "ingest", recorder.step("ingest", SNAPSHOT))
    monkeypatch.setattr(steps, "train", recorder.step("train", Outcome()))
    monkeypatch.setattr(steps, "select", recorder.step("select", lambda model, trainings, *_: trainings[0]))
    monkeypatch.setattr(steps, "evaluate", recorder.step("evaluate", "evaluation"))
    monkeypatch.setattr(steps, "run_evaluations", recorder.step("run_evaluations", ["evaluation"]))
    monkeypatch.setattr(steps, "promote", recorder.step("promote", Outcome()))
    return recorder


def test_a_cli_run_honours_every_option(recorder: Recorder, capsys: pytest.CaptureFixture) -> None:
    argv = ["--max-train-images", "3000", "--source", "/data/mnist.npz", "--run-id", "r1", "run"]
    argv += ["--models", "cnn", "linear", "--epochs", "5", "--cnn-epochs", "2", "--batch-size", "64"]
    argv += ["--learning-rate", "0.01", "--precision", "float32", "--warm-start", "on"]
    argv += ["--sweep", json.dumps({"cnn": {"dropout": [0.2, 0.3]}}), "--promotion-margin", "0.002"]
    argv += ["--new-data-margin", "0.01", "--non-inferiority-margin", "0.003", "--max-recall-drop", "0.02"]
    argv += ["--min-slice-images", "50", "--force-promote", "--dry-run", "--approval", "required"]
    assert cli.main([*argv, "--approval-timeout-hours", "2"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out) == {"promoted": False}

    (settings, run_id), _ = recorder.calls["ingest"][0]
    assert (settings.max_train_images, settings.source, run_id) == (3000, "/data/mnist.npz", "r1")
    trained = [
        (args[0], args[2], args[5], kwargs.get("trial", args[6])) for args, kwargs in recorder.calls["train"]
    ]
    assert [(model, trial.settings) for model, _, _, trial in trained] == [
        ("linear", {}),
        ("cnn", {"dropout": 0.2}),
        ("cnn", {"dropout": 0.3}),
    ]
    assert trained[0][1] == TrainConfig(epochs=5, batch_size=64, learning_rate=0.01, precision="float32")
    assert trained[1][1] == TrainConfig(epochs=2, batch_size=64, learning_rate=0.01, precision="float32")
    assert all(warm is True for _, _, warm, _ in trained)
    ((args, _),) = recorder.calls["promote"]
    options = args[3]
    assert options.gate == GateConfig(
        margin=0.002, new_data_margin=0.01, non_inferiority=0.003, max_recall_drop=0.02, min_slice_images=50
    )
    assert options.force and options.dry_run and options.approval and options.trigger.startswith("cli:")
    assert options.run_conf["approval_timeout_hours"] == 2.0 and options.run_conf["models"] == [
        "cnn",
        "linear",
    ]


def test_train_and_promote_take_the_forms_options_and_their_earlier_names(
    recorder: Recorder, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    open_storage(str(tmp_path / "artifacts")).write_json(f"{run_key('r2')}/ingest.json", SNAPSHOT.to_dict())
    argv = ["--run-id", "r2", "train", "dnn", "--epochs", "3", "--dnn-batch-size", "32", "--warm-start"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    ((args, kwargs),) = recorder.calls["train"]
    assert args[2] == TrainConfig(epochs=3, batch_size=32) and kwargs["warm_start"] is True
    assert (
        cli.main(
            ["--run-id", "r2", "promote", "--margin", "0.004", "--force", "--non-inferiority-margin", "0"]
        )
        == 0
    )
    ((args, _),) = recorder.calls["promote"]
    assert args[3].gate == GateConfig(margin=0.004, non_inferiority=0.0) and args[3].force
    assert not args[3].approval  # MNIST_APPROVAL unset: nobody approves


def test_a_cli_option_out_of_the_forms_bounds_is_refused_naming_it(
    recorder: Recorder, capsys: pytest.CaptureFixture
) -> None:
    assert cli.main(["run", "--promotion-margin", "0.7"]) == 2
    assert (
        "param promotion_margin must be a number at least 0 and at most 0.5, got 0.7"
        in capsys.readouterr().err
    )
    assert cli.main(["run", "--sweep", '{"resnet": {}}']) == 2
    assert "sweep" in capsys.readouterr().err and "ingest" not in recorder.calls
