"""Report figures and the model card, from a real (small) CNN training run on real MNIST."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_pipeline.config import PipelineSettings, TrainConfig
from mnist_pipeline.evaluation.model_card import MODEL_CARD_FILE
from mnist_pipeline.evaluation.reports import FIGURE_SIZES, REPORT_DIR, gradcam_heatmaps, last_conv_layer
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import GateConfig
from mnist_pipeline.registry.promotion import PromotionOptions, promote
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.runs import run_key
from mnist_pipeline.steps import evaluate, ingest, train
from mnist_pipeline.storage import open_storage

pytestmark = pytest.mark.slow
RUN_ID = "run-report"
# A CNN on a slice, one epoch: well above chance, still making errors to show.
TRAIN_IMAGES, FLOOR = 2000, 0.5


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, mnist_npz: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("reports")
    settings = PipelineSettings(
        source=str(mnist_npz),
        artifacts_uri=str(root / "artifacts"),
        registry_uri=str(root / "registry"),
        max_train_images=TRAIN_IMAGES,
    )
    snapshot = ingest(settings, RUN_ID)
    training = train("cnn", snapshot, TrainConfig(epochs=1), settings, RUN_ID)
    evaluation = evaluate(training, settings)
    outcome = promote([evaluation], settings, RUN_ID, PromotionOptions(gate=GateConfig(floor=FLOOR)))
    return {"settings": settings, "snapshot": snapshot, "evaluation": evaluation, "outcome": outcome}


def read_png(data: bytes) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(data), format="png")


def test_evaluate_writes_every_figure_with_its_size(run: dict[str, Any]) -> None:
    artifacts = open_storage(run["settings"].artifacts_uri)
    prefix = f"{run_key(RUN_ID)}/cnn/{REPORT_DIR}"
    names = {key.removeprefix(prefix + "/") for key in artifacts.list_keys(prefix)}
    assert names == set(FIGURE_SIZES) | {"per_class.md"}
    for name, (width, height) in FIGURE_SIZES.items():
        pixels = read_png(artifacts.read_bytes(f"{prefix}/{name}"))
        assert pixels.shape[:2] == (height, width), name
        assert pixels[..., :3].std() > 0.01, f"{name} is blank"


def test_the_per_class_table_holds_the_evaluated_figures(run: dict[str, Any]) -> None:
    artifacts = open_storage(run["settings"].artifacts_uri)
    metrics = artifacts.read_json(f"{run_key(RUN_ID)}/cnn/metrics.json")
    table = artifacts.read_bytes(f"{run_key(RUN_ID)}/cnn/{REPORT_DIR}/per_class.md").decode()
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 10
    seven = metrics["per_class"]["7"]
    assert f"| 7 | {seven['precision']:.4f} | {seven['recall']:.4f} | {seven['support']} |" in table


def test_the_published_version_carries_the_report_and_a_model_card(run: dict[str, Any]) -> None:
    outcome = run["outcome"]
    assert outcome.promoted is True
    registry = Registry(open_storage(run["settings"].registry_uri))
    ref = VersionRef(outcome.model, outcome.version)
    for name in FIGURE_SIZES:  # listed in the commit mark, so sha256-verified on every read
        assert read_png(registry.verified_file(ref, f"{REPORT_DIR}/{name}")).shape[0] > 0
    card = registry.verified_file(ref, MODEL_CARD_FILE).decode()
    assert run["snapshot"].data_hash in card and run["snapshot"].manifest_hash in card
    assert RUN_ID in card and outcome.verdict.reason in card
    assert f"{run['evaluation'].accuracy:.4f}" in card
    for section in ("Intended use", "Data", "Metrics", "Gate verdict", "Limitations", "Lineage"):
        assert f"## {section}" in card


def test_gradcam_finds_the_last_convolution_and_highlights_the_digit(run: dict[str, Any], mnist) -> None:
    from mnist_pipeline.training.architectures import build_model
    from mnist_pipeline.training.model_io import load_model_bytes

    registry = Registry(open_storage(run["settings"].registry_uri))
    ref = VersionRef(run["outcome"].model, run["outcome"].version)
    model = load_model_bytes(registry.verified_file(ref, "model.keras"))
    convolutions = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert last_conv_layer(model) is convolutions[-1]
    assert last_conv_layer(build_model("dnn")) is None  # no Grad-CAM figure for models without one

    images = mnist.x_test[:32]
    heatmaps, predicted = gradcam_heatmaps(model, images)
    assert heatmaps.shape == (32, 28, 28) and heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    assert np.array_equal(predicted, model.predict(images, verbose=0).argmax(axis=1))
    # Where the network looks should be mostly the strokes, not the empty border.
    strokes = images > 0
    assert heatmaps[strokes].mean() > heatmaps[~strokes].mean()
