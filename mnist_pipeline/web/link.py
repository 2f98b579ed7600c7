"""The "Model Registry" extra link of the `promote` task, and the names the plugin shows everywhere.

Airflow-only (the api-server imports it through the plugin). The link opens the run's Model
Registry tab inside the Airflow UI (a same-origin link: Airflow opens it in place, not in a new
tab); that tab shows the version the run promoted, or, for a run that promoted nothing, its verdict.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlparse

from airflow.sdk import BaseOperatorLink

from mnist_pipeline.web.addresses import LINK_NAME, NAV_ROUTE, RUN_TAB_HREF, RUN_TAB_ROUTE

# The names are re-exported: the plugin and the tests import them from here, as before.
__all__ = [
    "LINK_NAME",
    "NAV_ROUTE",
    "PROMOTE_TASK_ID",
    "RUN_TAB_HREF",
    "RUN_TAB_ROUTE",
    "PromotedVersionLink",
    "registry_link",
    "xcom_return_value",
]

PROMOTE_TASK_ID = "promote"


def registry_link(dag_id: str, run_id: str, outcome: Any, base_path: str = "") -> str:
    """The Airflow UI address of the run's Model Registry tab; "" (no link) before `promote` decided."""
    if not isinstance(outcome, dict):
        return ""
    run = f"dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"
    return f"{base_path.rstrip('/')}/{run}/plugin/{RUN_TAB_ROUTE}"


class PromotedVersionLink(BaseOperatorLink):
    """Registered globally by the plugin (the promote task is a plain @task), shown only on `promote`."""

    # Airflow declares `name` as a property; its own links, like this one, set a class attribute.
    name = LINK_NAME  # pyright: ignore[reportAssignmentType]

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if ti_key.task_id != PROMOTE_TASK_ID:
            return ""
        return registry_link(ti_key.dag_id, ti_key.run_id, xcom_return_value(ti_key), _api_base_path())


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
