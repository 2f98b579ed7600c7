"""`mnist-pipeline verify`: a published version retrained from its lineage gives bitwise the same
weights, in a fresh process; a retraining that differs says why; a version whose snapshot is gone
is refused, with the reason. Each outcome is recorded beside the version and shown on its page."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape

from mnist_pipeline import steps
from mnist_pipeline.cli import main
from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import GateConfig
from mnist_pipeline.registry.promotion import PromotionOptions
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.registry.verification import (
    DIFFERS,
    REFUSED,
    REPRODUCED,
    Verification,
    latest_verification,
)
from mnist_pipeline.training.cache_key import TrainingEnvironment
from mnist_pipeline.verify import compare_weights
from tests.trained_runs import tiny_run, tiny_settings

CLI = str(Path(sys.executable).parent / "mnist-pipeline")


@pytest.fixture(scope="module")
def published_once(tmp_path_factory: pytest.TempPathFactory, mnist_npz: Path) -> tuple[Path, VersionRef]:
    """A tiny linear model, trained and published; tests work on their own copy."""
    root = tmp_path_factory.mktemp("verified")
    settings = tiny_settings(root, mnist_npz)
    _, evaluation = tiny_run(settings, "trained")
    outcome = steps.promote([evaluation], settings, "trained", PromotionOptions(gate=GateConfig(floor=0.0)))
    return root, VersionRef(outcome.model, str(outcome.version))


@pytest.fixture
def published(published_once: tuple[Path, VersionRef], tmp_path: Path) -> tuple[PipelineSettings, VersionRef]:
    root, ref = published_once
    for folder in ("artifacts", "registry"):
        shutil.copytree(root / folder, tmp_path / folder)
    return tiny_settings(tmp_path, Path(os.environ["MNIST_SOURCE"])), ref


def _env(settings: PipelineSettings) -> dict[str, str]:
    return os.environ | {
        "MNIST_ARTIFACTS_URI": settings.artifacts_uri,
        "MNIST_REGISTRY_URI": settings.registry_uri,
    }


def _page_line(settings: PipelineSettings, ref: VersionRef) -> str:
    """The version page's *reproducible* line, as rendered."""
    from mnist_pipeline.web.app import load_version
    from mnist_pipeline.web.templates import render

    context = load_version(Registry.from_settings(settings), ref, lambda name: name)
    page = render("version", **context, overview_link="/")
    assert f'<td id="verification">{escape(context["verification"])}</td>' in page
    return context["verification"]


@pytest.mark.slow
def test_a_tiny_training_is_reproduced_bit_for_bit_in_a_fresh_process(
    published: tuple[PipelineSettings, VersionRef],
) -> None:
    settings, ref = published
    assert _page_line(settings, ref).startswith("not verified yet")
    result = subprocess.run(
        [CLI, "verify", str(ref)], env=_env(settings), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{ref}: reproduced" in result.stdout
    assert "weights: identical (2 of 2 arrays bitwise equal)" in result.stdout
    assert "(difference +0.0000)" in result.stdout
    verification = latest_verification(Registry.from_settings(settings), ref)
    assert verification is not None and verification.outcome == REPRODUCED
    assert verification.max_abs_diff == 0.0 and verification.accuracy == verification.recorded_accuracy
    assert _page_line(settings, ref).startswith("reproduced (")


@pytest.mark.slow
def test_a_retraining_that_differs_says_why(
    published: tuple[PipelineSettings, VersionRef],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Changed code (here: a validation split carved otherwise) trains other weights, and the
    report names the code's hash as the reason."""
    import mnist_pipeline.verify as verify
    from mnist_pipeline.data.mnist import split_validation
    from mnist_pipeline.training import cache_key

    settings, ref = published
    monkeypatch.setattr(cache_key, "code_hash", lambda: "f" * 64)
    monkeypatch.setattr(
        verify, "split_validation", lambda x, y, fraction, seed: split_validation(x, y, fraction, seed + 1)
    )
    for name, value in _env(settings).items():
        monkeypatch.setenv(name, value)
    assert main(["verify", ref.version]) == 1  # a version name alone is enough
    out = capsys.readouterr().out
    assert f"{ref}: differs" in out and "largest difference" in out
    assert "why: the training code differs (code hash" in out
    verification = latest_verification(Registry.from_settings(settings), ref)
    assert verification is not None and verification.outcome == DIFFERS
    assert verification.max_abs_diff and verification.max_abs_diff > 0
    assert _page_line(settings, ref).startswith("not reproduced (")


@pytest.mark.slow
def test_a_version_whose_snapshot_is_gone_is_refused_with_the_reason(
    published: tuple[PipelineSettings, VersionRef],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, ref = published
    shutil.rmtree(Path(settings.artifacts_uri) / "datasets")
    for name, value in _env(settings).items():
        monkeypatch.setenv(name, value)
    assert main(["verify", str(ref)]) == 2
    err = capsys.readouterr().err
    assert f"{ref}: refused" in err and "why: its training snapshot" in err and "is gone" in err
    verification = latest_verification(Registry.from_settings(settings), ref)
    assert verification is not None and verification.outcome == REFUSED
    assert "is gone" in verification.reasons[0]
    assert _page_line(settings, ref).startswith("could not be retrained (")
    assert Registry.from_settings(settings).is_published(ref)  # a side record: the registry is untouched


def test_weights_are_compared_bitwise_array_by_array() -> None:
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros(3, dtype=np.float32)]
    same = compare_weights(weights, [array.copy() for array in weights])
    assert same.all_identical and (same.arrays, same.identical, same.max_abs_diff) == (2, 2, 0.0)
    nudged = [weights[0], weights[1] + np.float32(1e-7)]
    differs = compare_weights(weights, nudged)
    assert not differs.all_identical and differs.identical == 1
    assert differs.max_abs_diff == pytest.approx(1e-7, rel=1e-2)
    reshaped = compare_weights(weights, [weights[0].reshape(3, 2), weights[1]])
    assert reshaped.max_abs_diff is None and not reshaped.all_identical


def test_an_environment_names_each_difference() -> None:
    device = {"kind": "cpu", "model": "A", "cores": 2, "precision": "float32", "op_determinism": True}
    then = TrainingEnvironment("a" * 64, {"tensorflow": "2.20.0", "keras": "3.15.1"}, device)
    now = TrainingEnvironment("b" * 64, {"tensorflow": "2.21.0", "keras": "3.15.1"}, device | {"model": "B"})
    found = then.differences(now)
    assert found[0].startswith("the training code differs (code hash aaaaaaaaaaaa then, bbbbbbbbbbbb now)")
    assert "tensorflow differs (2.20.0 then, 2.21.0 now)" in found
    assert found[-1].startswith("the device differs (cpu 'A' 2 cores") and "cpu 'B'" in found[-1]
    assert then.differences(then) == []


def test_a_verification_reads_in_one_line() -> None:
    refused = Verification("linear", "v1", "2026-01-01T00:00:00Z", REFUSED, reasons=["its snapshot is gone"])
    assert refused.headline() == "could not be retrained (2026-01-01T00:00:00Z): its snapshot is gone"
    same = Verification(
        "linear", "v1", "t", REPRODUCED, arrays=2, identical_arrays=2, max_abs_diff=0.0,
        recorded_accuracy=0.9, accuracy=0.9,
    )  # fmt: skip
    assert same.headline() == "reproduced (t): retrained to bitwise identical weights, test accuracy +0.0000"
