"""`mnist-pipeline`: the DAG's steps from a terminal, over the same environment variables.

    mnist-pipeline ingest
    mnist-pipeline train cnn --epochs 2
    mnist-pipeline evaluate cnn
    mnist-pipeline promote
    mnist-pipeline summary

Steps of one run share `--run-id` (default `cli`). Bad input exits with status 2 and the error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from mnist_pipeline.config import PipelineSettings, TrainConfig
from mnist_pipeline.errors import MnistPipelineError
from mnist_pipeline.models import MODEL_NAMES

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-id", default="cli", help="groups the steps of one run (default: cli)")
    parser.add_argument("--source", help="overrides MNIST_SOURCE")
    parser.add_argument("--max-train-images", type=int, help="overrides MNIST_MAX_TRAIN_IMAGES")
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("ingest", help="load, validate and snapshot MNIST")
    train = steps.add_parser("train", help="train one model on the run's snapshot")
    train.add_argument("model", help=f"one of: {', '.join(MODEL_NAMES)}")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--learning-rate", type=float)
    evaluate = steps.add_parser("evaluate", help="evaluate one trained model on the test set")
    evaluate.add_argument("model")
    steps.add_parser("promote", help="promote the run's best evaluated model")
    steps.add_parser("summary", help="print the newest run's results and the champion")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = PipelineSettings.from_env().with_overrides(
            source=args.source, max_train_images=args.max_train_images
        )
        print(_run_step(args, settings))
    except MnistPipelineError as exc:
        print(f"mnist-pipeline: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_step(args: argparse.Namespace, settings: PipelineSettings) -> str:
    from mnist_pipeline import pipeline, promotion, summary
    from mnist_pipeline.models import get_model_spec
    from mnist_pipeline.storage import open_storage

    artifacts = open_storage(settings.artifacts_uri)
    run = pipeline.run_key(args.run_id)
    if args.step == "ingest":
        return _json(pipeline.ingest(settings, args.run_id))
    if args.step in ("train", "evaluate"):
        get_model_spec(args.model)  # an unknown name fails before any file is read
    if args.step == "train":
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate)
        snapshot = artifacts.read_json(f"{run}/ingest.json")
        return _json(pipeline.train(args.model, snapshot, config, settings, args.run_id))
    if args.step == "evaluate":
        training = artifacts.read_json(f"{run}/{args.model}/training.json")
        return _json(pipeline.evaluate(training, settings))
    if args.step == "promote":
        return _json(
            promotion.promote(summary.run_evaluations(artifacts, args.run_id), settings, args.run_id)
        )
    return summary.render_summary(artifacts, settings)


def _json(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=True)


if __name__ == "__main__":
    sys.exit(main())
