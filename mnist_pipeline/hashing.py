"""Content hashes, and the one way to read back an object whose sha256 was recorded when written."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from mnist_pipeline.errors import MnistPipelineError, RegistryError

if TYPE_CHECKING:
    from mnist_pipeline.storage import Storage

__all__ = ["read_verified", "sha256_hex"]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_verified(
    storage: Storage,
    key: str,
    expected_sha256: str,
    error: type[MnistPipelineError] = RegistryError,
) -> bytes:
    """The object's bytes, refused with `error` unless they match the sha256 recorded for them."""
    data = storage.read_bytes(key)
    if sha256_hex(data) != expected_sha256:
        raise error(f"{storage.uri(key)} does not match its recorded sha256; refusing it")
    return data
