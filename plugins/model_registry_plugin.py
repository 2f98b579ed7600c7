"""Airflow plugin: the Model Registry page in the api-server, shown inside the Airflow UI from the
navigation (Browse) and as a tab of every DAG run, and the "Model Registry" extra link on the
`promote` task. The logic lives in `mnist_pipeline`.

The page's app is created as the plugin loads, and reads the settings then, once: a bad value
fails the plugin's import, naming the variable (Airflow logs it and leaves the page out).
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from mnist_pipeline.web.app import URL_PREFIX, create_app
from mnist_pipeline.web.link import LINK_NAME, NAV_ROUTE, RUN_TAB_HREF, RUN_TAB_ROUTE, PromotedVersionLink

__all__ = ["ModelRegistryPlugin"]


class ModelRegistryPlugin(AirflowPlugin):
    name = "mnist_model_registry"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": create_app(), "url_prefix": URL_PREFIX, "name": LINK_NAME}
    ]
    # A url_route makes the Airflow UI frame the page in place instead of opening a new tab.
    external_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": LINK_NAME,
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": NAV_ROUTE,
        },
        {"name": LINK_NAME, "href": RUN_TAB_HREF, "destination": "dag_run", "url_route": RUN_TAB_ROUTE},
    ]
    global_operator_extra_links: ClassVar[list[Any]] = [PromotedVersionLink()]
