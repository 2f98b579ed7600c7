"""Reading the registry for a request: one client per registry, blocking calls off the event loop.

A registry that cannot be read in time (a storage call that outlives `MNIST_REGISTRY_PAGE_TIMEOUT`
seconds), or whose client library fails in a way nobody anticipated, becomes a
`RegistryUnavailableError` naming the reason; the traceback goes to the api-server's log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from fastapi import Request

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.errors import MnistPipelineError
from mnist_pipeline.registry.client import Registry

__all__ = ["RegistryUnavailableError", "off_the_loop", "open_registry", "settings_of"]

log = logging.getLogger(__name__)
_Result = TypeVar("_Result")
_OPENED: dict[tuple[str, str, float, float], Registry] = {}
_OPENING = threading.Lock()
_REGISTRIES_KEPT = 16


class RegistryUnavailableError(MnistPipelineError):
    """The registry could not be read in time: the page answers 503 with this message."""


def open_registry(settings: PipelineSettings) -> Registry:
    """The registry `settings` name; its client is opened once (per registry and the settings that
    reach it), as opening a GCS client costs more than the one probe a cached page makes."""
    key = (
        settings.registry_uri,
        settings.storage_emulator_host,
        settings.storage_retry_deadline,
        settings.stale_upload_seconds,
    )
    with _OPENING:
        if key not in _OPENED:
            if len(_OPENED) >= _REGISTRIES_KEPT:
                _OPENED.clear()
            _OPENED[key] = Registry.from_settings(settings)
        return _OPENED[key]


def settings_of(request: Request) -> PipelineSettings:
    """The settings the app was created with."""
    return request.app.state.settings


async def off_the_loop(settings: PipelineSettings, work: Callable[[], _Result]) -> _Result:
    """Run blocking storage calls in a thread, abandoned (not awaited) once the page timeout passes."""
    import anyio

    seconds = settings.registry_page_timeout
    try:
        with anyio.fail_after(seconds):
            return await anyio.to_thread.run_sync(_explained(work), abandon_on_cancel=True)
    except TimeoutError:
        raise RegistryUnavailableError(f"the model registry did not answer within {seconds:g} s") from None


def _explained(work: Callable[[], _Result]) -> Callable[[], _Result]:
    """`work`, with a failure nobody anticipated (a client library's own error) turned into a
    `RegistryUnavailableError` that names it; its traceback goes to the log, not to the page."""

    def run() -> _Result:
        try:
            return work()
        except MnistPipelineError:
            raise
        except Exception as exc:
            log.exception("model registry page: reading the registry failed")
            raise RegistryUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    return run
