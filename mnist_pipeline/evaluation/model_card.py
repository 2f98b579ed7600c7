"""`model_card.md`: what a registry version is for, what it was trained on, how good it is, why it
was promoted, and what it should not be trusted with.

Written at publication, when the gate's verdict is known, from the run's own records
(`training.json`, `metrics.json`) and the version's metadata: nothing in it is typed by hand.
"""

from __future__ import annotations

from typing import Any

from mnist_pipeline.evaluation.reports import per_class_markdown

__all__ = ["LOAD_LINES", "MODEL_CARD_FILE", "render_model_card"]

MODEL_CARD_FILE = "model_card.md"

_INTENDED_USE = (
    "Classifying single handwritten digits (0-9) given as 28x28 grayscale images, white digit on "
    "black, centred and size-normalised the way MNIST is. Input: uint8 pixels (or floats 0-255); "
    "output: 10 class probabilities. Meant for demonstrations, teaching and as a baseline."
)
# The lines that load the archive and predict, shown on every card (a test runs them as shown, in
# a process without this library): plain Keras 3, the input exactly as the model takes it.
LOAD_LINES = (
    "import keras",
    'model = keras.models.load_model("model.keras")',
    "probabilities = model.predict(images)  # images: uint8, shape (N, 28, 28), pixels 0-255",
)
_HOW_TO_LOAD = (
    "With Keras 3 (TensorFlow backend) alone, no code of this pipeline needed:\n\n```python\n"
    + "\n".join(LOAD_LINES)
    + "\n```\n\n`images` is a NumPy array of dtype uint8 and shape (N, 28, 28): raw pixels 0-255,"
    " white digit on black, not rescaled (the model divides by 255 itself). `probabilities` has shape"
    " (N, 10); `probabilities.argmax(axis=1)` are the predicted digits. The archive is compiled with"
    " Keras' sparse cross-entropy (training used label smoothing) and carries no optimizer state."
    " For TF Serving, `saved_model/` beside it has a `serving_default` signature taking the same"
    " uint8 (N, 28, 28) images."
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
        "## How to load it\n\n" + _HOW_TO_LOAD,
        "## Data\n\n" + _data_section(metadata, metrics),
        "## Metrics (fixed MNIST test set)\n\n" + _metrics_section(metrics),
        *_trials_section(training),
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


def _trials_section(training: dict[str, Any]) -> list[str]:
    """A sweep's trials, when there was more than one: the winner was chosen on validation only."""
    trials = training.get("trials") or []
    if len(trials) < 2:
        return []
    winner = (training.get("trial") or {}).get("index")
    rows = [
        "| trial | settings | validation accuracy | validation loss | epochs | seconds | worker |",
        "|---|---|---|---|---|---|---|",
        *(_trial_row(trial, trial["index"] == winner) for trial in trials),
    ]
    intro = (
        f"{len(trials)} trials of this model's settings; the one in bold won on the validation split "
        "(accuracy, then loss) and is this version. The test set played no part in the choice."
    )
    return ["## Trials\n\n" + intro + "\n\n" + "\n".join(rows)]


def _trial_row(trial: dict[str, Any], won: bool) -> str:
    settings = ", ".join(f"{name}={value}" for name, value in trial["settings"].items()) or "defaults"
    cells = [
        str(trial["index"]),
        settings,
        f"{trial['val_accuracy']:.4f}",
        f"{trial['val_loss']:.4f}",
        str(trial["epochs_run"]),
        f"{trial['train_seconds']:.1f}",
        trial["worker"],
    ]
    cells = [f"**{cell}**" for cell in cells] if won else cells
    return "| " + " | ".join(cells) + " |"


def _verdict_section(verdict: dict[str, Any] | None) -> str:
    if not verdict:
        return "No gate verdict was recorded for this version."
    # The card is written once, when the version is published, before a person may approve or
    # reject it: it states the gate's verdict, and the registry's log what became of it.
    lines = [
        f"- gate: {'allows promotion' if verdict.get('promote') else 'keeps the champion'}"
        + (" (forced, gate bypassed)" if verdict.get("forced") else ""),
        "- whether this version became the champion (or was approved, rejected, rolled back) is in the"
        " registry's log: see the version's page",
        f"- reason: {verdict.get('reason')}",
        f"- challenger accuracy: {verdict.get('challenger_accuracy')}",
        f"- champion accuracy: {verdict.get('champion_accuracy')}",
    ]
    if verdict.get("p_value") is not None:
        lines.append(
            f"- McNemar exact test on mnist_test: b={verdict['b']} (champion right, challenger wrong), "
            f"c={verdict['c']} (challenger right, champion wrong), p={verdict['p_value']:.3g}"
        )
    if verdict.get("rule"):
        lines.append(f"- deciding rule: {verdict['rule']}")
    drops = verdict.get("recall_drops") or {}
    if drops:
        digit = max(drops, key=lambda name: drops[name])
        lines.append(f"- largest recall drop on mnist_test: digit {digit}, {drops[digit] * 100:.2f} points")
    return "\n".join(lines) + _slice_table(verdict.get("slices") or [])


def _slice_table(slices: list[dict[str, Any]]) -> str:
    """Every slice the gate judged: images, both accuracies, McNemar's b/c/p and what it decided."""
    if not slices:
        return ""
    rows = [
        "| slice | images | challenger | champion | b | c | p (Holm) | margin | role |",
        "|---|---|---|---|---|---|---|---|---|",
        *(_slice_row(piece) for piece in slices),
    ]
    return "\n\n" + "\n".join(rows)


def _slice_row(piece: dict[str, Any]) -> str:
    champion, p = piece.get("champion_accuracy"), piece.get("adjusted_p_value")
    if not piece.get("decides"):
        role = "reported only (too small)"
    else:
        role = "better" if piece.get("better") else "worse" if piece.get("worse") else "no change"
    cells = [
        piece["name"],
        str(piece["images"]),
        f"{piece['challenger_accuracy']:.4f}",
        "" if champion is None else f"{champion:.4f}",
        str(piece.get("b", "")),
        str(piece.get("c", "")),
        "" if p is None else f"{p:.3g}",
        f"{piece.get('margin', 0) * 100:.2f} pt",
        role,
    ]
    return "| " + " | ".join(cells) + " |"


def _lineage_section(metadata: dict[str, Any], training: dict[str, Any]) -> str:
    run = metadata.get("run") or {}
    return "\n".join(
        [
            f"- Airflow run id: `{metadata.get('airflow_run_id')}`",
            f"- trigger: {run.get('trigger', 'unknown')}",
            f"- trained at: {metadata.get('trained_at')}, {training.get('epochs_run')} epochs, "
            f"{training.get('train_seconds')} s on {', '.join(training.get('devices') or ['?'])}",
            f"- weights: {training.get('initialization', 'cold start')}",
            *_reuse_lines(training),
            f"- model.keras sha256: `{training.get('model_sha256')}`",
            f"- manifest hash: `{metadata.get('manifest_hash') or 'not recorded'}`",
            f"- model settings: `{metadata.get('params', {}).get('model')}`",
            f"- training settings: `{metadata.get('params', {}).get('training')}`",
            f"- libraries: {_libraries(metadata.get('library_versions') or {})}",
        ]
    )


def _reuse_lines(training: dict[str, Any]) -> list[str]:
    """Where the step cache took the model from, and the training code's hash, when recorded."""
    lines = []
    origin = training.get("reused_from")
    if origin:
        lines.append(
            f"- reused from run `{origin.get('run_id')}`, where it trained at {origin.get('trained_at')}"
            f" (step cache key `{str(origin.get('cache_key'))[:12]}`): not trained again in this run"
        )
    code = (training.get("environment") or {}).get("code_hash")
    if code:
        lines.append(f"- training code sha256: `{code}`")
    return lines


def _libraries(versions: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in sorted(versions.items())) or "not recorded"
