"""Reading arrays out of an untrusted `.npz` archive, bounded before anything is decompressed.

An archive can lie: a member's header may declare far more data than the file holds, or than any
shard should (a zip bomb, a forged `.npy` shape). Sizes are checked from the zip directory and
each `.npy` header first; only then is a member decompressed, and only as many bytes as it
declares. Every defect raises `DataError` naming the archive.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from mnist_pipeline.errors import DataError

__all__ = ["NpzLimits", "read_npz_arrays"]

# What a broken archive raises from zipfile, zlib and numpy's header parser.
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
)


@dataclass(frozen=True)
class NpzLimits:
    max_bytes: int  # the archive, and the sum of its members uncompressed
    max_rows: int  # the first dimension of every array (images in a shard)


def read_npz_arrays(raw: bytes, names: tuple[str, ...], uri: str, limits: NpzLimits) -> dict[str, np.ndarray]:
    """The arrays `names` from the archive `raw`, each checked against `limits` before it is read."""
    if len(raw) > limits.max_bytes:
        raise DataError(f"data source {uri!r}: {len(raw)} bytes, more than the limit of {limits.max_bytes}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        members = {info.filename: info for info in archive.infolist()}
    except _ARCHIVE_ERRORS as exc:
        raise DataError(
            f"data source {uri!r}: not a readable .npz archive ({type(exc).__name__}: {exc})"
        ) from None
    missing = sorted(name for name in names if f"{name}.npy" not in members)
    if missing:
        raise DataError(f"data source {uri!r}: shard lacks arrays {missing}")
    declared = sum(members[f"{name}.npy"].file_size for name in names)
    if declared > limits.max_bytes:
        raise DataError(
            f"data source {uri!r}: its arrays declare {declared} bytes uncompressed, more than the limit of"
            f" {limits.max_bytes}"
        )
    try:
        return {name: _read_member(archive, members[f"{name}.npy"], uri, limits) for name in names}
    except _ARCHIVE_ERRORS as exc:
        raise DataError(
            f"data source {uri!r}: not a readable .npz archive ({type(exc).__name__}: {exc})"
        ) from None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, uri: str, limits: NpzLimits) -> np.ndarray:
    with archive.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise DataError(
                f"data source {uri!r}: {info.filename} has .npy format {version}, expected 1.0 or 2.0"
            )
        reader = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = reader(stream)
        _check_header(info, shape, dtype, stream.tell(), uri, limits)
        size = math.prod(shape) * dtype.itemsize
        data = stream.read(size)
    if len(data) != size:
        raise DataError(
            f"data source {uri!r}: {info.filename} holds {len(data)} bytes of data, its header says {size}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")


def _check_header(
    info: zipfile.ZipInfo,
    shape: tuple[int, ...],
    dtype: np.dtype,
    header_end: int,
    uri: str,
    limits: NpzLimits,
) -> None:
    """Refuse objects (pickles), too many rows, or more data than the member holds: before reading it."""
    if dtype.hasobject:
        raise DataError(
            f"data source {uri!r}: {info.filename} holds Python objects; only numeric arrays are read"
        )
    if shape and shape[0] > limits.max_rows:
        raise DataError(
            f"data source {uri!r}: {info.filename} declares {shape[0]} rows,"
            f" more than the limit of {limits.max_rows}"
        )
    declared = math.prod(shape) * dtype.itemsize
    if declared != info.file_size - header_end:
        raise DataError(
            f"data source {uri!r}: {info.filename}'s header declares {declared} bytes, the member holds"
            f" {info.file_size - header_end}"
        )
