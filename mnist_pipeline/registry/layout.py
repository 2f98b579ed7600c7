"""Where the registry keeps its objects, under the registry root.

mnist/_log/<n>.json                      commit n: the only truth, written once (`log`)
mnist/_log/checkpoints/<n>.json          the state as of commit n, every 100 commits
mnist/models/<model>/<version>/...       a version's files; published once a commit says so
mnist/index/state.json                   view: the state at the newest commit (`views`)
mnist/index/history/<YYYYMM>.json        view: that month's history events
mnist/champion.json                      view: the champion pointer, for readers outside the pipeline
mnist/aliases/<alias>.json               view: every other alias's pointer, or the tombstone of a clear
mnist/quarantine/<time>/...              unreadable objects set aside by `registry repair`, with why

Before the log, the registry kept its history in `mnist/history/` and `mnist/alias-history/`
(`LEGACY_*`); the first writer or reader of such a registry migrates it into commit 1.
"""

from __future__ import annotations

__all__ = [
    "ALIASES_PREFIX",
    "CHAMPION_KEY",
    "CHECKPOINTS_PREFIX",
    "INDEX_PREFIX",
    "LEGACY_ALIAS_HISTORY_PREFIX",
    "LEGACY_HISTORY_PREFIX",
    "LOG_PREFIX",
    "METADATA_FILE",
    "MODELS_PREFIX",
    "QUARANTINE_PREFIX",
    "ROOT",
    "SHARDS_PREFIX",
    "STATE_KEY",
]

ROOT = "mnist"
CHAMPION_KEY = f"{ROOT}/champion.json"
MODELS_PREFIX = f"{ROOT}/models/"
METADATA_FILE = "metadata.json"
LOG_PREFIX = f"{ROOT}/_log/"
CHECKPOINTS_PREFIX = f"{LOG_PREFIX}checkpoints/"
INDEX_PREFIX = f"{ROOT}/index/"
STATE_KEY = f"{INDEX_PREFIX}state.json"
SHARDS_PREFIX = f"{INDEX_PREFIX}history/"
ALIASES_PREFIX = f"{ROOT}/aliases/"
QUARANTINE_PREFIX = f"{ROOT}/quarantine/"
LEGACY_HISTORY_PREFIX = f"{ROOT}/history/"
LEGACY_ALIAS_HISTORY_PREFIX = f"{ROOT}/alias-history/"
