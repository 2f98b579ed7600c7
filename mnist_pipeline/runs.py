"""Where one run's records live in the artifacts store, and the time stamps they carry."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from mnist_pipeline.errors import ConfigError

__all__ = ["model_key", "run_key", "trial_key", "utc_now"]


def run_key(run_id: str) -> str:
    """The artifacts prefix of one run; Airflow run ids hold ':' and '+', so they are escaped."""
    if not run_id:
        raise ConfigError("run_id must not be empty")
    return "runs/" + re.sub(r"[^A-Za-z0-9._-]", "_", run_id)


def model_key(run_id: str, model: str) -> str:
    """The artifacts prefix of one model trained in one run."""
    return f"{run_key(run_id)}/{model}"


def trial_key(run_id: str, model: str, index: int) -> str:
    """The artifacts prefix of one trial of a sweep (its model, record and checkpoint)."""
    return f"{model_key(run_id, model)}/trials/{index}"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
