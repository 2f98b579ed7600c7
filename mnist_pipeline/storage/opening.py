"""Opening the storage a root URI names: a local folder or a GCS bucket."""

from __future__ import annotations

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.errors import StorageError
from mnist_pipeline.storage.base import Storage
from mnist_pipeline.storage.gcs import GcsStorage
from mnist_pipeline.storage.local import LocalStorage

__all__ = ["open_storage"]


def open_storage(uri: str, settings: PipelineSettings | None = None) -> Storage:
    """A `GcsStorage` for `gs://` URIs, a `LocalStorage` for paths (`file://` accepted). A bucket
    is reached as `settings` say (retry deadline, emulator); without them, by the defaults."""
    if uri.startswith("gs://"):
        if settings is None:
            return GcsStorage(uri)
        return GcsStorage(uri, settings.storage_retry_deadline, settings.storage_emulator_host)
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise StorageError(f"storage URI {uri!r}: only local paths and gs:// URIs are supported")
    return LocalStorage(uri)
