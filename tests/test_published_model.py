"""A published `model.keras` loads with plain Keras 3 in a process that never imports this library,
and predicts on the input its model card documents, with the card's own lines; archives published
before, which name the library's smoothed loss, still load through the library's loader."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mnist_pipeline.data.mnist import MnistData
from mnist_pipeline.evaluation.model_card import LOAD_LINES, render_model_card

# Runs in the archive's folder, after the card's lines: the library must not have been imported.
_CHECK = (
    "import sys",
    "np.save('probabilities.npy', probabilities)",
    "sys.exit(3 if any(name.split('.')[0] == 'mnist_pipeline' for name in sys.modules) else 0)",
)


def test_the_model_cards_lines_load_a_published_archive_with_plain_keras(
    tmp_path: Path, mnist: MnistData
) -> None:
    from mnist_pipeline.training.architectures import DnnConfig
    from mnist_pipeline.training.model_io import model_to_bytes
    from mnist_pipeline.training.trainer import _compiled_model

    model = _compiled_model("dnn", DnnConfig(), steps_per_epoch=2, ema_momentum=0.0)
    assert model.loss.label_smoothing > 0  # trained with the library's smoothed loss
    (tmp_path / "model.keras").write_bytes(model_to_bytes(model))  # as the pipeline publishes it
    images = mnist.x_test[:16]
    assert images.dtype == np.uint8 and images.shape == (16, 28, 28)  # the documented input
    np.save(tmp_path / "images.npy", images)

    card = render_model_card(_METADATA, _METRICS, None, {})
    assert "\n".join(LOAD_LINES) in card
    code = "\n".join(("import numpy as np", "images = np.load('images.npy')", *LOAD_LINES, *_CHECK))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    probabilities = np.load(tmp_path / "probabilities.npy")
    np.testing.assert_allclose(probabilities, model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)


def test_an_archive_published_before_still_loads_through_the_library(tmp_path: Path) -> None:
    from mnist_pipeline.training.architectures import DnnConfig
    from mnist_pipeline.training.model_io import load_model_bytes
    from mnist_pipeline.training.trainer import _compiled_model

    model = _compiled_model("dnn", DnnConfig(), steps_per_epoch=2, ema_momentum=0.0)
    model.save(tmp_path / "old.keras")  # the old way: its compile settings name the smoothed loss
    loaded = load_model_bytes((tmp_path / "old.keras").read_bytes())
    assert loaded.loss.label_smoothing == DnnConfig().label_smoothing


_METADATA = {"model": "dnn", "version": "v1", "data_hash": "d" * 64}
_METRICS = {"test_images": 10, "test_hash": "h", "accuracy": 0.9, "errors": 1, "loss": 0.3, "per_class": {}}


def test_the_model_card_states_the_gates_verdict_and_leaves_what_became_of_it_to_the_log() -> None:
    allowed = render_model_card(_METADATA, _METRICS, {"promote": True, "reason": "better"}, {})
    kept = render_model_card(_METADATA, _METRICS, {"promote": False, "reason": "not better"}, {})
    assert "- gate: allows promotion" in allowed and "- gate: keeps the champion" in kept
    # Written at publication, before a person approves or rejects: it never claims the outcome.
    assert all("decision: promoted" not in card and "registry's log" in card for card in (allowed, kept))
