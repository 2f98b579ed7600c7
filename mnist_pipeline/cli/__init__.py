"""`mnist-pipeline`: the DAG's steps and the registry from a terminal, over the same environment.

    mnist-pipeline ingest | train MODEL | evaluate MODEL | promote | summary | run | verify MODEL/VERSION
    mnist-pipeline registry list | show [MODEL/VERSION] | history [--limit N] [--since TIME]
    mnist-pipeline registry promote MODEL/VERSION --reason TEXT | rollback | reindex
    mnist-pipeline registry alias set ALIAS MODEL/VERSION --reason TEXT | list
                                  | history ALIAS [--limit N] | clear ALIAS --reason TEXT | rollback ALIAS

Steps of one run share `--run-id` (default `cli`); `run` runs them all, as one DAG run does. Every
param of the DAG's trigger form is an option of the same name (`--max-train-images`,
`--promotion-margin`, `--cnn-epochs`), resolved as a DAG run's params are. Bad input exits with
status 2 and the error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mnist_pipeline.cli.options import add_run_options, given_options
from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.errors import MnistPipelineError
from mnist_pipeline.run_options import GLOBAL
from mnist_pipeline.run_params import RunParams
from mnist_pipeline.training.architectures import MODEL_NAMES

if TYPE_CHECKING:  # the registry is imported when a registry command runs, not at every start
    from mnist_pipeline.registry.client import Registry

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-pipeline", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--run-id", default="cli", help="groups the steps of one run (default: cli)")
    add_run_options(parser, GLOBAL)  # --source, --max-train-images: every step reads them
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("ingest", help="load, validate and snapshot MNIST")
    train = steps.add_parser("train", help="train one model on the run's snapshot")
    train.add_argument("model", help=f"one of: {', '.join(MODEL_NAMES)}")
    add_run_options(train, "train")
    steps.add_parser("evaluate", help="evaluate one trained model on the test set").add_argument("model")
    promote = steps.add_parser("promote", help="gate the run's best model and promote it if it wins")
    add_run_options(promote, "promote")
    steps.add_parser("summary", help="print the newest run's results and the champion")
    run = steps.add_parser("run", help="every step, as one DAG run: ingest, train, select, evaluate, promote")
    add_run_options(run, "run")
    steps.add_parser(
        "verify", help="retrain a published version from its lineage; are the weights bitwise the same?"
    ).add_argument("version", metavar="MODEL/VERSION", help="or a version name alone, when one model has it")
    _registry_parser(steps.add_parser("registry", help="browse and manage the model registry"))
    return parser


def _registry_parser(registry: argparse.ArgumentParser) -> None:
    actions = registry.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every published version; * marks the champion")
    actions.add_parser("show", help="one version's metadata (default: the champion)").add_argument(
        "ref", nargs="?", metavar="MODEL/VERSION"
    )
    history = actions.add_parser("history", help="gate decisions, promotions and rollbacks, newest first")
    history.add_argument("--limit", type=_positive, default=50, help="events to show (default 50)")
    history.add_argument("--since", metavar="TIME", help="only events at or after this ISO 8601 time (UTC)")
    history.add_argument("--before", metavar="CURSOR", help="only events older than this (a page's cursor)")
    promote = actions.add_parser("promote", help="make a version champion, bypassing the gate")
    promote.add_argument("ref", metavar="MODEL/VERSION")
    promote.add_argument("--reason", required=True)
    actions.add_parser("rollback", help="point back at the previous champion")
    actions.add_parser(
        "verify", help="check every view (champion, aliases, index, history) against the commit log"
    )
    actions.add_parser(
        "repair", help="set bad objects aside (mnist/quarantine/), rebuild every view from the log"
    )
    actions.add_parser("reindex", help="the same as repair (its former name)")
    _alias_parser(actions.add_parser("alias", help="named pointers at versions: champion, candidate, ..."))


def _alias_parser(alias: argparse.ArgumentParser) -> None:
    commands = alias.add_subparsers(dest="alias_action", required=True)
    point = commands.add_parser("set", help="point an alias at a version (champion: a manual promotion)")
    point.add_argument("alias")
    point.add_argument("ref", metavar="MODEL/VERSION")
    point.add_argument("--reason", required=True)
    commands.add_parser("list", help="every alias set now, the champion first")
    history = commands.add_parser("history", help="an alias's moves, newest first")
    history.add_argument("alias")
    history.add_argument("--limit", type=_positive, default=50, help="events to show (default 50)")
    clear = commands.add_parser("clear", help="unset an alias (never the champion)")
    clear.add_argument("alias")
    clear.add_argument("--reason", required=True)
    commands.add_parser("rollback", help="point an alias back at its previous target").add_argument("alias")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


class RegistryMismatch(Exception):
    """`registry verify` found views that disagree with the log: its report, printed, exits 1."""


class NotReproduced(RegistryMismatch):
    """`verify` retrained a version to other weights: its report, printed, exits 1."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        run = RunParams.from_params(
            given_options(args), PipelineSettings.from_env(), trigger=_who(), run_id=args.run_id
        )
        print(_registry_action(args, run.settings) if args.step == "registry" else _run_step(args, run))
    except RegistryMismatch as mismatch:
        print(mismatch)
        return 1
    except MnistPipelineError as exc:
        print(f"mnist-pipeline: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_step(args: argparse.Namespace, run: RunParams) -> str:
    from mnist_pipeline import steps
    from mnist_pipeline.cli.render import render_summary
    from mnist_pipeline.data.snapshot import SnapshotInfo
    from mnist_pipeline.runs import model_key, run_key
    from mnist_pipeline.storage import open_storage
    from mnist_pipeline.training.architectures import get_model_spec
    from mnist_pipeline.training.record import TrainingRecord

    settings = run.settings
    if args.step == "verify":
        return _verify(args.version, settings)
    artifacts = open_storage(settings.artifacts_uri, settings)
    if args.step in ("train", "evaluate"):
        get_model_spec(args.model)  # an unknown name fails before any file is read
    if args.step == "ingest":
        return _json(steps.ingest(settings, args.run_id).to_dict())
    if args.step == "train":
        key = f"{run_key(args.run_id)}/ingest.json"
        snapshot = SnapshotInfo.from_dict(artifacts.read_json(key), artifacts.uri(key))
        config = run.train_config(args.model)
        record = steps.train(
            args.model,
            snapshot,
            config,
            settings,
            args.run_id,
            warm_start=run.warm_start,
            use_cache=run.cache,
        )
        return _json(record.to_dict())
    if args.step == "evaluate":
        key = f"{model_key(args.run_id, args.model)}/training.json"
        training = TrainingRecord.from_dict(artifacts.read_json(key), artifacts.uri(key))
        return _json(steps.evaluate(training, settings).to_dict())
    if args.step == "promote":
        evaluations = steps.run_evaluations(artifacts, args.run_id)
        return _json(steps.promote(evaluations, settings, args.run_id, run.promotion_options()).to_dict())
    if args.step == "run":
        return _json(_whole_run(run))
    return render_summary(artifacts, settings)


def _verify(version: str, settings: PipelineSettings) -> str:
    """Retrain the version, print the report: exit 0 reproduced, 1 differs, 2 refused."""
    from mnist_pipeline.errors import VerificationRefused
    from mnist_pipeline.registry.verification import DIFFERS, REFUSED
    from mnist_pipeline.verify import verify_version

    verification, where = verify_version(settings, version, _who())
    report = "\n".join([*verification.report(), f"recorded as {where}"])
    if verification.outcome == REFUSED:
        raise VerificationRefused(report)
    if verification.outcome == DIFFERS:
        raise NotReproduced(report)
    return report


def _whole_run(run: RunParams) -> dict[str, Any]:
    """The DAG's tasks in order, in this process: each selected model's trials, the one best on
    validation evaluated, then the gate. No approval is waited for: a candidate stays published."""
    from mnist_pipeline import steps

    snapshot = steps.ingest(run.settings, run.run_id)
    evaluations = []
    for model in run.models:
        trainings = [
            steps.train(
                model,
                snapshot,
                run.train_config(model),
                run.settings,
                run.run_id,
                run.warm_start,
                trial,
                use_cache=run.cache,
            )
            for trial in run.trials(model)
        ]
        chosen = steps.select(model, trainings, run.settings, run.run_id)
        evaluations.append(steps.evaluate(chosen, run.settings))
    return steps.promote(evaluations, run.settings, run.run_id, run.promotion_options()).to_dict()


def _registry_action(args: argparse.Namespace, settings: PipelineSettings) -> str:
    from mnist_pipeline.cli import render
    from mnist_pipeline.registry import operations
    from mnist_pipeline.registry.client import Registry
    from mnist_pipeline.registry.store import parse_ref

    registry = Registry.from_settings(settings)
    if args.action == "list":
        return render.render_versions(registry)
    if args.action == "show":
        return _json(render.version_details(registry, parse_ref(args.ref) if args.ref else None))
    if args.action == "history":
        return render.render_history(registry, args.limit, since=args.since, before=args.before)
    if args.action in ("verify", "repair", "reindex"):
        from mnist_pipeline.registry import integrity

        report = (integrity.verify if args.action == "verify" else integrity.repair)(registry)
        if not report.ok and args.action == "verify":
            raise RegistryMismatch(_json(report.to_dict()))
        return _json(report.to_dict())
    if args.action == "promote":
        return _json(operations.promote_version(registry, parse_ref(args.ref), args.reason, _who()).to_dict())
    if args.action == "alias":
        return _alias_action(args, registry)
    return _json(operations.rollback(registry, _who()).to_dict())


def _alias_action(args: argparse.Namespace, registry: Registry) -> str:
    from mnist_pipeline.cli import render
    from mnist_pipeline.registry import aliases
    from mnist_pipeline.registry.store import parse_ref

    if args.alias_action == "list":
        return render.render_aliases(aliases.list_aliases(registry))
    if args.alias_action == "history":
        return render.render_alias_history(
            args.alias, aliases.alias_history(registry, args.alias, args.limit)
        )
    if args.alias_action == "set":
        event = aliases.set_alias(registry, args.alias, parse_ref(args.ref), _who(), args.reason)
    elif args.alias_action == "clear":
        event = aliases.clear_alias(registry, args.alias, _who(), args.reason)
    else:
        event = aliases.rollback_alias(registry, args.alias, _who())
    return render.render_alias_move(args.alias, event)


def _who() -> str:
    return f"cli:{getpass.getuser()}"


def _json(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=True)


if __name__ == "__main__":
    sys.exit(main())
