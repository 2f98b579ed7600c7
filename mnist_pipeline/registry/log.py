"""The registry's log: numbered commits, each written once, create-if-absent, the only truth.

    mnist/_log/00000000000000000001.json               commit 1, 2, ... (never rewritten)
    mnist/_log/checkpoints/00000000000000000100.json   the state as of commit 100, 200, ...

As in Delta Lake's `_delta_log`: a writer decides on the state as of commit N, then creates
commit N+1 only if no one has (GCS `if_generation_match=0`, a local hard link). The write that
succeeds is the change; a writer that loses the race reads what won, decides again on it (cheap:
judging happened before) and tries N+2. Numbers have no gaps, so the head is found by asking for
the next number. A commit that cannot be read is folded as nothing and reported, never guessed.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from mnist_pipeline.errors import MnistPipelineError, RegistryError, StorageError
from mnist_pipeline.registry.layout import CHECKPOINTS_PREFIX, LOG_PREFIX
from mnist_pipeline.registry.records import Commit
from mnist_pipeline.registry.state import RegistryState, next_time
from mnist_pipeline.storage import Storage

__all__ = [
    "CHECKPOINT_INTERVAL",
    "COMMIT_ATTEMPTS",
    "UnreadableObject",
    "advance",
    "append",
    "checkpoint_key",
    "commit_key",
    "commit_number",
    "encode_commit",
    "fold_commit",
    "read_commit",
    "read_commits",
    "replay",
]

log = logging.getLogger(__name__)
CHECKPOINT_INTERVAL = 100  # a checkpoint every this many commits bounds a replay without the state view
COMMIT_ATTEMPTS = 200  # lost races before giving up: each loss means another writer's commit landed
_BACKOFF_CAP = 0.5  # seconds; jittered, so that racing writers spread out
_WORKERS = 8  # commits read at once in a replay: a replay is latency-bound

Draft = Callable[[RegistryState], Commit | None]


class UnreadableObject(RegistryError):
    """A registry object that exists but cannot be read as what it should be."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"{key}: {why}")
        self.key, self.why = key, why


def commit_key(number: int) -> str:
    return f"{LOG_PREFIX}{number:020d}.json"


def checkpoint_key(number: int) -> str:
    return f"{CHECKPOINTS_PREFIX}{number:020d}.json"


def commit_number(key: str, prefix: str = LOG_PREFIX) -> int | None:
    """The number a log key names; None for any other key."""
    name = key[len(prefix) :] if key.startswith(prefix) else ""
    stem = name.removesuffix(".json")
    return int(stem) if len(stem) == 20 and stem.isdigit() and name.endswith(".json") else None


def encode_commit(commit: Commit) -> bytes:
    return json.dumps({"format": 1, **commit.to_dict()}, sort_keys=True, separators=(",", ":")).encode()


def decode_commit(data: bytes, number: int) -> Commit:
    key = commit_key(number)
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise UnreadableObject(key, f"not valid JSON ({exc})") from None
    try:
        commit = Commit.from_dict(payload, key)
    except MnistPipelineError as exc:
        raise UnreadableObject(key, str(exc)) from None
    if commit.number != number:
        raise UnreadableObject(key, f"holds commit number {commit.number}")
    return commit


def read_commit(storage: Storage, number: int) -> Commit | None:
    """Commit `number`; None when it does not exist (yet); `UnreadableObject` when it is corrupt."""
    data = storage.read_versioned(commit_key(number))[0]
    return None if data is None else decode_commit(data, number)


def advance(storage: Storage, state: RegistryState) -> tuple[RegistryState, list[Commit]]:
    """`state` brought to the head of the log, and the commits that took it there: one read when
    it is at the head already."""
    if storage.read_versioned(commit_key(state.number + 1))[0] is None:
        return state, []
    state = state.copy()
    applied: list[Commit] = []
    while True:
        try:
            commit = read_commit(storage, state.number + 1)
        except UnreadableObject as exc:
            log.warning("registry log: %s; folding it as nothing", exc)
            state.skip(state.number + 1, str(exc))
            continue
        if commit is None:
            return state, applied
        state.apply(commit)
        applied.append(commit)


def replay(storage: Storage, start: RegistryState | None = None) -> RegistryState:
    """The state at the head of the log, from `start` (None: the newest readable checkpoint, else
    commit 1): one listing, then the commits after it, read in parallel."""
    keys = storage.list_keys(LOG_PREFIX)
    numbers = sorted(n for n in (commit_number(key) for key in keys) if n is not None)
    state = start if start is not None else _newest_checkpoint(storage, keys) or RegistryState()
    state = state.copy()
    wanted = [n for n in numbers if n > state.number]
    for number, data in zip(wanted, read_commits(storage, wanted), strict=True):
        while number > state.number + 1:
            state.skip(state.number + 1, f"{commit_key(state.number + 1)}: missing from the log")
        fold_commit(state, number, data)
    return advance(storage, state)[0]  # commits that landed after the listing


def fold_commit(
    state: RegistryState, number: int, data: bytes | None, absent: str = "vanished while the log was read"
) -> Commit | UnreadableObject:
    """Fold commit `number`, stored as `data`, into `state`: the commit, or why it could not be
    read (`absent` when there is no data), in which case it is folded as nothing."""
    try:
        if data is None:
            raise UnreadableObject(commit_key(number), absent)
        commit = decode_commit(data, number)
    except UnreadableObject as exc:
        log.warning("registry log: %s; folding it as nothing", exc)
        state.skip(number, str(exc))
        return exc
    state.apply(commit)
    return commit


def _newest_checkpoint(storage: Storage, keys: Iterable[str]) -> RegistryState | None:
    numbers = sorted(
        (n for n in (commit_number(key, CHECKPOINTS_PREFIX) for key in keys) if n is not None), reverse=True
    )
    for number in numbers:
        key = checkpoint_key(number)
        try:
            state = RegistryState.from_json(storage.read_bytes(key), key)
        except (RegistryError, StorageError) as exc:
            log.warning("registry checkpoint %s is unreadable (%s): using an older one", key, exc)
            continue
        if state.number == number:
            return state
        log.warning(
            "registry checkpoint %s holds the state of commit %d: using an older one", key, state.number
        )
    return None


def read_commits(storage: Storage, numbers: list[int]) -> list[bytes | None]:
    """The stored bytes of each commit of `numbers` (None where absent), read in parallel."""
    keys = [commit_key(number) for number in numbers]

    def read(key: str) -> bytes | None:
        return storage.read_versioned(key)[0]

    if len(keys) <= 1:
        return [read(key) for key in keys]
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        return list(pool.map(read, keys))


def append(storage: Storage, state: RegistryState, draft: Draft) -> tuple[Commit | None, RegistryState]:
    """Append the commit `draft(state)` makes as the next number; a lost race advances the state
    and asks `draft` again (it may refuse: `ConflictError`, or find nothing left to do: None).
    Returns the commit (None: nothing to do) and the state including it."""
    for attempt in range(COMMIT_ATTEMPTS):
        made = draft(state)
        if made is None:
            return None, state
        commit = _numbered(made, state)
        if storage.create_if_absent(commit_key(commit.number), encode_commit(commit)):
            after = state.copy()
            after.apply(commit)
            return commit, after
        time.sleep(random.uniform(0, min(_BACKOFF_CAP, 0.005 * 2**attempt)))
        state = advance(storage, state)[0]
    raise StorageError(
        f"{storage.uri(LOG_PREFIX)}: lost the race for the next commit {COMMIT_ATTEMPTS} times; gave up"
    )


def _numbered(commit: Commit, state: RegistryState) -> Commit:
    from dataclasses import replace

    at = next_time(state.last_time)
    event = replace(commit.event, time=at) if commit.event is not None else None
    return replace(commit, number=state.number + 1, time=at, event=event)
