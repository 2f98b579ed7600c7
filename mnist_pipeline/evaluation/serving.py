"""The serving check: load the exported SavedModel in a clean process, as a server would.

The training process has the Keras model in memory; a server has only the exported files. So the
check runs `python -m mnist_pipeline.evaluation.serving` in a subprocess, checks the `serving_default`
signature (uint8 or float (N, 28, 28) in, 10 probabilities out) and that its predictions equal
the in-process ones.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from mnist_pipeline.errors import RegistryError

__all__ = ["ServingCheckError", "check_serving"]

PROBE_IMAGES = 100
_TOLERANCE = 1e-4  # float32 kernels may sum in another order in another process


class ServingCheckError(RegistryError):
    """The exported model would not serve what was evaluated."""


def check_serving(
    saved_model_dir: Path, images: np.ndarray, expected: np.ndarray, timeout_s: int = 300
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.npz"
        np.savez(probe, images=images, expected=expected)
        result = subprocess.run(
            [sys.executable, "-m", "mnist_pipeline.evaluation.serving", str(saved_model_dir), str(probe)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    if result.returncode != 0:
        detail = (result.stdout.strip().splitlines() or result.stderr.strip().splitlines() or ["no output"])[
            -1
        ]
        raise ServingCheckError(f"serving check of {saved_model_dir} failed: {detail}")


def _check_in_this_process(saved_model_dir: str, probe_path: str) -> str:
    import tensorflow as tf

    probe = np.load(probe_path)
    serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    if spec.dtype not in (tf.uint8, tf.float32) or spec.shape.as_list()[1:] != [28, 28]:
        return f"input signature is {spec.dtype.name} {spec.shape}, expected uint8 or float32 (N, 28, 28)"
    (output,) = serve(tf.constant(probe["images"].astype(spec.dtype.as_numpy_dtype))).values()
    output = output.numpy()
    if output.shape != (len(probe["images"]), 10):
        return f"output shape is {output.shape}, expected ({len(probe['images'])}, 10)"
    worst = float(np.abs(output - probe["expected"]).max())
    if worst > _TOLERANCE:
        return f"served probabilities differ from the evaluated model's by up to {worst:.3g}"
    return ""


if __name__ == "__main__":
    problem = _check_in_this_process(sys.argv[1], sys.argv[2])
    print(problem or "serving check passed")
    sys.exit(1 if problem else 0)
