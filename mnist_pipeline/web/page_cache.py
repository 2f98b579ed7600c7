"""Rendered overview pages, kept per registry and per head of its log.

The log is the registry's only truth and a commit is never rewritten, so a page drawn from the
state as of commit N stays true until commit N+1 exists. A request then costs one probe for
that next commit (and one read of the incoming summary, which lives outside the registry),
instead of reading the state view and history shards and rendering a page of every version.
The same key is the page's ETag: a browser holding it gets 304 Not Modified.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.log import advance
from mnist_pipeline.registry.state import RegistryState

__all__ = ["PageCache", "etag_of"]

_PAGES_KEPT = 64  # pages (history cursors, mount paths, registries) kept at once


def etag_of(key: Hashable) -> str:
    """A strong ETag naming `key` (which holds the head commit): quoted, as HTTP wants it."""
    return '"' + hashlib.sha256(repr(key).encode()).hexdigest()[:32] + '"'


class PageCache:
    """The newest state seen of each registry, and the pages rendered from it."""

    def __init__(self, pages_kept: int = _PAGES_KEPT) -> None:
        self._states: dict[str, RegistryState] = {}
        self._pages: OrderedDict[Hashable, str] = OrderedDict()
        self._pages_kept = pages_kept
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()  # one render per missing page, not one per client

    def state(self, registry: Registry) -> RegistryState:
        """The registry's state at the head of its log: one probe when no commit landed since."""
        uri = registry.storage.root_uri
        with self._lock:
            known = self._states.get(uri)
        if known is not None and not advance(registry.storage, known)[1]:
            return known
        state = registry.state()  # also brings views that lag the log up to date
        with self._lock:
            self._states[uri] = state
        return state

    def page(self, key: Hashable, render: Callable[[], str]) -> str:
        """The page `key` names, rendered once while `key` is the newest."""
        with self._lock:
            if key in self._pages:
                self._pages.move_to_end(key)
                return self._pages[key]
        with self._render_lock:
            with self._lock:
                if key in self._pages:
                    return self._pages[key]
            html = render()
            with self._lock:
                self._pages[key] = html
                while len(self._pages) > self._pages_kept:
                    self._pages.popitem(last=False)
        return html
