"""`model_card.md`: what a registry version is for, what it was trained on, how good it is, why it
was promoted, and what it should not be trusted with.

Written at publication, when the gate's verdict is known, from the run's own records
(`training.json`, `metrics.json`) and the version's metadata: nothing in it is typed by hand.
"""

from __future__ import annotations

from typing import Any

from mnist_pipeline.evaluation.reports import per_class_markdown

__all__ = ["MODEL_CARD_FILE", "render_model_card"]

MODEL_CARD_FILE = "model_card.md"

_INTENDED_USE = (
    "Classifying single handwritten digits (0-9) given as 28x28 grayscale images, white digit on "
    "black, centred and size-normalised the way MNIST is. Input: uint8 pixels (or floats 0-255); "
    "output: 10 class probabilities. Meant for demonstrations, teaching and as a baseline."
)
_LIMITATIONS = (
    "- Trained and tested on MNIST only: US Census employees' and high-school students' digits from "
    "the early 1990s. Accuracy on other handwriting, scanners, stroke widths or cultures is unknown.\n"
    "- Expects MNIST preprocessing (centred by centre of mass, 20x20 box in 28x28). Uncentred, "
    "inverted (black on white) or rotated digits will be misread with high confidence.\n"
    '- Always answers one of the ten digits: it cannot say "not a digit". Probabilities are not '
    "calibrated; do not read them as certainties.\n"
    "- The test set has 10,000 images: differences below about 0.2 points between versions are "
    "within noise unless the gate's paired test says otherwise.\n"
    "- Not for decisions about people (identity, grading, finance) without a domain-specific evaluation."
)


def render_model_card(
    metadata: dict[str, Any],
    metrics: dict[str, Any],
    verdict: dict[str, Any] | None,
    training: dict[str, Any],
) -> str:
    """The card as Markdown. `metadata` is the version's metadata (model, version, hashes, lineage)."""
    sections = [
        f"# Model card: {metadata['model']} / {metadata['version']}",
        "## Intended use\n\n" + _INTENDED_USE,
        "## Data\n\n" + _data_section(metadata, metrics),
        "## Metrics (fixed MNIST test set)\n\n" + _metrics_section(metrics),
        "## Gate verdict\n\n" + _verdict_section(verdict),
        "## Limitations\n\n" + _LIMITATIONS,
        "## Lineage\n\n" + _lineage_section(metadata, training),
    ]
    return "\n\n".join(sections) + "\n"


def _data_section(metadata: dict[str, Any], metrics: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"- training snapshot (sha256 of its contents): `{metadata['data_hash']}`",
            f"- manifest of its sources (sha256): `{metadata.get('manifest_hash') or 'not recorded'}`",
            f"- test set: {metrics['test_images']} images, sha256 `{metrics['test_hash']}`",
            "- validation: a held-out slice of the training snapshot, never the test set",
        ]
    )


def _metrics_section(metrics: dict[str, Any]) -> str:
    lines = [
        f"- accuracy: **{metrics['accuracy']:.4f}** ({metrics['errors']} errors)",
        f"- loss (cross-entropy): {metrics['loss']:.4f}",
    ]
    if "new_data" in metrics:
        lines.append(f"- accuracy on held-out newly landed data: {metrics['new_data']['accuracy']:.4f}")
    return "\n".join(lines) + "\n\n" + per_class_markdown(metrics["per_class"]).rstrip()


def _verdict_section(verdict: dict[str, Any] | None) -> str:
    if not verdict:
        return "No gate verdict was recorded for this version."
    lines = [
        f"- decision: {'promoted' if verdict.get('promote') else 'not promoted'}"
        + (" (forced, gate bypassed)" if verdict.get("forced") else ""),
        f"- reason: {verdict.get('reason')}",
        f"- challenger accuracy: {verdict.get('challenger_accuracy')}",
        f"- champion accuracy: {verdict.get('champion_accuracy')}",
    ]
    if verdict.get("p_value") is not None:
        lines.append(
            f"- McNemar exact test: b={verdict['b']} (champion right, challenger wrong), "
            f"c={verdict['c']} (challenger right, champion wrong), p={verdict['p_value']:.3g}"
        )
    return "\n".join(lines)


def _lineage_section(metadata: dict[str, Any], training: dict[str, Any]) -> str:
    run = metadata.get("run") or {}
    return "\n".join(
        [
            f"- Airflow run id: `{metadata.get('airflow_run_id')}`",
            f"- trigger: {run.get('trigger', 'unknown')}",
            f"- trained at: {metadata.get('trained_at')}, {training.get('epochs_run')} epochs, "
            f"{training.get('train_seconds')} s on {', '.join(training.get('devices') or ['?'])}",
            f"- model.keras sha256: `{training.get('model_sha256')}`",
            f"- manifest hash: `{metadata.get('manifest_hash') or 'not recorded'}`",
            f"- model settings: `{metadata.get('params', {}).get('model')}`",
            f"- training settings: `{metadata.get('params', {}).get('training')}`",
            f"- libraries: {_libraries(metadata.get('library_versions') or {})}",
        ]
    )


def _libraries(versions: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in sorted(versions.items())) or "not recorded"
