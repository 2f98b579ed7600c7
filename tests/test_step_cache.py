"""Step caching: a run whose training key matches a finished training reuses it and its evaluation,
and says so; new data, a changed parameter, seed, code, library or device trains again; so does a
run with the cache off. The gate still decides on the same figures: a reused champion is kept, no
new version. Tiny trainings: the linear model, 1 epoch, 300 images."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline import steps
from mnist_pipeline.cache import entry_key
from mnist_pipeline.cli.render import render_summary
from mnist_pipeline.config import PipelineSettings, TrainConfig
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import GateConfig
from mnist_pipeline.registry.promotion import PromotionOptions
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.runs import model_key
from mnist_pipeline.storage import open_storage
from mnist_pipeline.training import cache_key
from mnist_pipeline.web.app import load_version
from mnist_pipeline.web.templates import render
from tests.trained_runs import TINY_IMAGES, tiny_run, tiny_settings

FIRST = "first"
ANY_CHAMPION = PromotionOptions(gate=GateConfig(floor=0.0))  # a tiny model may become the first champion


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory: pytest.TempPathFactory, mnist_npz: Path) -> Path:
    """The artifacts of one finished run (`FIRST`); tests work on their own copy."""
    root = tmp_path_factory.mktemp("cached")
    tiny_run(tiny_settings(root, mnist_npz), FIRST)
    return root


@pytest.fixture
def root(trained_once: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained_once / "artifacts", tmp_path / "artifacts")
    return tmp_path


def _first_training(root: Path) -> dict[str, Any]:
    return json.loads((root / "artifacts" / model_key(FIRST, "linear") / "training.json").read_text())


@pytest.mark.slow
def test_a_second_run_reuses_the_training_and_its_evaluation_and_says_so(
    root: Path, mnist_npz: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = tiny_settings(root, mnist_npz)
    first = _first_training(root)
    with caplog.at_level(logging.INFO, logger="mnist_pipeline"):
        training, evaluation = tiny_run(settings, "second")
    assert training.reused_from is not None and training.reused_from["run_id"] == FIRST
    assert (training.model_sha256, training.trained_at) == (first["model_sha256"], first["trained_at"])
    assert training.run_id == "second" and training.model_uri.endswith("runs/second/linear/model.keras")
    assert "linear: reused from run first, not trained again" in caplog.text
    assert "evaluation reused from run first" in caplog.text
    first_evaluation = json.loads(
        (root / "artifacts" / model_key(FIRST, "linear") / "evaluation.json").read_text()
    )
    assert (evaluation.accuracy, evaluation.loss) == (first_evaluation["accuracy"], first_evaluation["loss"])
    assert evaluation.reused_from == training.reused_from
    copied = root / "artifacts" / model_key("second", "linear")
    for name in ("model.keras", "training.json", "metrics.json", "predictions.npy", "saved_model", "report"):
        assert (copied / name).exists(), name

    steps.promote([evaluation], settings, "second", ANY_CHAMPION)
    summary = render_summary(open_storage(settings.artifacts_uri), settings)
    assert "linear: reused from run first, not trained again" in summary


@pytest.mark.slow
def test_the_entry_is_written_once_the_training_is_complete(root: Path) -> None:
    first = _first_training(root)
    entry = json.loads((root / "artifacts" / entry_key(first["cache_key"])).read_text())
    assert entry["run_id"] == FIRST and entry["model_sha256"] == first["model_sha256"]
    assert entry["prefix"] == model_key(FIRST, "linear")
    assert entry["parts"]["fingerprint"]["data_hash"] == first["data_hash"]
    assert entry["parts"]["environment"]["code_hash"] == cache_key.code_hash()


def _changed_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_key, "code_hash", lambda: "0" * 64)


def _changed_library(monkeypatch: pytest.MonkeyPatch) -> None:
    real = cache_key.current_environment

    def older(*args: Any, **kwargs: Any) -> cache_key.TrainingEnvironment:
        now = real(*args, **kwargs)
        return replace(now, versions=now.versions | {"tensorflow": "2.0.0"})

    monkeypatch.setattr(cache_key, "current_environment", older)


def _changed_device(monkeypatch: pytest.MonkeyPatch) -> None:
    real = cache_key.device_kind
    monkeypatch.setattr(cache_key, "device_kind", lambda *a, **k: real(*a, **k) | {"model": "another CPU"})


# Each part of the key, changed alone: (images, train config, what else changes).
CHANGES = {
    "new data": (TINY_IMAGES + 20, TrainConfig(epochs=1), None),
    "a parameter": (TINY_IMAGES, TrainConfig(epochs=1, learning_rate=0.02), None),
    "the seed": (TINY_IMAGES, TrainConfig(epochs=1, seed=7), None),
    "the code": (TINY_IMAGES, TrainConfig(epochs=1), _changed_code),
    "a library version": (TINY_IMAGES, TrainConfig(epochs=1), _changed_library),
    "the device": (TINY_IMAGES, TrainConfig(epochs=1), _changed_device),
}


@pytest.mark.slow
@pytest.mark.parametrize("change", list(CHANGES))
def test_any_change_of_the_key_trains_again(
    change: str, root: Path, mnist_npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, config, patch = CHANGES[change]
    if patch is not None:
        patch(monkeypatch)
    training, _ = tiny_run(tiny_settings(root, mnist_npz, images), "changed", config)
    assert training.reused_from is None
    assert training.cache_key != _first_training(root)["cache_key"]
    assert (root / "artifacts" / entry_key(training.cache_key)).is_file()  # recorded for later runs


@pytest.mark.slow
def test_with_the_cache_off_it_trains_again_and_leaves_the_entry(root: Path, mnist_npz: Path) -> None:
    first = _first_training(root)
    entry = root / "artifacts" / entry_key(first["cache_key"])
    before = entry.read_bytes()
    training, evaluation = tiny_run(tiny_settings(root, mnist_npz), "uncached", use_cache=False)
    assert training.reused_from is None and evaluation.reused_from is None
    assert training.cache_key == first["cache_key"] and training.trained_at >= first["trained_at"]
    assert entry.read_bytes() == before  # create-if-absent: the first training stays the cached one


@pytest.mark.slow
def test_an_entry_whose_model_is_gone_is_dropped_and_the_model_trained(root: Path, mnist_npz: Path) -> None:
    first = _first_training(root)
    (root / "artifacts" / model_key(FIRST, "linear") / "model.keras").unlink()
    training, _ = tiny_run(tiny_settings(root, mnist_npz), "after-loss")
    assert training.reused_from is None and training.cache_key == first["cache_key"]
    entry = json.loads((root / "artifacts" / entry_key(first["cache_key"])).read_text())
    assert entry["run_id"] == "after-loss"  # the new training took the dropped entry's place


@pytest.mark.slow
def test_a_reused_champion_is_kept_and_never_published_again(root: Path, mnist_npz: Path) -> None:
    settings = tiny_settings(root, mnist_npz)
    first = steps.run_evaluations(open_storage(settings.artifacts_uri), FIRST)
    promoted = steps.promote(first, settings, FIRST, ANY_CHAMPION)
    assert promoted.promoted
    _, evaluation = tiny_run(settings, "nothing-new")
    assert evaluation.reused_from is not None
    kept = steps.promote([evaluation], settings, "nothing-new", ANY_CHAMPION)
    # The same bytes: the same predictions, better on no slice.
    assert not kept.promoted and kept.verdict.rule == "not-better"
    forced = steps.promote([evaluation], settings, "forced", replace(ANY_CHAMPION, force=True))
    registry = Registry.from_settings(settings)
    assert forced.version == promoted.version  # the very version, not a new one
    assert registry.versions() == [VersionRef("linear", str(promoted.version))]
    metadata = registry.metadata(VersionRef("linear", str(promoted.version)))
    assert "reused_from" not in metadata  # published from the run that trained it


@pytest.mark.slow
def test_a_version_published_from_a_reused_training_names_the_run_it_came_from(
    root: Path, mnist_npz: Path
) -> None:
    settings = tiny_settings(root, mnist_npz)
    _, evaluation = tiny_run(settings, "later")
    outcome = steps.promote([evaluation], settings, "later", ANY_CHAMPION)
    ref = VersionRef("linear", str(outcome.version))
    registry = Registry.from_settings(settings)
    metadata = registry.metadata(ref)
    assert metadata["reused_from"]["run_id"] == FIRST and metadata["airflow_run_id"] == "later"
    assert metadata["environment"]["code_hash"] == cache_key.code_hash()
    card = registry.verified_file(ref, "model_card.md").decode()
    assert "reused from run `first`" in card
    page = render("version", **load_version(registry, ref, str), overview_link="/")
    assert "(in run <code>first</code>, reused by the step cache)" in page


def test_the_cli_and_the_form_turn_the_cache_off() -> None:
    from mnist_pipeline.cli import _parser
    from mnist_pipeline.cli.options import given_options
    from mnist_pipeline.run_params import RunParams

    def cache(*argv: str) -> bool:
        options = given_options(_parser().parse_args(["train", "linear", *argv]))
        return RunParams.from_params(options, PipelineSettings()).cache

    assert cache() is True and cache("--cache") is True and cache("--no-cache") is False
    assert RunParams.from_params({"cache": False}, PipelineSettings()).cache is False
