"""A run's parameters resolved in one place (`RunParams`): which value wins, when a run starts
from the champion's weights, and what the gate is asked. Fast: nothing trains, nothing is parsed."""

from __future__ import annotations

import re
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.errors import ConfigError
from mnist_pipeline.orchestration.form import training_params
from mnist_pipeline.registry.gate import GateConfig
from mnist_pipeline.run_params import ASSET_TRIGGERED, RunParams
from mnist_pipeline.training.architectures import MODEL_NAMES, get_model_spec
from mnist_pipeline.training.trainer import resolve_model_config

OPERATOR = PipelineSettings.from_env(
    {"MNIST_MAX_TRAIN_IMAGES": "3000", "MNIST_SOURCE": "/data/mnist.npz", "MNIST_APPROVAL": "required"}
)


def untouched_form(settings: PipelineSettings = OPERATOR, **changes: Any) -> dict[str, Any]:
    """What the trigger form sends when nobody touches it (its defaults), with `changes` typed in."""
    return {name: param.value for name, param in training_params(settings).items()} | changes


def resolved(settings: PipelineSettings = OPERATOR, trigger: str = "manual", **changes: Any) -> RunParams:
    return RunParams.from_params(untouched_form(settings, **changes), settings, trigger=trigger)


# Which value wins


def test_an_untouched_form_keeps_the_operators_settings() -> None:
    """MNIST_MAX_TRAIN_IMAGES=3000 once lost to the form's default of 0 ("all")."""
    run = resolved()
    assert run.settings.max_train_images == 3000
    assert run.settings.source == "/data/mnist.npz"
    assert run.approval_required  # the form's default approval is MNIST_APPROVAL's


def test_a_value_typed_in_the_form_overrides_the_operators_setting() -> None:
    run = resolved(max_train_images=0, source="/other.npz", approval="none")
    assert run.settings.max_train_images == 0  # typed 0: all 60,000, as the form says
    assert run.settings.source == "/other.npz" and not run.approval_required
    assert resolved(max_train_images=500).settings.max_train_images == 500


def test_a_run_from_before_a_param_existed_takes_its_default() -> None:
    run = RunParams.from_params({"models": ["cnn"]}, OPERATOR)
    assert run.models == ("cnn",) and run.sweep == {} and run.precision == "auto"
    assert run.warm_start_mode == "auto" and run.gate == GateConfig() and run.approval_required
    assert run.settings.max_train_images == 3000


def test_a_models_own_epochs_and_batch_size_win_over_the_global_ones() -> None:
    run = resolved(epochs=4, batch_size=64, cnn_epochs=2, dnn_batch_size=256, learning_rate=0.01)
    cnn, dnn, linear = (run.train_config(name) for name in ("cnn", "dnn", "linear"))
    assert (cnn.epochs, cnn.batch_size, cnn.learning_rate) == (2, 64, 0.01)
    assert (dnn.epochs, dnn.batch_size) == (4, 256)
    assert (linear.epochs, linear.batch_size) == (4, 64)


def test_empty_epochs_leave_the_models_default_or_its_warm_start_schedule() -> None:
    run = resolved()
    default = get_model_spec("cnn").config()
    cold = resolve_model_config("cnn", run.train_config("cnn"))
    assert (cold.epochs, cold.learning_rate) == (default.epochs, default.learning_rate)
    warm = resolve_model_config("cnn", replace(run.train_config("cnn"), warm_start=True))
    assert warm.epochs == default.warm_start_epochs
    assert warm.learning_rate == pytest.approx(default.learning_rate * default.warm_start_rate_scale)


def test_epochs_set_by_the_run_hold_through_a_warm_start_and_a_trial_wins_over_both() -> None:
    run = resolved(epochs=4, learning_rate=0.01, sweep={"cnn": [{"epochs": 7}]})
    warm = resolve_model_config("cnn", replace(run.train_config("cnn"), warm_start=True))
    assert (warm.epochs, warm.learning_rate) == (4, 0.01)
    (trial,) = run.trials("cnn")
    config, model_settings = trial.configs(run.train_config("cnn"))
    assert resolve_model_config("cnn", config, model_settings).epochs == 7
    assert [t.swept for t in run.trials("dnn")] == [False]  # a model the sweep does not name


def test_only_the_selected_models_run_in_the_tables_order() -> None:
    assert resolved(models=["cnn", "linear"]).models == ("linear", "cnn")
    assert resolved().models == MODEL_NAMES


# Warm start


@pytest.mark.parametrize(
    ("mode", "trigger", "warm"),
    [
        ("auto", ASSET_TRIGGERED, True),  # new labelled data started the run
        ("auto", "scheduled", False),
        ("auto", "manual", False),
        ("auto", "cli:someone", False),
        ("on", "scheduled", True),
        ("on", "manual", True),
        ("off", ASSET_TRIGGERED, False),
    ],
)
def test_warm_start_auto_is_on_only_for_runs_that_new_data_started(
    mode: str, trigger: str, warm: bool
) -> None:
    assert resolved(trigger=trigger, warm_start=mode).warm_start is warm


def test_an_airflow_context_gives_the_trigger_the_run_id_and_the_try() -> None:
    from airflow.utils.types import DagRunType

    context = {
        "params": untouched_form(),
        "run_id": "asset_triggered__2025-01-01",
        "dag_run": SimpleNamespace(run_type=DagRunType.ASSET_TRIGGERED),
        "ti": SimpleNamespace(try_number=2),
    }
    run = RunParams.from_context(context, OPERATOR)
    assert (run.trigger, run.run_id, run.attempt) == (ASSET_TRIGGERED, "asset_triggered__2025-01-01", 2)
    assert run.warm_start
    scheduled = context | {"dag_run": SimpleNamespace(run_type=DagRunType.SCHEDULED)}
    assert not RunParams.from_context(scheduled, OPERATOR).warm_start


# The gate's options


def test_the_forms_gate_options_become_the_promotions() -> None:
    run = RunParams.from_params(
        untouched_form(
            promotion_margin=0.002,
            new_data_margin=0.01,
            non_inferiority_margin=0.003,
            max_recall_drop=0.02,
            min_slice_images=50,
            force_promote=True,
            dry_run=True,
            approval="none",
        ),
        OPERATOR,
        trigger="scheduled",
        attempt=3,
    )
    options = run.promotion_options()
    assert options.gate == GateConfig(
        margin=0.002, new_data_margin=0.01, non_inferiority=0.003, max_recall_drop=0.02, min_slice_images=50
    )
    assert (options.force, options.dry_run, options.approval) == (True, True, False)
    assert (options.trigger, options.attempt) == ("scheduled", 3)
    assert options.run_conf["promotion_margin"] == 0.002 and options.run_conf["models"] == list(MODEL_NAMES)


def test_the_forms_gate_defaults_are_the_gates() -> None:
    options = resolved(approval="none").promotion_options()
    assert options.gate == GateConfig() and not (options.force or options.dry_run or options.approval)


# Refusals, naming the param


@pytest.mark.parametrize(
    ("name", "bad", "wanted"),
    [
        ("epochs", 0, "a positive integer"),
        ("cnn_batch_size", -1, "a positive integer"),
        ("max_train_images", -5, "0 or a positive integer"),
        ("learning_rate", 0, "a number above 0 and at most 1"),
        ("promotion_margin", 0.7, "a number at least 0 and at most 0.5"),
        ("min_slice_images", 0, "a positive integer"),
        ("warm_start", "maybe", "one of auto, on, off"),
        ("approval", "later", "one of none, required"),
        ("models", ["resnet"], "a list of distinct names, at least one, from linear, dnn, cnn"),
        ("force_promote", "yes", "true or false"),
        ("approval_timeout_hours", 0, "a number above 0"),
    ],
)
def test_a_bad_value_is_refused_naming_the_param(name: str, bad: Any, wanted: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(f"param {name} must be {wanted}, got {bad!r}")):
        resolved(**{name: bad})


def test_a_sweep_over_the_trial_limit_is_refused() -> None:
    grid = {"cnn": {"dropout": [0.1, 0.2, 0.3], "learning_rate": [0.001, 0.002]}}
    with pytest.raises(ConfigError, match=r"sweep.cnn: 6 trials, more than the limit of 4"):
        resolved(replace(OPERATOR, max_trials=4), sweep=grid)
    assert len(resolved(sweep=grid).trials("cnn")) == 6

