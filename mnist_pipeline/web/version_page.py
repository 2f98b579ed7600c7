"""One published version's page: metadata, metrics, verdict, report figures, model card, and how it
compares with the champion; and the report files it serves, sha256-verified."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from mnist_pipeline.errors import RegistryError
from mnist_pipeline.evaluation.model_card import MODEL_CARD_FILE
from mnist_pipeline.evaluation.reports import REPORT_DIR
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import Verdict
from mnist_pipeline.registry.records import HistoryEvent
from mnist_pipeline.registry.state import RegistryState
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.registry.verification import latest_verification
from mnist_pipeline.web.comparison import compare_with_champion
from mnist_pipeline.web.verdicts import NO_VERDICT, ref_of, unpromoted

__all__ = ["VersionNotFoundError", "load_version", "parse_ref", "read_version_file"]

_FIGURE_TITLES = {
    "confusion_matrix.png": "Confusion matrix",
    "learning_curves.png": "Learning curves",
    "misclassified.png": "Most confidently misclassified test digits",
    "per_class.png": "Per-class precision and recall",
    "gradcam.png": "Grad-CAM: where the network looked",
}
_MEDIA_TYPES = {".png": "image/png", ".md": "text/markdown; charset=utf-8"}


class VersionNotFoundError(RegistryError):
    """No completely published version (or file) by that name: the page answers 404."""


def parse_ref(model: str, version: str) -> VersionRef:
    try:
        return VersionRef(model, version)
    except RegistryError as exc:
        raise VersionNotFoundError(str(exc)) from None


def load_version(
    registry: Registry,
    ref: VersionRef,
    file_link: Callable[[str], str],
    version_link: Callable[[VersionRef], str] | None = None,
) -> dict[str, Any]:
    """One version: metadata, metrics, verdict, its report figures, its model card as HTML, and how
    it compares with the champion (with the one it replaced, when it is the champion).
    `version_link`: another version's page; by default relative to this version's page."""
    state = registry.state()  # once for the whole page
    metadata = _published_metadata(registry, ref, state)
    files = metadata.get("files_sha256", {})
    figures = [
        {"title": title, "link": file_link(f"{REPORT_DIR}/{name}")}
        for name, title in _FIGURE_TITLES.items()
        if f"{REPORT_DIR}/{name}" in files
    ]
    card = registry.verified_file(ref, MODEL_CARD_FILE).decode() if MODEL_CARD_FILE in files else None
    promoting = _promoting_event(registry, ref, state)
    entry = state.versions.get((ref.model, ref.version))
    verdict = promoting.verdict if promoting else Verdict(False, unpromoted(entry)) if entry else NO_VERDICT
    champion = registry.champion(state)
    return {
        "model": ref.model,
        "version": ref.version,
        "metadata": metadata,
        "metrics": metadata.get("metrics", {}),
        "verdict": verdict.reason,
        "slices": [piece.to_dict() for piece in verdict.slices],
        "data_flags": metadata.get("data_flags", []),
        "is_champion": ref_of(champion) == ref,
        "approval": entry.approval if entry else None,
        "comparison": compare_with_champion(
            registry, (ref, metadata), champion, promoting, version_link or _sibling_link
        ),
        "figures": figures,
        "model_card_html": _markdown_html(card) if card else "<p>No model card was published.</p>",
        "verification": _verification_line(registry, ref),
    }


def _verification_line(registry: Registry, ref: VersionRef) -> str:
    """Whether retraining the version from its lineage gave the same weights, as its newest
    verification (a side record, not the registry's truth) says."""
    verification = latest_verification(registry, ref)
    if verification is None:
        return f"not verified yet (mnist-pipeline verify {ref})"
    return verification.headline()


def read_version_file(registry: Registry, ref: VersionRef, name: str) -> tuple[bytes, str]:
    """A report figure or the model card, sha256-verified; anything else of the version is not served."""
    served = name == MODEL_CARD_FILE or name.startswith(f"{REPORT_DIR}/")
    media_type = _MEDIA_TYPES.get(PurePosixPath(name).suffix)
    if not served or media_type is None or name not in _published_metadata(registry, ref)["files_sha256"]:
        raise VersionNotFoundError(f"version {ref} has no report file {name!r}")
    return registry.verified_file(ref, name), media_type


def _published_metadata(
    registry: Registry, ref: VersionRef, state: RegistryState | None = None
) -> dict[str, Any]:
    if not registry.is_published(ref, state):
        raise VersionNotFoundError(f"no published version {ref} in registry {registry.storage.root_uri}")
    return registry.metadata(ref)


def _promoting_event(registry: Registry, ref: VersionRef, state: RegistryState) -> HistoryEvent | None:
    """The decision that promoted the version (the gate's, before any manual one), None when none
    is recorded: the versions index names its event, which is read for the slices' figures."""
    entry = state.versions.get((ref.model, ref.version))
    if entry is None or entry.promoted_by is None:
        return None
    return registry.event(entry.promoted_by.key)


def _sibling_link(ref: VersionRef) -> str:
    # Relative to a version's own page, /versions/<model>/<version>: callers without a request.
    return f"../{ref.model}/{ref.version}"


def _markdown_html(text: str) -> str:
    # Raw HTML in the card is escaped, never passed through: the card quotes run parameters.
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
