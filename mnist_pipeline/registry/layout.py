"""Where the registry keeps its objects, under the registry root.

mnist/models/<model>/<version>/...    a published version; committed once metadata.json exists
mnist/champion.json                   the champion pointer
mnist/history/<time>-<id>.json        one object per history event, never rewritten
mnist/index/...                       indexes derived from the objects above (`index`)
"""

from __future__ import annotations

__all__ = ["CHAMPION_KEY", "HISTORY_PREFIX", "INDEX_PREFIX", "METADATA_FILE", "MODELS_PREFIX", "ROOT"]

ROOT = "mnist"
CHAMPION_KEY = f"{ROOT}/champion.json"
MODELS_PREFIX = f"{ROOT}/models/"
METADATA_FILE = "metadata.json"
HISTORY_PREFIX = f"{ROOT}/history/"
INDEX_PREFIX = f"{ROOT}/index/"
