"""MNIST as validated numpy arrays: parse the Keras `.npz` layout or LeCun's IDX files, check them.

Every defect raises `DataError` naming the source and what is wrong, before anything is written.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import zipfile
from dataclasses import dataclass, field, replace

import numpy as np

from mnist_pipeline.data.sources import read_source_bytes
from mnist_pipeline.errors import DataError
from mnist_pipeline.hashing import sha256_hex

__all__ = [
    "IDX_FILES",
    "MnistData",
    "check_images",
    "check_labels",
    "load_mnist",
    "parse_idx",
    "parse_npz",
    "read_mnist",
    "split_validation",
    "validate_mnist",
]

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
SPLIT_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
NEW_DATA_ARRAYS = ("x_new_test", "y_new_test")
# LeCun's file names, in the order of SPLIT_ARRAYS.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32, 0x0D: np.float32}


def _no_images() -> np.ndarray:
    return np.zeros((0, *IMAGE_SHAPE), dtype=np.uint8)


def _no_labels() -> np.ndarray:
    return np.zeros((0,), dtype=np.uint8)


@dataclass(frozen=True)
class MnistData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    # A held-out slice of newly landed labelled data: reported apart, never mixed into the fixed
    # 10k test set, so champions stay comparable across runs.
    x_new_test: np.ndarray = field(default_factory=_no_images)
    y_new_test: np.ndarray = field(default_factory=_no_labels)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to store; the new-data slice only when there is one (base hashes stay put)."""
        names = SPLIT_ARRAYS + (NEW_DATA_ARRAYS if len(self.y_new_test) else ())
        return {name: getattr(self, name) for name in names}

    def content_hash(self) -> str:
        """sha256 over every array's name, dtype, shape and bytes: equal data, equal hash."""
        return _hash_arrays(self.arrays())

    def test_hash(self) -> str:
        """The hash of the test split alone: models measured on equal test hashes are comparable."""
        return _hash_arrays({"x_test": self.x_test, "y_test": self.y_test})

    def new_data_hash(self) -> str | None:
        """The hash of the held-out new-data slice; None while no new data has landed."""
        if not len(self.y_new_test):
            return None
        return _hash_arrays({"x_new_test": self.x_new_test, "y_new_test": self.y_new_test})

    def head(self, max_train_images: int) -> MnistData:
        """Keep the first `max_train_images` training images (0 keeps all); the test set stays whole."""
        if not max_train_images or max_train_images >= len(self.y_train):
            return self
        return replace(self, x_train=self.x_train[:max_train_images], y_train=self.y_train[:max_train_images])


def _hash_arrays(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name, array in arrays.items():
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def load_mnist(source: str, keras_home: str = "") -> MnistData:
    """Read and validate MNIST from a `.npz` file or a folder/prefix of the four IDX files;
    `keras_home` is where the canonical URL is cached (`sources.read_source_bytes`)."""
    return read_mnist(source, keras_home)[0]


def read_mnist(source: str, keras_home: str = "") -> tuple[MnistData, str | None]:
    """`load_mnist` plus the sha256 of the `.npz` file as read (None for an IDX folder)."""
    if source.split("#", 1)[0].endswith(".npz"):
        raw = read_source_bytes(source, keras_home)
        return validate_mnist(parse_npz(raw, source), source), sha256_hex(raw)
    return validate_mnist(_load_idx_folder(source), source), None


def parse_npz(raw: bytes, source: str) -> MnistData:
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            missing = [name for name in SPLIT_ARRAYS if name not in npz.files]
            if missing:
                raise DataError(f"data source {source!r}: npz lacks arrays {missing}")
            extra = {name: npz[name] for name in NEW_DATA_ARRAYS if name in npz.files}
            return MnistData(*(npz[name] for name in SPLIT_ARRAYS), **extra)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"data source {source!r}: not a readable .npz file ({exc})") from exc


def parse_idx(raw: bytes, source: str) -> np.ndarray:
    """One IDX file (gzip-compressed or raw) as an array of the dtype and shape its header says."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"data source {source!r}: corrupt gzip data ({exc})") from exc
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise DataError(f"data source {source!r}: not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[raw[2]]).newbyteorder(">")
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"data source {source!r}: IDX header truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header_size != expected:
        raise DataError(
            f"data source {source!r}: IDX body has {len(raw) - header_size} bytes, "
            f"its header {shape} needs {expected}"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _load_idx_folder(source: str) -> MnistData:
    base = source.rstrip("/")
    arrays = []
    for name in IDX_FILES:
        last_error: DataError | None = None
        for candidate in (f"{base}/{name}.gz", f"{base}/{name}"):
            try:
                arrays.append(parse_idx(read_source_bytes(candidate), candidate))
                break
            except DataError as exc:
                if "no such file" not in str(exc) and "does not exist" not in str(exc):
                    raise
                last_error = exc
        else:
            raise DataError(
                f"data source {source!r}: neither an .npz file nor a folder with {name}(.gz)"
            ) from last_error
    return MnistData(*arrays)


def validate_mnist(data: MnistData, source: str) -> MnistData:
    """Check shapes, dtypes, label range and counts; return the data with uint8 labels."""
    for split in ("train", "test"):
        check_images(getattr(data, f"x_{split}"), f"x_{split}", source)
        check_labels(getattr(data, f"y_{split}"), f"y_{split}", source)
        images, labels = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if len(images) != len(labels):
            raise DataError(f"data source {source!r}: {len(images)} {split} images but {len(labels)} labels")
    return replace(data, y_train=data.y_train.astype(np.uint8), y_test=data.y_test.astype(np.uint8))


def check_images(images: np.ndarray, name: str, source: str) -> None:
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"data source {source!r}: {name} has shape {images.shape}, expected (N, 28, 28)")
    _refuse_nan(images, name, source)
    if images.dtype != np.uint8:
        raise DataError(f"data source {source!r}: {name} has dtype {images.dtype}, expected uint8")
    if len(images) == 0:
        raise DataError(f"data source {source!r}: {name} is empty")


def check_labels(labels: np.ndarray, name: str, source: str) -> None:
    if labels.ndim != 1:
        raise DataError(f"data source {source!r}: {name} has shape {labels.shape}, expected (N,)")
    _refuse_nan(labels, name, source)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"data source {source!r}: {name} has dtype {labels.dtype}, expected integers")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
        raise DataError(
            f"data source {source!r}: {name} holds label {int(bad[0])}; labels must be 0-9"
            f" ({len(bad)} out of range)"
        )


def _refuse_nan(array: np.ndarray, name: str, source: str) -> None:
    # Named apart from the dtype check: "NaN" tells the sender what broke, "float32" does not.
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        count = int(np.isnan(array).sum())
        raise DataError(f"data source {source!r}: {name} holds NaN values ({count} of {array.size})")


def split_validation(
    images: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A seeded, deterministic (train, validation) split carved from the training set."""
    order = np.random.default_rng(seed).permutation(len(labels))
    n_val = max(1, round(len(labels) * fraction))
    val, train = order[:n_val], order[n_val:]
    return (images[train], labels[train]), (images[val], labels[val])
