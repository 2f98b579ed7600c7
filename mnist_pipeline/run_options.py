"""The options of a training run: one table that the DAG's trigger form and the CLI are built from.

Each `RunOption` names a parameter (the form's param; `--name-with-dashes` in `mnist-pipeline`),
its JSON schema (type, bounds, choices: what the form and the REST API refuse, and what
`RunParams` refuses from the CLI), its default, the form's title, description and section, and
the CLI commands that take it. `RunParams` (`run_params.py`) resolves a run's values against it.

An empty value never overrides a choice someone made: an empty `epochs` keeps the model's own,
an empty `source` or `max_train_images` keeps the operator's setting (`setting`: the
`PipelineSettings` field it overrides when given).

Pure Python: nothing here imports Airflow or TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnist_pipeline.config import APPROVAL_MODES, PRECISIONS
from mnist_pipeline.registry.gate import GateConfig
from mnist_pipeline.training.architectures import MODEL_NAMES, MODELS

__all__ = [
    "ALL_STEPS",
    "GLOBAL",
    "OPTIONS_BY_NAME",
    "PROMOTE_STEPS",
    "RUN_OPTIONS",
    "SWEEP",
    "TRAIN_STEPS",
    "WARM_START_MODES",
    "RunOption",
]

WARM_START_MODES = ("auto", "on", "off")
# The CLI commands an option belongs to; GLOBAL: before the command, read by every step.
GLOBAL = "global"
TRAIN_STEPS, PROMOTE_STEPS, ALL_STEPS = ("train", "run"), ("promote", "run"), ("run",)
_GATE = GateConfig()  # the gate's defaults are the form's


@dataclass(frozen=True)
class RunOption:
    """One run parameter: the form's field and the CLI's option of the same name."""

    name: str
    default: Any
    schema: dict[str, Any]  # Airflow Param's JSON schema keywords: type, enum, items, bounds...
    title: str
    description: str
    section: str
    commands: tuple[str, ...]  # the CLI commands that take it, or (GLOBAL,)
    setting: str | None = None  # the PipelineSettings field a given value overrides
    aliases: tuple[str, ...] = ()  # earlier CLI flags, still accepted
    flag_value: Any = None  # the value of its CLI flag given bare (`--warm-start`: on)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def types(self) -> tuple[str, ...]:
        kind = self.schema["type"]
        return (kind,) if isinstance(kind, str) else tuple(kind)


def _bounds(**limits: float) -> dict[str, Any]:
    """`minimum`/`maximum` (or the exclusive ones) for a number, nested in `allOf`.

    The trigger form's number field clamps what was typed into a top-level minimum/maximum when it
    loses focus: epochs 0 silently became 1 and started a run nobody asked for. Nested, the form
    leaves the value as typed, and Airflow's validation of the run's conf (form, REST API, `dags
    test -c`) still refuses it: `Invalid input for param epochs: 0 is less than the minimum of 1`."""
    return {"allOf": [limits]}


def _positive_or_empty(name: str, title: str, description: str, section: str) -> RunOption:
    """An optional positive integer: empty keeps a default, 0 and negatives are refused."""
    schema = {"type": ["null", "integer"], **_bounds(minimum=1)}
    return RunOption(name, None, schema, title, f"{description} At least 1.", section, TRAIN_STEPS)


def _fraction(
    name: str, default: float, title: str, description: str, aliases: tuple[str, ...] = ()
) -> RunOption:
    """A share of accuracy (0.001 = 0.1 points) in the Promotion section."""
    schema = {"type": "number", **_bounds(minimum=0, maximum=0.5)}
    text = f"{description} From 0 to 0.5."
    return RunOption(name, default, schema, title, text, "Promotion", PROMOTE_STEPS, aliases=aliases)


def _model_options(name: str) -> tuple[RunOption, RunOption]:
    spec = MODELS[name].config()
    shrink = (
        f", halved on a small slice until an epoch has {spec.min_steps_per_epoch} steps."
        if spec.min_steps_per_epoch
        else "."
    )
    return (
        _positive_or_empty(
            f"{name}_epochs",
            f"{name}: epochs",
            f"Empty: the global epochs if set, else {spec.epochs}.",
            "Models",
        ),
        _positive_or_empty(
            f"{name}_batch_size",
            f"{name}: batch size per replica",
            f"Empty: the global batch size if set, else {spec.batch_size}{shrink}",
            "Models",
        ),
    )


_MODELS = RunOption(
    "models",
    list(MODEL_NAMES),
    {
        "type": "array",
        "items": {"type": "string", "enum": list(MODEL_NAMES)},
        "examples": list(MODEL_NAMES),  # an array with examples: the form offers a multi-select
        "uniqueItems": True,
        "minItems": 1,
    },
    "Models",
    "Which models to train; the others are skipped.",
    "Models",
    ALL_STEPS,
)

_TRAINING = (
    _positive_or_empty(
        "epochs",
        "Epochs (all models)",
        "Epochs for every model without its own; empty keeps each model's default.",
        "Training",
    ),
    _positive_or_empty(
        "batch_size",
        "Batch size per replica (all models)",
        "Empty keeps each model's default (the DNN's shrinks on a small slice, so an epoch keeps "
        "enough steps); the global batch is this times the replicas.",
        "Training",
    ),
    RunOption(
        "learning_rate",
        None,
        {"type": ["null", "number"], **_bounds(exclusiveMinimum=0, maximum=1)},
        "Peak learning rate",
        "Above 0, at most 1. Empty keeps each model's default (cosine decay after a short warm-up).",
        "Training",
        TRAIN_STEPS,
    ),
)

# The trigger form adds the limit (MNIST_MAX_TRIALS) and the schema of each model's settings.
SWEEP = RunOption(
    "sweep",
    {},
    {"type": "object"},
    "Sweep",
    "Per model, lists of values for any of its settings, tried as a grid, e.g."
    ' {"cnn": {"learning_rate": [0.001, 0.002], "dropout": [0.2, 0.3]}} (4 trials); or a list of'
    ' trials, e.g. {"cnn": [{"learning_rate": 0.001}, {"learning_rate": 0.002, "dropout": 0.3}]}.'
    " Each trial trains as its own task on the training workers; the trial best on the validation"
    " split goes on to the test set and the gate.",
    "Sweep",
    ALL_STEPS,
)

_RUN_SETUP = (
    RunOption(
        "warm_start",
        "auto",
        {"type": "string", "enum": list(WARM_START_MODES)},
        "Warm start",
        "Start each model from the champion's weights when the champion is the same architecture,"
        " with a short schedule. auto: on for runs started by new data, off otherwise.",
        "Training",
        TRAIN_STEPS,
        flag_value="on",
    ),
    RunOption(
        "precision",
        "auto",
        {"type": "string", "enum": list(PRECISIONS)},
        "Precision",
        "auto: mixed_float16 on GPU workers; on CPUs that multiply bfloat16 in hardware (AMX or"
        " AVX-512 BF16) mixed_bfloat16 for the CNN, float32 for the others; float32 on other CPUs."
        " Or force a Keras dtype policy.",
        "Training",
        TRAIN_STEPS,
    ),
    # On: a scheduled run with nothing new trains nothing (`mnist_pipeline.cache`); the CLI's
    # `--no-cache` turns it off.
    RunOption(
        "cache",
        True,
        {"type": "boolean"},
        "Reuse earlier trainings",
        "Reuse a model an earlier run trained on the same snapshot with the same configuration, seed,"
        " training code, libraries and device, with its evaluation, instead of training it again"
        " (the run's summary and the version's lineage say so). Off: every model trains.",
        "Training",
        TRAIN_STEPS,
    ),
    RunOption(
        "max_train_images",
        None,
        {"type": ["null", "integer"], **_bounds(minimum=0)},
        "Training images",
        "Train on the first N base training images only (0: all 60,000). For quick runs. Empty"
        " keeps MNIST_MAX_TRAIN_IMAGES (unset: all).",
        "Training",
        (GLOBAL,),
        setting="max_train_images",
    ),
    RunOption(
        "source",
        None,
        {"type": ["null", "string"]},
        "Data source",
        "Overrides MNIST_SOURCE: an https:// URL (with #sha256=...), a local path or gs:// URI.",
        "Data",
        (GLOBAL,),
        setting="source",
    ),
)

_PROMOTION = (
    _fraction(
        "promotion_margin",
        _GATE.margin,
        "Promotion margin (mnist_test)",
        "Accuracy the challenger must gain over the champion on the fixed 10k test set to count as"
        " better there (0.001 = 0.1 points), on top of a significant McNemar test.",
        aliases=("--margin",),
    ),
    _fraction(
        "new_data_margin",
        _GATE.new_data_margin,
        "Promotion margin (new_data)",
        "Accuracy the challenger must gain on the held-out slice of newly landed data to count as"
        " better there.",
    ),
    _fraction(
        "non_inferiority_margin",
        _GATE.non_inferiority,
        "Non-inferiority margin",
        "The challenger may be at most this much below the champion on any slice (0.001 = 0.1 points).",
    ),
    _fraction(
        "max_recall_drop",
        _GATE.max_recall_drop,
        "Largest recall drop per digit",
        "No digit's recall on mnist_test may fall more than this below the champion's (0.01 = 1 point).",
    ),
    RunOption(
        "min_slice_images",
        _GATE.min_slice_images,
        {"type": "integer", **_bounds(minimum=1)},
        "Smallest slice that decides",
        "At least 1. A slice with fewer images is reported in the verdict but does not decide.",
        "Promotion",
        PROMOTE_STEPS,
    ),
    RunOption(
        "force_promote",
        False,
        {"type": "boolean"},
        "Force promotion",
        "Promote the run's best model even if the gate says no; recorded as forced.",
        "Promotion",
        PROMOTE_STEPS,
        aliases=("--force",),
    ),
    RunOption(
        "dry_run",
        False,
        {"type": "boolean"},
        "Dry run",
        "Decide and report the verdict, but write nothing to the registry.",
        "Promotion",
        PROMOTE_STEPS,
    ),
    # Empty (only the CLI leaves it so): MNIST_APPROVAL; the form shows that setting as its default.
    RunOption(
        "approval",
        None,
        {"type": "string", "enum": list(APPROVAL_MODES)},
        "Approval",
        "required: a promotion the gate allows is published as the candidate and waits for a person"
        " to approve it (the approval task) before the champion moves. Default: MNIST_APPROVAL.",
        "Promotion",
        PROMOTE_STEPS,
        setting="approval",
    ),
    RunOption(
        "approval_timeout_hours",
        24,
        {"type": "number", "exclusiveMinimum": 0},
        "Approval timeout (hours)",
        "With approval required: no answer within this long rejects the candidate.",
        "Promotion",
        PROMOTE_STEPS,
    ),
)

# In the trigger form's order.
RUN_OPTIONS: tuple[RunOption, ...] = (
    _MODELS,
    *(option for name in MODEL_NAMES for option in _model_options(name)),
    *_TRAINING,
    SWEEP,
    *_RUN_SETUP,
    *_PROMOTION,
)
OPTIONS_BY_NAME: dict[str, RunOption] = {option.name: option for option in RUN_OPTIONS}
