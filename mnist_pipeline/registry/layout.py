"""Where the registry keeps its objects, under the registry root.

mnist/models/<model>/<version>/...               a published version; committed once metadata.json exists
mnist/champion.json                              the champion pointer: the alias `champion`
mnist/history/<time>-<id>.json                   one object per history event, never rewritten
mnist/aliases/<alias>.json                       every other alias's pointer, or the tombstone a clear left
mnist/alias-history/<alias>/<time>-<id>.json     one object per move of that alias, never rewritten
mnist/index/...                                  indexes derived from the objects above (`index`)

The aliases' history lives beside their pointers, not under them: listing the aliases then lists
one object per alias, however often they moved.
"""

from __future__ import annotations

__all__ = [
    "ALIASES_PREFIX",
    "ALIAS_HISTORY_PREFIX",
    "CHAMPION_KEY",
    "HISTORY_PREFIX",
    "INDEX_PREFIX",
    "METADATA_FILE",
    "MODELS_PREFIX",
    "ROOT",
]

ROOT = "mnist"
CHAMPION_KEY = f"{ROOT}/champion.json"
MODELS_PREFIX = f"{ROOT}/models/"
METADATA_FILE = "metadata.json"
HISTORY_PREFIX = f"{ROOT}/history/"
INDEX_PREFIX = f"{ROOT}/index/"
ALIASES_PREFIX = f"{ROOT}/aliases/"
ALIAS_HISTORY_PREFIX = f"{ROOT}/alias-history/"
