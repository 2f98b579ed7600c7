"""One small storage interface over a local folder or a GCS bucket.

Everything the pipeline persists (dataset snapshots, trained models, the registry) goes through a
`Storage`, addressed by a root URI: a filesystem path or `gs://bucket/prefix` (`open_storage`).

- `base`: the `Storage` interface, a folder's `Entry`, and `compare_and_swap`, the one
  read-decide-write loop every shared object (the champion pointer, the incoming ledger) is
  updated through.
- `local`: `LocalStorage`, a folder on a file system.
- `gcs`: `GcsStorage`, a bucket, every call retried through transient failures until the
  settings' `storage_retry_deadline`.
- `opening`: `open_storage`, the backend a URI names.

Folders that anyone may write into (`incoming/`) are read through `entries`, `read_entry`,
`move_entry` and `delete_entry`, which never follow a link: an entry is examined as it is (lstat),
and a symbolic link, a folder, a device or a FIFO is reported as such, moved as itself (a rename)
and never opened, so its target is never read, moved or deleted.
"""

from __future__ import annotations

from mnist_pipeline.storage.base import CAS_ATTEMPTS, ENTRY_KINDS, Entry, Storage, compare_and_swap
from mnist_pipeline.storage.gcs import GcsStorage, split_gs_uri
from mnist_pipeline.storage.local import LocalStorage
from mnist_pipeline.storage.opening import open_storage

__all__ = [
    "CAS_ATTEMPTS",
    "ENTRY_KINDS",
    "Entry",
    "GcsStorage",
    "LocalStorage",
    "Storage",
    "compare_and_swap",
    "open_storage",
    "split_gs_uri",
]
