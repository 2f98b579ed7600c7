"""The training DAG's trigger form and schedule, built when the DAG file is parsed.

Each Param comes from the table of run options (`run_options.py`), which the CLI's options come
from too; `RunParams` resolves what a run was given. Imports no TensorFlow.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.run_options import RUN_OPTIONS, SWEEP, RunOption
from mnist_pipeline.training.architectures import MODELS
from mnist_pipeline.training.sweeps import sweep_schema

__all__ = ["training_params", "training_schedule"]


def training_params(settings: PipelineSettings) -> dict[str, Param]:
    """The trigger form of `mnist_training`, in the table's order; `settings` are the operator's,
    read when the file is parsed (the sweep's trial limit, the default approval)."""
    return {option.name: _param(option, settings) for option in RUN_OPTIONS}


def _param(option: RunOption, settings: PipelineSettings) -> Param:
    default, schema, description = copy.deepcopy(option.default), option.schema, option.description
    if default is None and option.setting and "null" not in option.types:
        default = getattr(settings, option.setting)  # a choice the form cannot leave empty
    if option is SWEEP:
        # Per model, the settings it may try: the form and the REST API refuse a bad sweep, the field named.
        limit = settings.max_trials
        schema = schema | sweep_schema(MODELS, limit)
        description += f" At most {limit} trials per model (MNIST_MAX_TRIALS). Empty: each model trains once."
    return Param(default, title=option.title, description=description, section=option.section, **schema)


def training_schedule(settings: PipelineSettings, new_data: Sequence[Asset]) -> Any:
    """Weekly (`MNIST_SCHEDULE`), or as soon as `new_data` has an event, whichever comes first;
    `MNIST_SCHEDULE=none` keeps only the data trigger (and the form)."""
    if settings.schedule.lower() == "none":
        return list(new_data)
    # No start_date and no run for a slot already past: unpausing starts nothing until the next
    # scheduled time (with a start_date, catchup=False would run the latest past slot at once).
    timetable = CronTriggerTimetable(settings.schedule, timezone="UTC", run_immediately=timedelta(0))
    return AssetOrTimeSchedule(timetable=timetable, assets=list(new_data))
