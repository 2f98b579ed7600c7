"""The serving check's passes, remembered by content for this test process.

`check_serving` starts a new Python that imports TensorFlow (5 to 8 s of CPU on 2-core machines)
to load an exported SavedModel and compare its predictions with the evaluated model's. The slow
tests promote the same trained runs again and again (each test promotes its own copy of a module's
run), so the same files are checked with the same probe many times. A check that passed is
remembered under the sha256 of the SavedModel's files (their paths and bytes), the probe images and
the expected probabilities: the same content passes again without a new Python. Other content (an
export that does not match, other expected values) is checked for real, and a failure is never
remembered, so a test that breaks the export still sees the check fail.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

__all__ = ["content_key"]

# The modules holding a reference to check_serving: its own and the publication step's import.
CHECK_SERVING_REFERENCES = ("mnist_pipeline.evaluation.serving", "mnist_pipeline.registry.publication")


def content_key(saved_model_dir: Path, images: np.ndarray, expected: np.ndarray) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(saved_model_dir).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(saved_model_dir)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for array in (images, expected):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def remembering(check: Callable[..., None], passed: set[str]) -> Callable[..., None]:
    def check_serving(saved_model_dir: Path, images: np.ndarray, expected: np.ndarray, **kwargs: Any) -> None:
        key = content_key(saved_model_dir, images, expected)
        if key not in passed:
            check(saved_model_dir, images, expected, **kwargs)  # raises on a failure: not remembered
            passed.add(key)

    return check_serving


@pytest.fixture(scope="session", autouse=True)
def serving_checks_remembered() -> Iterator[set[str]]:
    import importlib

    passed: set[str] = set()
    patch = pytest.MonkeyPatch()
    modules = [importlib.import_module(name) for name in CHECK_SERVING_REFERENCES]
    original = modules[0].check_serving
    for module in modules:
        assert module.check_serving is original, f"{module.__name__}.check_serving is not the original"
        patch.setattr(module, "check_serving", remembering(original, passed))
    yield passed
    patch.undo()
