"""Which failures of a task Airflow retries: none caused by what the task was given."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.sdk.exceptions import AirflowFailException

from mnist_pipeline.errors import ConfigError, ConflictError, DataError, RegistryError

__all__ = ["no_retry_on_bad_input"]


@contextmanager
def no_retry_on_bad_input(retry_on_conflict: bool = False) -> Iterator[None]:
    """Bad data, settings or registry contents fail the task at once: a retry would fail the same
    way. Storage errors (a network blip) are left to Airflow's retries, and so, with
    `retry_on_conflict`, is a gate decision refused because the champion moved since the gate:
    the retry judges against the new champion."""
    try:
        yield
    except ConflictError as exc:
        if not retry_on_conflict:
            raise AirflowFailException(str(exc)) from exc
        raise RuntimeError(f"{exc} (Airflow's retry re-runs the gate)") from exc
    except (ConfigError, DataError, RegistryError) as exc:
        raise AirflowFailException(str(exc)) from exc
