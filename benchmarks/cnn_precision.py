"""The CNN's training step in float32 against mixed_bfloat16 on this CPU: what precision "auto" weighs.

    MNIST_SOURCE=../shared/data/mnist.npz .venv/bin/python benchmarks/cnn_precision.py [--rounds N]
        [--steps N]

Trains the CNN with its defaults through the library's `train_model` on a slice of `--steps`
batches, for three epochs under each policy, alternating the policies for `--rounds` rounds (the
machine's speed drifts: the fastest epoch is the cleanest figure, the median the typical one). The
first epoch of each training is left out (it traces the graph); the others are timed from their
first step to their last, validation excluded. Prints the CPU's bfloat16 flags, what "auto" picks
for the CNN, a table of milliseconds per step and images per second, and the median ratio; writes
benchmarks/results/cnn_precision.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import cpu_model, mnist_source, write_result

from mnist_pipeline.data.mnist import MnistData, load_mnist

POLICIES = ("float32", "mixed_bfloat16")
EPOCHS = 3


def step_seconds(policy: str, data: MnistData, steps: int) -> tuple[list[float], int]:
    """Seconds per step of each epoch after the first, and the global batch."""
    import keras

    from mnist_pipeline.config import TrainConfig
    from mnist_pipeline.training.architectures import get_model_spec
    from mnist_pipeline.training.trainer import train_model

    class StepTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[float] = []

        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            if batch == 0:
                self.started = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if batch == steps - 1:
                self.epochs.append((time.perf_counter() - self.started) / steps)

    batch = get_model_spec("cnn").config().batch_size
    images, labels = data.x_train[: steps * batch], data.y_train[: steps * batch]
    validation = data.x_train[-1000:], data.y_train[-1000:]
    timer = StepTimer()
    result = train_model(
        "cnn",
        (images, labels),
        validation,
        TrainConfig(epochs=EPOCHS, precision=policy),
        extra_callbacks=[timer],
    )
    return timer.epochs[1:], result.global_batch_size


def cpu_report() -> dict[str, object]:
    from mnist_pipeline.config import PipelineSettings
    from mnist_pipeline.training.architectures import get_model_spec
    from mnist_pipeline.training.trainer import BFLOAT16_CPU_FLAGS, cpu_flags, resolve_precision

    onednn = PipelineSettings.from_env().onednn_env()
    return {
        "bfloat16_flags": sorted(BFLOAT16_CPU_FLAGS & cpu_flags()),
        "auto_for_cnn": resolve_precision("auto", get_model_spec("cnn").config(), onednn),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="training steps per epoch")
    args = parser.parse_args()
    cpu = cpu_report()
    print(", ".join(f"{key}: {value}" for key, value in {"cpu": cpu_model(), **cpu}.items()))
    data = load_mnist(mnist_source())
    seconds: dict[str, list[float]] = {policy: [] for policy in POLICIES}
    for _ in range(args.rounds):
        for policy in POLICIES:
            epochs, batch = step_seconds(policy, data, args.steps)
            seconds[policy] += epochs
    rows = {
        policy: {
            "fastest_ms_per_step": round(1000 * min(times), 1),
            "median_ms_per_step": round(1000 * statistics.median(times), 1),
            "median_images_per_s": round(batch / statistics.median(times)),
            "epochs_timed": len(times),
        }
        for policy, times in seconds.items()
    }
    print(f"\n{'policy':<16} {'fastest ms/step':>16} {'median ms/step':>15} {'images/s':>9}")
    for policy, row in rows.items():
        print(
            f"{policy:<16} {row['fastest_ms_per_step']:>16} {row['median_ms_per_step']:>15} "
            f"{row['median_images_per_s']:>9}"
        )
    ratio = rows["float32"]["median_ms_per_step"] / rows["mixed_bfloat16"]["median_ms_per_step"]
    print(f"\nfloat32 / mixed_bfloat16 step time (medians): {ratio:.2f}x")
    payload = {**cpu, "batch": batch, "steps_per_epoch": args.steps, "policies": rows, "ratio": ratio}
    print("wrote", write_result("cnn_precision", payload))


if __name__ == "__main__":
    main()
