"""The "Model Registry" extra link of the `promote` task: opens the page of the version it promoted.

Airflow-only (the api-server imports it through the plugin): the link is computed from the promote
task's XCom return value (`{"promoted", "model", "version", ...}`), which stays small. A run that
promoted nothing links to the registry overview, where the gate's decision is listed.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlparse

from airflow.sdk import BaseOperatorLink

from mnist_pipeline.web.app import URL_PREFIX

__all__ = ["PROMOTE_TASK_ID", "PromotedVersionLink", "registry_link", "xcom_return_value"]

PROMOTE_TASK_ID = "promote"


def registry_link(outcome: dict[str, Any] | None, base_path: str = "") -> str:
    """The page to open for a promote task's `outcome`; "" (no link) when the task left none."""
    if not isinstance(outcome, dict):
        return ""
    overview = f"{base_path.rstrip('/')}{URL_PREFIX}/"
    if outcome.get("model") and outcome.get("version"):
        return f"{overview}versions/{quote(outcome['model'])}/{quote(outcome['version'])}"
    return overview


class PromotedVersionLink(BaseOperatorLink):
    """Registered globally by the plugin (the promote task is a plain @task), shown only on `promote`."""

    name = "Model Registry"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if ti_key.task_id != PROMOTE_TASK_ID:
            return ""
        return registry_link(xcom_return_value(ti_key), _api_base_path())


def xcom_return_value(ti_key: Any) -> Any:
    """A task instance's XCom return value (any object with run_id, dag_id, task_id and map_index),
    read the way Airflow's own XCom links read theirs."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(
            XComModel.get_many(
                key="return_value",
                run_id=ti_key.run_id,
                dag_ids=ti_key.dag_id,
                task_ids=ti_key.task_id,
                map_indexes=ti_key.map_index,
            ).with_only_columns(XComModel.value)
        ).first()
    if row is None:
        return None
    try:
        return json.loads(row.value) if isinstance(row.value, str | bytes) else row.value
    except ValueError:
        return None


def _api_base_path() -> str:
    """The api-server's path prefix (`[api] base_url`), for deployments below a sub-path."""
    from airflow.configuration import conf

    return urlparse(conf.get("api", "base_url", fallback="") or "").path
