"""The CLI's run options, built from the table the DAG's trigger form comes from (`run_options.py`).

Every form param is an option of the same name, dashed: `max_train_images` is `--max-train-images`,
`cnn_epochs` `--cnn-epochs`. `source` and `max_train_images` come before the command (every step
reads them); the training options go to `train` and `run`, the gate's to `promote` and `run`, and
`models` and `sweep` to `run`. An option not given is absent from the namespace (not None), so
`RunParams` sees exactly what was given, as it sees a trigger's conf.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from mnist_pipeline.run_options import GLOBAL, RUN_OPTIONS, RunOption

__all__ = ["add_run_options", "given_options"]


def add_run_options(parser: argparse.ArgumentParser, command: str = GLOBAL) -> None:
    """The options `command` takes (GLOBAL: those before any command)."""
    for option in RUN_OPTIONS:
        if command in option.commands:
            parser.add_argument(
                option.flag,
                *option.aliases,
                dest=option.name,
                default=argparse.SUPPRESS,
                help=_help(option),
                **_kind(option),
            )


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run options given on the command line, by param name."""
    return {option.name: getattr(args, option.name) for option in RUN_OPTIONS if hasattr(args, option.name)}


def _kind(option: RunOption) -> dict[str, Any]:
    """argparse's reading of the option's type; its bounds are RunParams' to check."""
    types, schema = option.types, option.schema
    if "boolean" in types:  # on by default (`cache`): --cache / --no-cache
        return {"action": argparse.BooleanOptionalAction if option.default is True else "store_true"}
    if "array" in types:
        return {"nargs": "+", "choices": schema["items"]["enum"], "metavar": "NAME"}
    if "enum" in schema:
        bare = {"nargs": "?", "const": option.flag_value} if option.flag_value is not None else {}
        return {"choices": schema["enum"], **bare}
    if "object" in types:
        return {"type": _json_object, "metavar": "JSON"}
    if "integer" in types:
        return {"type": int}
    return {"type": float} if "number" in types else {}


def _help(option: RunOption) -> str:
    default = "" if option.default in (None, {}, False) else f" (default: {_shown(option.default)})"
    return f"{option.title}: {option.description}{default}".replace("%", "%%")


def _shown(value: Any) -> str:
    return " ".join(value) if isinstance(value, list) else str(value)


def _json_object(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
