"""The registry page's app as Airflow mounts it from the plugin, pointed at a test's settings.

The app reads its settings once, when the plugin loads (once per process, as in the api-server);
a test that sets `MNIST_*` variables afterwards hands them to the app here, as if the api-server
had been started with them.
"""

from __future__ import annotations

from typing import Any

import pytest

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.web.app import URL_PREFIX

__all__ = ["page_app", "serve_settings"]


def page_app() -> Any:
    """The plugin's FastAPI app (loading the plugins if nothing has yet)."""
    from airflow import plugins_manager

    apps, _ = plugins_manager.get_fastapi_plugins()
    (app,) = [entry["app"] for entry in apps if entry.get("url_prefix") == URL_PREFIX]
    return app


def serve_settings(
    monkeypatch: pytest.MonkeyPatch, settings: PipelineSettings | None = None
) -> PipelineSettings:
    """Make the page read `settings` (by default the environment's, read now) until the test ends."""
    from starlette.datastructures import State

    settings = settings or PipelineSettings.from_env()
    # A new State, not an attribute set on the old one: monkeypatch restores the app's own.
    monkeypatch.setattr(page_app(), "state", State({"settings": settings}))
    return settings
