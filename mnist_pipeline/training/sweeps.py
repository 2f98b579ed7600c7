"""The `sweep` run parameter: trials of a model's settings, as a grid or as an explicit list.

`{"cnn": {"learning_rate": [0.001, 0.002], "dropout": [0.2, 0.3]}}` is a grid: every combination,
4 trials. `{"cnn": [{"learning_rate": 0.001}, {"learning_rate": 0.002, "dropout": 0.3}]}` lists
the trials. A model the sweep does not name trains once, exactly as without a sweep.

`sweep_schema` is the JSON schema of the DAG's `sweep` parameter, generated from the model table
and each model's config fields, so the trigger form and the REST API refuse a bad sweep naming
the field: an unknown model or setting, an empty list, a value of the wrong type or out of range,
an explicit list longer than the limit (`MNIST_MAX_TRIALS`), a grid list longer than it.
`expand_sweep` checks the same schema, then what no JSON schema can say: a grid's product against
the limit. Pure Python: nothing here imports TensorFlow.
"""

from __future__ import annotations

import itertools
import math
import reprlib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, cast

from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError, best_match

from mnist_pipeline.config import TrainConfig
from mnist_pipeline.errors import ConfigError
from mnist_pipeline.records import Record
from mnist_pipeline.runs import model_key, trial_key
from mnist_pipeline.training.architectures import MODEL_NAMES, MODELS, ModelSpec

__all__ = ["TRAIN_CONFIG_SETTINGS", "Trial", "check_sweep", "expand_sweep", "sweep_schema"]

# Settings a model config shares with `TrainConfig`: a trial's values replace the run's.
TRAIN_CONFIG_SETTINGS = ("epochs", "batch_size", "learning_rate")
_LIMIT_VARIABLE = "MNIST_MAX_TRIALS"
_MAX_LAYERS = 8  # entries of a per-layer setting (hidden_units, filters)
# The range of each setting a sweep may try; a setting not named here gets its type's default.
_BOUNDS: dict[str, dict[str, float]] = {
    "epochs": {"minimum": 1, "maximum": 1000},
    "batch_size": {"minimum": 1, "maximum": 65536},
    "learning_rate": {"exclusiveMinimum": 0, "maximum": 1},
    "ema_horizon_steps": {"minimum": 0, "maximum": 1_000_000},
    "min_steps_per_epoch": {"minimum": 0, "maximum": 1_000_000},
    "warm_start_epochs": {"minimum": 1, "maximum": 1000},
    "warm_start_rate_scale": {"exclusiveMinimum": 0, "maximum": 1},
    "dropout": {"minimum": 0, "exclusiveMaximum": 1},  # Keras' Dropout takes a rate in [0, 1)
    "label_smoothing": {"minimum": 0, "exclusiveMaximum": 1},
    "max_shift": {"minimum": 0, "maximum": 1},  # a fraction of the image
    "max_rotation": {"minimum": 0, "maximum": 1},  # a fraction of a full turn
    "dense_units": {"minimum": 1, "maximum": 8192},
    "hidden_units": {"minimum": 1, "maximum": 8192},  # each layer's units
    "filters": {"minimum": 1, "maximum": 1024},  # each convolution's filters
    "convs_per_block": {"minimum": 1, "maximum": 8},
}
_SHORT = reprlib.Repr()  # a value quoted in a refusal: a few items and characters of it
_SHORT.maxlist = _SHORT.maxdict = 4
_SHORT.maxstring = _SHORT.maxother = 40
_TYPE_BOUNDS: dict[type, dict[str, float]] = {
    int: {"minimum": 1, "maximum": 1_000_000},
    float: {"exclusiveMinimum": 0, "maximum": 1_000_000},
}

# The draft the sweep schema declares and the library validates it with (see `sweep_schema`).
_VALIDATOR = Draft7Validator


@dataclass(frozen=True)
class Trial(Record):
    """One training of a model in a run: its index among the model's trials, the settings it
    overrides, and whether the model is swept at all (else it trains once, as without a sweep)."""

    model: str
    index: int
    settings: dict[str, Any] = field(default_factory=dict)
    swept: bool = False

    def key(self, run_id: str) -> str:
        """Where it trains: its own prefix (`trials/<index>`, checkpoint included) in a sweep; the
        model's own, as ever, without one."""
        return trial_key(run_id, self.model, self.index) if self.swept else model_key(run_id, self.model)

    @property
    def label(self) -> str:
        """Its name in a list of trials (the UI's mapped task): `trial 1: learning_rate=0.001`."""
        shown = ", ".join(f"{name}={value}" for name, value in self.settings.items())
        return f"trial {self.index}: {shown or 'model defaults'}"

    def configs(self, train_config: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
        """The run's `train_config` with the trial's epochs / batch size / learning rate, and the
        other model settings it overrides (lists as the tuples model configs hold)."""
        shared = {name: value for name, value in self.settings.items() if name in TRAIN_CONFIG_SETTINGS}
        own = {
            name: tuple(value) if isinstance(value, list) else value
            for name, value in self.settings.items()
            if name not in TRAIN_CONFIG_SETTINGS
        }
        return replace(train_config, **shared), own


def sweep_schema(models: Mapping[str, ModelSpec], limit: int) -> dict[str, Any]:
    """The JSON schema of the `sweep` parameter: per model, a grid or a list of at most `limit` trials.

    Each check is a subschema of its own (one keyword in an `allOf`, the rest reached by `$ref`):
    Airflow's refusal of a run (trigger form, REST API, `dags test -c`) quotes the subschema that
    failed, which is then a line rather than the whole schema of every model."""
    defs: dict[str, Any] = {}
    for name, spec in models.items():
        defs.update(_model_defs(name, spec, limit))
    return {
        # Airflow validates every Param each time it serializes the DAG (each parse, each task), and
        # jsonschema first checks the schema against its draft's metaschema: draft 2020-12's costs
        # this schema 120 ms a time, draft 7's under a millisecond. Draft 7 has every keyword used here.
        "$schema": _VALIDATOR.META_SCHEMA["$schema"],
        "type": "object",  # at the top, where the trigger form looks: it shows a JSON editor
        "allOf": [
            {"propertyNames": {"enum": list(models)}},
            {"properties": {name: _ref(name) for name in models}},
        ],
        "$defs": defs,
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


def _model_defs(model: str, spec: ModelSpec, limit: int) -> dict[str, Any]:
    """The model's subschemas: its entry (a grid of setting -> values, or a list of trials), and
    each setting's value and list of values to try."""
    settings = _setting_schemas(spec)
    names = {"propertyNames": {"enum": list(settings)}}
    defs: dict[str, Any] = {
        model: {
            "type": ["object", "array"],
            "if": {"type": "object"},
            "then": _ref(f"{model}.grid"),
            "else": _ref(f"{model}.trials"),
        },
        f"{model}.grid": {
            "allOf": [
                {"minProperties": 1},
                names,
                {"properties": {s: _ref(f"{model}.{s}.values") for s in settings}},
            ]
        },
        # Not an array at all is refused once, by the entry's own type.
        f"{model}.trials": {
            "allOf": [{"minItems": 1}, {"maxItems": limit}, {"items": _ref(f"{model}.trial")}]
        },
        f"{model}.trial": {
            "allOf": [{"type": "object"}, names, {"properties": {s: _ref(f"{model}.{s}") for s in settings}}]
        },
    }
    for setting, schema in settings.items():
        defs[f"{model}.{setting}"] = schema
        defs[f"{model}.{setting}.values"] = _array_of(
            _ref(f"{model}.{setting}"), limit, {"uniqueItems": True}
        )
    return defs


def _array_of(items: dict[str, Any], most: int, *more: dict[str, Any]) -> dict[str, Any]:
    """An array of 1 to `most` `items`, each check its own subschema."""
    return {"allOf": [{"type": "array"}, {"minItems": 1}, {"maxItems": most}, *more, {"items": items}]}


def _setting_schemas(spec: ModelSpec) -> dict[str, dict[str, Any]]:
    """Each setting of the model's config, typed from the dataclass field's type."""
    hints = typing.get_type_hints(spec.config_type)
    return {item.name: _value_schema(item.name, hints[item.name]) for item in fields(spec.config_type)}


def _value_schema(name: str, hint: Any) -> dict[str, Any]:
    if hint is bool:
        return {"type": "boolean"}
    if hint in (int, float):
        kind = "integer" if hint is int else "number"
        return {"type": kind, **_BOUNDS.get(name, _TYPE_BOUNDS[hint])}
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return _array_of(_value_schema(name, item), _MAX_LAYERS)
    raise ConfigError(f"model setting {name!r} is of a type a sweep cannot try: {hint}")


def expand_sweep(sweep: Mapping[str, Any] | None, model: str, limit: int) -> list[Trial]:
    """The trials of `model` in `sweep`: one, unswept, when the sweep does not name it. A bad sweep
    raises `ConfigError` with a line per wrong field (`sweep.cnn.dropout[1]: ...`)."""
    sweep = {} if sweep is None else sweep
    _validate(sweep, limit)
    entry = sweep.get(model)
    if entry is None:
        return [Trial(model, 0)]
    count = math.prod(len(values) for values in entry.values()) if isinstance(entry, Mapping) else len(entry)
    if count > limit:
        raise ConfigError(
            f"sweep.{model}: {count} trials, more than the limit of {limit} ({_LIMIT_VARIABLE})"
        )
    combos = _grid(entry) if isinstance(entry, Mapping) else entry
    hints = typing.get_type_hints(MODELS[model].config_type)
    return [
        Trial(model, index, {name: _as_declared(value, hints[name]) for name, value in combo.items()}, True)
        for index, combo in enumerate(combos)
    ]


def check_sweep(sweep: Mapping[str, Any] | None, limit: int) -> dict[str, list[Trial]]:
    """Every model's trials: refuses a bad sweep before anything trains."""
    return {name: expand_sweep(sweep, name, limit) for name in MODEL_NAMES}


def _validate(sweep: object, limit: int) -> None:
    """Refuse a sweep the schema refuses: one line per wrong field, naming it and saying why."""
    validator = _VALIDATOR(sweep_schema(MODELS, limit))
    by_field: dict[str, list[ValidationError]] = {}
    for error in validator.iter_errors(cast(Any, sweep)):  # any value: the schema judges it
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
        by_field.setdefault(f"sweep{where}", []).append(error)
    if by_field:
        lines = [
            f"{where}: {_reason(best_match(errors), limit)}" for where, errors in sorted(by_field.items())
        ]
        raise ConfigError("\n".join(lines))


def _reason(error: ValidationError, limit: int) -> str:
    """jsonschema's message, with the offending value shortened (a whole grid is no reason), or
    the trial limit for a list of trials or of a setting's values that is too long."""
    depth = len(error.absolute_path)
    if error.validator == "maxItems" and depth <= 2:  # a model's trials, or a grid's values
        what = "trials" if depth == 1 else "values"
        items = cast(list[Any], error.instance)  # maxItems: the list that is too long
        return f"{len(items)} {what}, more than the limit of {limit} ({_LIMIT_VARIABLE})"
    full = repr(error.instance)
    if error.message.startswith(full):
        return _SHORT.repr(error.instance) + error.message[len(full) :]
    return error.message


def _grid(entry: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the listed values, the first setting varying slowest."""
    names = list(entry)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*entry.values())]


def _as_declared(value: Any, hint: Any) -> Any:
    """A JSON value as the config field declares it: 2.0 as the integer 2, 1 as the float 1.0."""
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return [_as_declared(element, item) for element in value]
    return int(value) if hint is int else float(value) if hint is float else value
