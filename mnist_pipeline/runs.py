"""Where one run's records live in the artifacts store, and the time stamps they carry."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from mnist_pipeline.errors import ConfigError

__all__ = ["legacy_run_key", "model_key", "run_key", "trial_key", "utc_now"]

_KEPT = re.compile(r"[A-Za-z0-9._-]")
_ESCAPE = "~"  # not kept itself, so an escaped name never reads as another run's


def run_key(run_id: str) -> str:
    """The artifacts prefix of one run. Airflow run ids hold ':' and '+', which are escaped as
    `~` and the hex of each UTF-8 byte (`~` itself too): two run ids never share a folder, and
    `.` or `..` (a folder that is no run's) is refused."""
    _check_run_id(run_id)
    return "runs/" + "".join(char if _KEPT.fullmatch(char) else _escaped(char) for char in run_id)


def legacy_run_key(run_id: str) -> str:
    """Where runs recorded before the escaping above live: every other character became `_`, so
    a record found there must name its run (two run ids could share it)."""
    _check_run_id(run_id)
    return "runs/" + re.sub(r"[^A-Za-z0-9._-]", "_", run_id)


def _check_run_id(run_id: str) -> None:
    if not run_id:
        raise ConfigError("run_id must not be empty")
    if run_id in (".", ".."):
        raise ConfigError(f"run_id {run_id!r} names no run: it would be a folder above the run's own")


def _escaped(char: str) -> str:
    return "".join(f"{_ESCAPE}{byte:02x}" for byte in char.encode())


def model_key(run_id: str, model: str) -> str:
    """The artifacts prefix of one model trained in one run."""
    return f"{run_key(run_id)}/{model}"


def trial_key(run_id: str, model: str, index: int) -> str:
    """The artifacts prefix of one trial of a sweep (its model, record and checkpoint)."""
    return f"{model_key(run_id, model)}/trials/{index}"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
