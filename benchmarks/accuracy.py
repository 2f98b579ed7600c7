"""Test accuracy of every model with the pipeline's defaults, on full MNIST (60k train / 10k test).

    MNIST_SOURCE=../shared/data/mnist.npz .venv/bin/python benchmarks/accuracy.py

Prints the table of issue targets with our figures and writes benchmarks/results/accuracy.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import mnist_source, write_result

# model -> (reference and its figure, target test accuracy)
TARGETS = {
    "linear": ("TF softmax tutorial ~92%, mnist_models lab 92.73%", 0.927),
    "dnn": ("Keras mnist_mlp 98.40%", 0.985),
    "cnn": ("Keras mnist_convnet 99.2%, tuned lab CNN 99.48%", 0.995),
}


def main() -> None:
    from mnist_pipeline.config import PipelineSettings, TrainConfig
    from mnist_pipeline.data.mnist import load_mnist, split_validation
    from mnist_pipeline.evaluation.metrics import evaluate_model
    from mnist_pipeline.training.trainer import train_model

    data = load_mnist(mnist_source())
    config = TrainConfig()
    onednn = PipelineSettings.from_env().onednn_env()  # oneDNN's limits, for precision "auto"
    train, val = split_validation(data.x_train, data.y_train, config.validation_fraction, config.seed)
    rows = []
    for name, (reference, target) in TARGETS.items():
        result = train_model(name, train, val, config, onednn_env=onednn)
        accuracy = evaluate_model(result.model, data.x_test, data.y_test)["accuracy"]
        rows.append(
            {
                "model": name,
                "reference": reference,
                "target": target,
                "test_accuracy": accuracy,
                "met": accuracy >= target,
                "epochs": result.epochs_run,
                "train_seconds": round(result.train_seconds, 1),
            }
        )
    print(f"{'model':<7} {'target':>7} {'ours':>7} {'met':>4} {'epochs':>6} {'train s':>8}  reference")
    for row in rows:
        met = "yes" if row["met"] else "NO"
        figures = f"{row['target']:>7.2%} {row['test_accuracy']:>7.2%} {met:>4} {row['epochs']:>6}"
        print(f"{row['model']:<7} {figures} {row['train_seconds']:>8.1f}  {row['reference']}")
    print("wrote", write_result("accuracy", {"rows": rows}))


if __name__ == "__main__":
    main()
