"""One training run's parameters, resolved in one place into a typed object: `RunParams`.

A DAG run's params (trigger form, REST API, `dags test -c`) and a CLI run's options come from the
same table (`run_options.py`) and are resolved here, by these rules:

- A value left empty never overrides a choice made elsewhere: `source` and `max_train_images` keep
  the operator's MNIST_SOURCE and MNIST_MAX_TRAIN_IMAGES, `approval` MNIST_APPROVAL.
- Epochs and batch size: the model's own param (`cnn_epochs`), else the global one (`epochs`),
  else the model's default. A sweep trial's values win over both (`Trial.configs`); a warm start
  takes the model's short schedule where the run sets neither epochs nor a learning rate
  (`resolve_model_config`, the one place a model's config is resolved).
- Warm start `auto` is on for a run that new labelled data started (an asset event), off for
  scheduled, manual and CLI runs.
- The gate's params, force, dry run and approval make the promotion's options.

Every value is checked against its option's JSON schema, the one the form's Param carries, so a CLI
run, or a conf that bypassed the form, is refused the same way, naming the param; a sweep is
checked against the trial limit too. Pure Python: nothing here imports Airflow or TensorFlow.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator

from mnist_pipeline.config import PipelineSettings, TrainConfig
from mnist_pipeline.errors import ConfigError
from mnist_pipeline.registry.gate import GateConfig
from mnist_pipeline.run_options import RUN_OPTIONS, RunOption
from mnist_pipeline.training.architectures import MODEL_NAMES, get_model_spec
from mnist_pipeline.training.sweeps import Trial, check_sweep, expand_sweep

if TYPE_CHECKING:
    from mnist_pipeline.registry.promotion import PromotionOptions

__all__ = ["ASSET_TRIGGERED", "RunParams", "trigger_kind"]

ASSET_TRIGGERED = "asset_triggered"  # Airflow's run type of a run that an asset event started
_LIMIT_WORDS = {
    "minimum": "at least",
    "exclusiveMinimum": "above",
    "maximum": "at most",
    "exclusiveMaximum": "below",
}


@dataclass(frozen=True)
class RunParams:
    """A run's parameters, checked and resolved; build it with `from_params` or `from_context`."""

    settings: PipelineSettings  # the operator's, with the run's source, max_train_images, approval
    run_id: str = "manual"
    trigger: str = "manual"  # Airflow's run type (scheduled, manual, asset_triggered) or cli:<user>
    models: tuple[str, ...] = MODEL_NAMES
    epochs: int | None = None  # every model without its own; None: the model's default
    batch_size: int | None = None
    model_epochs: Mapping[str, int] = field(default_factory=dict)  # per model, only those set
    model_batch_sizes: Mapping[str, int] = field(default_factory=dict)
    learning_rate: float | None = None
    precision: str = "auto"
    warm_start_mode: str = "auto"  # auto, on or off
    cache: bool = True  # reuse a training an earlier run finished with the same key (`cache`)
    sweep: Mapping[str, Any] = field(default_factory=dict)
    gate: GateConfig = field(default_factory=GateConfig)
    force_promote: bool = False
    dry_run: bool = False
    approval_timeout_hours: float = 24.0
    conf: Mapping[str, Any] = field(default_factory=dict)  # every param as given, for the run's records
    attempt: int | None = None  # the task's try, where a task built it

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, Any],
        settings: PipelineSettings,
        *,
        trigger: str = "manual",
        run_id: str = "manual",
        attempt: int | None = None,
    ) -> RunParams:
        """The run that `params` describe, over the operator's `settings`. An absent or empty
        param takes its default (runs triggered before a param existed lack it); a bad one raises
        `ConfigError` naming it."""
        values = _checked_values(params)
        overrides = {option.setting: values[option.name] for option in RUN_OPTIONS if option.setting}
        run = cls(
            settings=settings.with_overrides(**overrides),
            run_id=run_id,
            trigger=trigger,
            models=tuple(name for name in MODEL_NAMES if name in values["models"]),
            epochs=values["epochs"],
            batch_size=values["batch_size"],
            model_epochs=_per_model(values, "epochs"),
            model_batch_sizes=_per_model(values, "batch_size"),
            learning_rate=values["learning_rate"],
            precision=values["precision"],
            warm_start_mode=values["warm_start"],
            cache=values["cache"],
            sweep=values["sweep"],
            gate=_gate(values),
            force_promote=values["force_promote"],
            dry_run=values["dry_run"],
            approval_timeout_hours=float(values["approval_timeout_hours"]),
            conf={**{option.name: option.default for option in RUN_OPTIONS}, **params},
            attempt=attempt,
        )
        check_sweep(run.sweep, run.settings.max_trials)  # a grid's product: beyond any JSON schema
        return run

    @classmethod
    def from_context(cls, context: Mapping[str, Any], settings: PipelineSettings) -> RunParams:
        """The run of an Airflow task's context: its params, how it was triggered, its id, the try."""
        return cls.from_params(
            context["params"],
            settings,
            trigger=trigger_kind(context.get("dag_run")),
            run_id=context["run_id"],
            attempt=getattr(context.get("ti"), "try_number", None),
        )

    @property
    def warm_start(self) -> bool:
        """`warm_start`: on, off, or auto: on only for a run that new labelled data started."""
        return self.warm_start_mode == "on" or (
            self.warm_start_mode == "auto" and self.trigger == ASSET_TRIGGERED
        )

    @property
    def approval_required(self) -> bool:
        return self.settings.approval == "required"

    def train_config(self, model: str) -> TrainConfig:
        """How `model` trains in this run: its own epochs / batch size, else the global ones;
        None leaves the model's default (or, warm-started, its short schedule) to the trainer."""
        get_model_spec(model)  # an unknown name is refused here, naming the valid ones
        return TrainConfig(
            epochs=self.model_epochs.get(model, self.epochs),
            batch_size=self.model_batch_sizes.get(model, self.batch_size),
            learning_rate=self.learning_rate,
            precision=self.precision,
        )

    def trials(self, model: str) -> list[Trial]:
        """The model's trials in this run: one, unswept, when the sweep does not name it."""
        return expand_sweep(self.sweep, model, self.settings.max_trials)

    def promotion_options(self) -> PromotionOptions:
        from mnist_pipeline.registry.promotion import PromotionOptions

        return PromotionOptions(
            gate=self.gate,
            force=self.force_promote,
            dry_run=self.dry_run,
            trigger=self.trigger,
            run_conf=dict(self.conf),
            approval=self.approval_required,
            attempt=self.attempt,
        )


def trigger_kind(dag_run: Any) -> str:
    """`manual`, `scheduled`, `asset_triggered`, ...: the DagRunType's value, not its repr."""
    run_type = getattr(dag_run, "run_type", None)
    return str(getattr(run_type, "value", run_type or "unknown"))


def _checked_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """Every option's value: the one given, checked against its schema, else its default."""
    values: dict[str, Any] = {}
    for option in RUN_OPTIONS:
        value = params.get(option.name)
        if value is None:
            values[option.name] = copy.deepcopy(option.default)
            continue
        if not Draft202012Validator(option.schema).is_valid(value):
            empty = " (empty keeps the default)" if "null" in option.types else ""
            raise ConfigError(f"param {option.name} must be {_wanted(option)}, got {value!r}{empty}")
        values[option.name] = value
    return values


def _wanted(option: RunOption) -> str:
    """What the option's schema accepts, in words: `a positive integer`, `one of auto, on, off`."""
    schema, types = option.schema, option.types
    if "enum" in schema:
        return "one of " + ", ".join(schema["enum"])
    if "array" in types:
        return "a list of distinct names, at least one, from " + ", ".join(schema["items"]["enum"])
    limits = {key: value for part in schema.get("allOf", []) for key, value in part.items()}
    limits |= {key: schema[key] for key in _LIMIT_WORDS if key in schema}
    if "integer" in types and limits == {"minimum": 1}:
        return "a positive integer"
    if "integer" in types and limits == {"minimum": 0}:
        return "0 or a positive integer"
    if "integer" in types or "number" in types:
        bounds = " and ".join(f"{_LIMIT_WORDS[key]} {value}" for key, value in limits.items())
        return f"{'an integer' if 'integer' in types else 'a number'} {bounds}".strip()
    return {"boolean": "true or false", "object": "a JSON object"}.get(types[-1], f"a {types[-1]}")


def _per_model(values: Mapping[str, Any], setting: str) -> dict[str, int]:
    given = {name: values[f"{name}_{setting}"] for name in MODEL_NAMES}
    return {name: value for name, value in given.items() if value is not None}


def _gate(values: Mapping[str, Any]) -> GateConfig:
    return GateConfig(
        margin=values["promotion_margin"],
        new_data_margin=values["new_data_margin"],
        non_inferiority=values["non_inferiority_margin"],
        max_recall_drop=values["max_recall_drop"],
        min_slice_images=values["min_slice_images"],
    )
