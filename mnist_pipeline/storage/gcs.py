"""The storage over a GCS bucket (and prefix), through google-cloud-storage.

The client is pointed at an emulator when the settings name one (`STORAGE_EMULATOR_HOST`). Every
call retries transient failures (connection errors, 429/5xx) with exponential backoff until a
deadline, through google-cloud-storage's own retry policies: the settings'
`storage_retry_deadline` (`MNIST_STORAGE_RETRY_DEADLINE`, default 120 s), fixed when the storage is
opened. A storage outage shorter than that is survived; a longer one raises `StorageError` naming
the object.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager, suppress
from typing import Any

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.errors import StorageError
from mnist_pipeline.storage.base import Entry, Storage

__all__ = ["GcsStorage", "split_gs_uri"]

_SESSION_RESTARTS = 2  # a large upload started over after the server forgot its session


class GcsStorage(Storage):
    """A bucket (and prefix); every call retries transient failures for `retry_deadline` seconds.
    `emulator_host`: a GCS emulator's address, reached without credentials; empty: Google."""

    def __init__(
        self,
        uri: str,
        retry_deadline: float = PipelineSettings.storage_retry_deadline,
        emulator_host: str = "",
    ) -> None:
        self.bucket_name, self.prefix = split_gs_uri(uri)
        self.root_uri = uri.rstrip("/")
        self.retry_deadline = retry_deadline
        self.client = _gcs_client(emulator_host)
        self.bucket = self.client.bucket(self.bucket_name)

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def read_bytes(self, key: str) -> bytes:
        from google.api_core import exceptions

        with self._reaching(key):
            try:
                return self.bucket.blob(self._name(key)).download_as_bytes(retry=self._retry())
            except exceptions.NotFound:
                raise StorageError(f"{self.uri(key)} does not exist") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        from google.api_core import exceptions

        # Unconditional writes are retried too: every key the pipeline writes this way gets the
        # same bytes on a repeat (content-named versions, per-run artifacts), so a repeat is harmless.
        with self._reaching(key):
            for _ in range(_SESSION_RESTARTS + 1):
                try:
                    self.bucket.blob(self._name(key)).upload_from_string(data, retry=self._retry())
                    return
                except exceptions.NotFound:
                    # Over 8 MiB the client uploads in a resumable session, which a server restart
                    # forgets (404 on the session): start over while the bucket is there.
                    if not self.bucket.exists(retry=self._retry()):
                        raise StorageError(f"bucket gs://{self.bucket_name} does not exist") from None
            raise StorageError(f"{self.uri(key)}: the upload session was lost {_SESSION_RESTARTS + 1} times")

    def exists(self, key: str) -> bool:
        with self._reaching(key):
            return self.bucket.blob(self._name(key)).exists(retry=self._retry())

    def list_keys(self, prefix: str = "") -> list[str]:
        return sorted(self._list_blobs(prefix))

    def modified_times(self, prefix: str = "") -> dict[str, float]:
        return {key: blob.updated.timestamp() for key, blob in self._list_blobs(prefix).items()}

    def sizes(self, prefix: str = "") -> dict[str, int]:
        return {key: int(blob.size or 0) for key, blob in self._list_blobs(prefix).items()}

    def entries(self, prefix: str) -> list[Entry]:
        """Every object under `prefix` (a bucket has no links or devices); a name ending in `/`
        is a folder placeholder, as the console creates them."""
        blobs = self._list_blobs(prefix)
        return [
            Entry(
                key,
                "folder" if key.endswith("/") else "file",
                int(blob.size or 0),
                blob.updated.timestamp() if blob.updated else 0.0,
            )
            for key, blob in sorted(blobs.items())
            if key != prefix
        ]

    def delete_entry(self, key: str) -> None:
        from google.api_core import exceptions

        # This one object: `delete` removes everything under a prefix, which would take
        # `incoming/a.npz.bak` along with `incoming/a.npz`.
        with self._reaching(key), suppress(exceptions.NotFound):
            self.bucket.blob(self._name(key)).delete(retry=self._retry())

    def copy(self, source: str, target: str) -> None:
        from google.api_core import exceptions

        with self._reaching(source):
            try:  # the server copies: the bytes never pass through this process
                blob = self.bucket.blob(self._name(source))
                self.bucket.copy_blob(blob, self.bucket, self._name(target), retry=self._retry())
            except exceptions.NotFound:
                raise StorageError(f"{self.uri(source)} does not exist") from None

    def _list_blobs(self, prefix: str) -> dict[str, Any]:
        from google.api_core import exceptions

        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._reaching(prefix):
            try:
                blobs = self.client.list_blobs(
                    self.bucket_name, prefix=self._name(prefix), retry=self._retry()
                )
                return {blob.name[strip:]: blob for blob in blobs}
            except exceptions.NotFound:
                raise StorageError(f"bucket gs://{self.bucket_name} does not exist") from None

    def delete(self, key: str) -> None:
        from google.api_core import exceptions

        for name in self.list_keys(key):
            with self._reaching(name), suppress(exceptions.NotFound):  # gone already: a retried delete
                self.bucket.blob(self._name(name)).delete(retry=self._retry())

    def read_versioned(self, key: str) -> tuple[bytes | None, str]:
        from google.api_core import exceptions

        blob = self.bucket.blob(self._name(key))
        with self._reaching(key):
            try:
                # Fills blob.generation from the same response.
                data = blob.download_as_bytes(retry=self._retry())
            except exceptions.NotFound:
                return None, "0"
        return data, str(blob.generation)

    def write_if_generation(self, key: str, data: bytes, generation: str) -> bool:
        from google.api_core import exceptions

        blob = self.bucket.blob(self._name(key))
        with self._reaching(key):
            try:
                # Safe to retry only because the precondition travels with every attempt.
                blob.upload_from_string(
                    data, if_generation_match=int(generation), retry=self._conditional_retry()
                )
            except exceptions.PreconditionFailed:
                # A retried attempt fails its precondition when an earlier attempt did land (its
                # response lost in the outage): the object holding our bytes means we won.
                return self.read_versioned(key)[0] == data
        return True

    @contextmanager
    def _reaching(self, key: str) -> Generator[None]:
        """Turn an outage that outlived the retry deadline into a `StorageError` naming the object."""
        import requests
        from google.api_core import exceptions

        try:
            yield
        except exceptions.RetryError as exc:
            raise StorageError(
                f"{self.uri(key)}: storage unreachable, gave up after {self.retry_deadline:g} s of retries "
                f"({exc.cause})"
            ) from exc
        except (ConnectionError, requests.exceptions.ConnectionError) as exc:
            raise StorageError(f"{self.uri(key)}: storage unreachable ({exc})") from exc

    def _retry(self) -> Any:
        """google-cloud-storage's default policy (connection errors, 429 and 5xx, exponential
        backoff) with this storage's deadline."""
        return _retry_module().DEFAULT_RETRY.with_timeout(self.retry_deadline)

    def _conditional_retry(self) -> Any:
        """The same policy, applied only to requests that carry a generation precondition."""
        retry = _retry_module()
        return retry.ConditionalRetryPolicy(self._retry(), retry.is_generation_specified, ["query_params"])


def _retry_module() -> Any:
    """google-cloud-storage's retry policies; the library ships no type information."""
    from google.cloud.storage import retry  # pyright: ignore[reportMissingTypeStubs]

    return retry


def _gcs_client(emulator_host: str) -> Any:
    from google.cloud import storage as gcs  # pyright: ignore[reportMissingTypeStubs]  # untyped library

    if emulator_host:
        # With an emulator there are no credentials to find; anonymous access is what it expects.
        from google.auth.credentials import AnonymousCredentials

        return gcs.Client(
            project="mnist-pipeline",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": emulator_host},
        )
    return gcs.Client()


def split_gs_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/some/prefix` -> (`bucket`, `some/prefix`)."""
    if not uri.startswith("gs://"):
        raise StorageError(f"{uri!r} is not a gs:// URI")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} names no bucket")
    return bucket, prefix.strip("/")
