"""Figures people would rather look at than JSON, drawn from a model's real evaluation outputs.

`write_report` renders, for one evaluated model, into `<run>/<model>/report/`:
    confusion_matrix.png   test-set confusion matrix as a heat map (rows true, columns predicted)
    learning_curves.png    training and validation loss and accuracy per epoch
    misclassified.png      the test digits the model got wrong with the highest confidence
    per_class.png/.md      precision, recall and support of each digit
    gradcam.png            (models with a Conv2D layer) Grad-CAM heat maps over one test digit per class

Images have fixed pixel sizes (`FIGURE_SIZES`): the figures are saved without tight bounding boxes so
the registry page can lay them out predictably. Matplotlib runs on the headless `Agg` backend.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mnist_pipeline.data.mnist import NUM_CLASSES
from mnist_pipeline.errors import ConfigError
from mnist_pipeline.storage import Storage

if TYPE_CHECKING:
    import keras
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "FIGURE_SIZES",
    "GRADCAM_FILE",
    "MISCLASSIFIED_SHOWN",
    "REPORT_DIR",
    "confusion_figure",
    "gradcam_figure",
    "gradcam_heatmaps",
    "last_conv_layer",
    "learning_curves_figure",
    "misclassified_figure",
    "per_class_figure",
    "per_class_markdown",
    "write_report",
]

REPORT_DIR = "report"
DPI = 100
GRADCAM_FILE = "gradcam.png"
# (width, height) in pixels of every figure; inches are these over DPI.
FIGURE_SIZES: dict[str, tuple[int, int]] = {
    "confusion_matrix.png": (800, 700),
    "learning_curves.png": (1100, 420),
    "misclassified.png": (1000, 720),
    "per_class.png": (640, 420),
    GRADCAM_FILE: (1000, 460),
}
MISCLASSIFIED_SHOWN = 24  # 4 rows of 6
_GRID_COLUMNS = 6


def write_report(
    artifacts: Storage,
    prefix: str,
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    metrics: dict[str, Any],
    history: dict[str, list[float]],
) -> list[str]:
    """Render every figure of one evaluated model and store them under `prefix`; returns the keys."""
    figures = {
        "confusion_matrix.png": confusion_figure(np.asarray(metrics["confusion_matrix"])),
        "learning_curves.png": learning_curves_figure(history),
        "misclassified.png": misclassified_figure(images, labels, probabilities),
        "per_class.png": per_class_figure(metrics["per_class"]),
    }
    if last_conv_layer(model) is not None:
        figures[GRADCAM_FILE] = gradcam_figure(model, images, labels)
    artifacts.delete(prefix)  # a retried evaluation must not leave figures of an earlier one behind
    with tempfile.TemporaryDirectory(prefix="mnist-report-") as tmp:
        for name, figure in figures.items():
            (Path(tmp) / name).write_bytes(_png_bytes(figure))
        (Path(tmp) / "per_class.md").write_text(per_class_markdown(metrics["per_class"]))
        return artifacts.upload_dir(Path(tmp), prefix)


def _new_figure(name: str, layout: Literal["constrained"] | None = "constrained") -> Figure:
    # Figure objects (not pyplot) keep no global state: safe in a long-lived worker or web process.
    from matplotlib.figure import Figure

    width, height = FIGURE_SIZES[name]
    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout=layout)


def _png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def confusion_figure(confusion: np.ndarray) -> Figure:
    figure = _new_figure("confusion_matrix.png")
    axes = figure.add_subplot()
    # Log colour scale: the diagonal holds ~1000 per class, errors a handful; linear hides them.
    shown = axes.imshow(np.log1p(confusion), cmap="Blues")
    threshold = np.log1p(confusion).max() / 2
    for true, predicted in np.ndindex(confusion.shape):
        colour = "white" if np.log1p(confusion[true, predicted]) > threshold else "black"
        axes.text(
            predicted,
            true,
            str(confusion[true, predicted]),
            ha="center",
            va="center",
            fontsize=8,
            color=colour,
        )
    axes.set(
        xticks=range(NUM_CLASSES),
        yticks=range(NUM_CLASSES),
        xlabel="predicted digit",
        ylabel="true digit",
        title=f"Confusion matrix ({int(confusion.sum())} test images)",
    )
    figure.colorbar(shown, ax=axes, label="log(1 + count)")
    return figure


def learning_curves_figure(history: dict[str, list[float]]) -> Figure:
    figure = _new_figure("learning_curves.png")
    for index, metric in enumerate(("loss", "accuracy")):
        axes = figure.add_subplot(1, 2, index + 1)
        for key, label in ((metric, "training"), (f"val_{metric}", "validation")):
            values = history.get(key) or []
            axes.plot(range(1, len(values) + 1), values, marker="o", label=label)
        axes.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
        epochs = max(len(history.get(metric) or []), 1)
        axes.set_xlim(0.5, epochs + 0.5)
        axes.set_xticks(range(1, epochs + 1, max(1, epochs // 10)))  # whole epochs, at most ~10 ticks
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def misclassified_figure(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> Figure:
    """The wrong predictions the model was surest of: where it is most confidently mistaken."""
    # A fixed grid of tickless axes: constrained layout would measure 24 titles to the same end,
    # and took most of the report's time.
    figure = _new_figure("misclassified.png", layout=None)
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    shown = wrong[np.argsort(-confidence, kind="stable")][:MISCLASSIFIED_SHOWN]
    if len(shown) == 0:
        figure.text(0.5, 0.5, "no misclassified test digits", ha="center", va="center", fontsize=16)
        return figure
    rows = -(-MISCLASSIFIED_SHOWN // _GRID_COLUMNS)
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.01, top=0.88, wspace=0.05, hspace=0.5)
    for slot, index in enumerate(shown):
        axes = figure.add_subplot(rows, _GRID_COLUMNS, slot + 1)
        axes.imshow(images[index], cmap="gray_r")
        axes.set_title(
            f"true {labels[index]}, predicted {predicted[index]}\n"
            f"p={probabilities[index, predicted[index]]:.2f}",
            fontsize=8,
        )
        axes.axis("off")
    figure.suptitle(f"Most confidently misclassified ({len(wrong)} errors in all)")
    return figure


def per_class_figure(per_class: dict[str, dict[str, float]]) -> Figure:
    figure = _new_figure("per_class.png")
    axes = figure.add_subplot()
    axes.axis("off")
    rows = [
        [digit, f"{row['precision']:.4f}", f"{row['recall']:.4f}", str(row["support"])]
        for digit, row in sorted(per_class.items(), key=lambda item: int(item[0]))
    ]
    table = axes.table(cellText=rows, colLabels=["digit", "precision", "recall", "support"], loc="center")
    table.scale(1, 1.3)
    axes.set_title("Per-class precision and recall on the test set")
    return figure


def per_class_markdown(per_class: dict[str, dict[str, float]]) -> str:
    lines = ["| digit | precision | recall | support |", "|---|---|---|---|"]
    for digit, row in sorted(per_class.items(), key=lambda item: int(item[0])):
        lines.append(f"| {digit} | {row['precision']:.4f} | {row['recall']:.4f} | {row['support']} |")
    return "\n".join(lines) + "\n"


def last_conv_layer(model: keras.Model) -> Any | None:
    """The model's last Conv2D layer, found by type (layer names change between builds)."""
    import keras

    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    return convolutions[-1] if convolutions else None


def gradcam_heatmaps(model: keras.Model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM (Selvaraju et al., 2017) of each image's predicted class, upsampled to 28x28 and
    scaled to [0, 1]; returns (heat maps, predicted classes)."""
    import keras
    import tensorflow as tf

    conv = last_conv_layer(model)
    if conv is None:
        raise ConfigError(f"model {model.name!r} has no Conv2D layer: Grad-CAM needs one")
    probe = keras.Model(model.inputs, [conv.output, model.output])
    with tf.GradientTape() as tape:
        feature_maps, probabilities = probe(tf.convert_to_tensor(images), training=False)
        predicted = tf.argmax(probabilities, axis=1)
        scores = tf.gather(probabilities, predicted, batch_dims=1)
    gradients = tape.gradient(scores, feature_maps)
    channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)  # one weight per feature map
    cams = tf.expand_dims(tf.nn.relu(tf.reduce_sum(feature_maps * channel_weights, axis=-1)), -1)
    cams = tf.image.resize(cams, images.shape[1:3])[..., 0].numpy()
    peaks = cams.max(axis=(1, 2), keepdims=True)
    return np.divide(cams, peaks, out=np.zeros_like(cams), where=peaks > 0), predicted.numpy()


def gradcam_figure(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> Figure:
    """Grad-CAM over the first test digit of each class: where the network looked."""
    figure = _new_figure(GRADCAM_FILE)
    present = [digit for digit in range(NUM_CLASSES) if (labels == digit).any()]
    picks = [int(np.flatnonzero(labels == digit)[0]) for digit in present]
    heatmaps, predicted = gradcam_heatmaps(model, images[picks])
    for slot, (index, heatmap) in enumerate(zip(picks, heatmaps, strict=True)):
        axes = figure.add_subplot(2, -(-len(picks) // 2), slot + 1)
        axes.imshow(images[index], cmap="gray")
        axes.imshow(heatmap, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
        axes.set_title(f"true {labels[index]}, predicted {predicted[slot]}", fontsize=9)
        axes.axis("off")
    figure.suptitle("Grad-CAM on the last convolution: red = what drove the prediction")
    return figure
