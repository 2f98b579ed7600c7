"""Where the registry page lives, in the api-server and in the Airflow UI: plain names, importable
without FastAPI or Airflow (`make airflow` prints the page's address before either is needed)."""

from __future__ import annotations

__all__ = ["LINK_NAME", "NAV_ROUTE", "RUN_TAB_HREF", "RUN_TAB_ROUTE", "URL_PREFIX"]

URL_PREFIX = "/model-registry"  # where the plugin mounts the page in the api-server
LINK_NAME = "Model Registry"  # the navigation entry, the run tab and the extra link: one name
# Airflow shows a navigation view at /plugin/<route> followed by the framed page's own path, so the
# overview's address reads /plugin/mnist-pipeline/model-registry/ (and deep links work).
NAV_ROUTE = "mnist-pipeline"
RUN_TAB_ROUTE = "model-registry"  # a run's tab: /dags/<dag>/runs/<run>/plugin/model-registry
# The page the run tab frames; Airflow fills in {DAG_ID} and {RUN_ID}, URL-encoded.
RUN_TAB_HREF = f"{URL_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}"
