"""Airflow plugin: the Model Registry page in the api-server, its navigation entry, and the
"Model Registry" extra link on the `promote` task. The logic lives in `mnist_pipeline`."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from mnist_pipeline.web.app import URL_PREFIX, create_app
from mnist_pipeline.web.link import PromotedVersionLink

__all__ = ["ModelRegistryPlugin"]


class ModelRegistryPlugin(AirflowPlugin):
    name = "mnist_model_registry"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": create_app(), "url_prefix": URL_PREFIX, "name": "Model Registry"}
    ]
    external_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "Model Registry",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            # Set: shown inside the Airflow UI (an iframe at /plugin/model-registry), not in a new tab.
            "url_route": "model-registry",
        }
    ]
    global_operator_extra_links: ClassVar[list[Any]] = [PromotedVersionLink()]
