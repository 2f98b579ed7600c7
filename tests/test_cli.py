"""`mnist-pipeline` runs the DAG's steps from a terminal and exits 2 with a clear error on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_pipeline.registry.client import Registry
from mnist_pipeline.storage import open_storage
from mnist_pipeline.training.architectures import MODEL_NAMES

CLI = str(Path(sys.executable).parent / "mnist-pipeline")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return os.environ | {
        "MNIST_REGISTRY_URI": str(tmp_path / "registry"),
        "MNIST_ARTIFACTS_URI": str(tmp_path / "artifacts"),
        "MNIST_MAX_TRAIN_IMAGES": "5000",
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_steps_chain_into_a_promotion(env: dict[str, str]) -> None:
    for step in (["ingest"], ["train", "dnn", "--epochs", "2"], ["evaluate", "dnn"], ["promote"]):
        result = cli(env, *step)
        assert result.returncode == 0, result.stderr
    summary = cli(env, "summary")
    assert "dnn" in summary.stdout and "champion dnn/" in summary.stdout
    champion = Registry(open_storage(env["MNIST_REGISTRY_URI"])).champion()
    assert champion.model == "dnn"

    listing = cli(env, "registry", "list").stdout
    assert f"* dnn/{champion.version}" in listing
    assert "PROMOTED" in cli(env, "registry", "history").stdout
    shown = json.loads(cli(env, "registry", "show").stdout)
    assert shown["champion"] is True and shown["version"] == champion.version
    again = json.loads(
        cli(env, "registry", "promote", f"dnn/{champion.version}", "--reason", "pin").stdout
    )
    assert again["kind"] == "manual-promotion" and again["trigger"].startswith("cli:")
    assert json.loads(cli(env, "registry", "rollback").stdout)["kind"] == "rollback"


@pytest.mark.slow
def test_a_run_below_the_first_champion_floor_says_why_nothing_was_promoted(
    env: dict[str, str], mnist_npz: Path
) -> None:
    from mnist_pipeline.config import PipelineSettings
    from mnist_pipeline.registry.gate import GateConfig
    from mnist_pipeline.registry.promotion import PromotionOptions, promote
    from mnist_pipeline.runs import run_key
    from tests.trained_runs import evaluate_runs

    artifacts, registry = env["MNIST_ARTIFACTS_URI"], env["MNIST_REGISTRY_URI"]
    evaluations = evaluate_runs(artifacts, mnist_npz, {"small": ("linear", 500, 1)})
    settings = PipelineSettings(artifacts_uri=artifacts, registry_uri=registry)
    options = PromotionOptions(gate=GateConfig(floor=0.99), approval=True)  # a small run: below it
    outcome = promote(list(evaluations.values()), settings, "small", options)
    assert not outcome.promoted and not outcome.awaiting_approval

    why = open_storage(artifacts).read_json(f"{run_key('small')}/promotion.json")["why_not_promoted"]
    assert "no champion yet, and the run's best model, linear, scored 0." in why
    assert "below the 0.99 a first champion must reach" in why
    assert "approval was required but not asked for" in why
    summary = cli(env, "summary")
    assert summary.returncode == 0 and f"nothing promoted: {why}" in summary.stdout


def test_registry_commands_name_unknown_versions(env: dict[str, str]) -> None:
    result = cli(env, "registry", "show", "cnn/20990101T000000Z-deadbeef")
    assert result.returncode == 2 and "unknown version cnn/20990101T000000Z-deadbeef" in result.stderr
    result = cli(env, "registry", "promote", "../x/v1", "--reason", "r")
    assert result.returncode == 2 and "is not allowed" in result.stderr
    result = cli(env, "registry", "rollback")
    assert result.returncode == 2 and "no previous champion" in result.stderr


def test_an_unknown_model_is_refused_with_the_valid_names(env: dict[str, str]) -> None:
    result = cli(env, "train", "resnet")
    assert result.returncode == 2
    assert f"unknown model 'resnet'; valid models: {', '.join(MODEL_NAMES)}" in result.stderr


def test_a_missing_source_is_named_and_nothing_is_written(env: dict[str, str], tmp_path: Path) -> None:
    result = cli(env, "--source", str(tmp_path / "absent.npz"), "ingest")
    assert result.returncode == 2 and "absent.npz': no such file" in result.stderr
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "registry").exists()


def test_a_bad_environment_value_is_named(env: dict[str, str]) -> None:
    result = cli(env | {"MNIST_MAX_TRAIN_IMAGES": "many"}, "ingest")
    assert result.returncode == 2
    assert "MNIST_MAX_TRAIN_IMAGES must be 0 (all) or a positive integer, got 'many'" in result.stderr
