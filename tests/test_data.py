"""Loading real MNIST from every supported source and format, and refusing every defect clearly."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline.data.mnist import IDX_FILES, MnistData, load_mnist, split_validation
from mnist_pipeline.data.sources import read_source_bytes
from mnist_pipeline.errors import DataError
from mnist_pipeline.hashing import sha256_hex
from mnist_pipeline.storage import open_storage
from tests.https_server import serve_https

# sha256 of the raw array bytes of real MNIST (../shared/data/README.md)
X_TRAIN_SHA256 = "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757"
Y_TEST_SHA256 = "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw, compresslevel=1) if compress else raw)


def write_idx_folder(folder: Path, data: MnistData, compress: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(IDX_FILES, data.arrays().values(), strict=True):
        write_idx(folder / (f"{name}.gz" if compress else name), array, compress)
    return folder


def write_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


def assert_is_real_mnist(data: MnistData) -> None:
    assert data.x_train.shape == (60000, 28, 28) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (10000, 28, 28)
    assert sha256_hex(data.x_train.tobytes()) == X_TRAIN_SHA256
    assert sha256_hex(data.y_test.astype(np.uint8).tobytes()) == Y_TEST_SHA256


def test_loads_the_keras_npz(mnist: MnistData) -> None:
    assert_is_real_mnist(mnist)


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_loads_lecun_idx_files(tmp_path: Path, mnist: MnistData, compress: bool) -> None:
    folder = write_idx_folder(tmp_path / "idx", mnist, compress)
    loaded = load_mnist(str(folder))
    assert_is_real_mnist(loaded)
    assert loaded.content_hash() == mnist.content_hash()


def test_loads_npz_from_a_gcs_uri(gcs_bucket: str, mnist_npz: Path, mnist: MnistData) -> None:
    open_storage(f"gs://{gcs_bucket}").write_bytes("raw/mnist.npz", mnist_npz.read_bytes())
    assert load_mnist(f"gs://{gcs_bucket}/raw/mnist.npz").content_hash() == mnist.content_hash()


def test_loads_idx_files_from_a_gcs_prefix(tmp_path: Path, gcs_bucket: str, mnist: MnistData) -> None:
    folder = write_idx_folder(tmp_path / "idx", mnist, compress=True)
    open_storage(f"gs://{gcs_bucket}").upload_dir(folder, "idx")
    assert load_mnist(f"gs://{gcs_bucket}/idx").content_hash() == mnist.content_hash()


def test_downloads_over_https_and_verifies_the_checksum(
    tmp_path: Path, mnist_npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = tmp_path / "www"
    served.mkdir()
    shutil.copy(mnist_npz, served / "mnist.npz")
    digest = sha256_hex(mnist_npz.read_bytes())
    with serve_https(served, tmp_path) as (base_url, ca_file):
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        assert_is_real_mnist(load_mnist(f"{base_url}/mnist.npz#sha256={digest}"))
        with pytest.raises(DataError, match="sha256 mismatch"):
            read_source_bytes(f"{base_url}/mnist.npz#sha256={'0' * 64}")


def test_refuses_a_download_without_a_checksum() -> None:
    with pytest.raises(DataError, match="downloads need a checksum"):
        read_source_bytes("https://example.invalid/mnist.npz")


def test_refuses_plain_http() -> None:
    with pytest.raises(DataError, match="only https://, gs:// and local paths"):
        read_source_bytes("http://example.invalid/mnist.npz")


def test_names_a_missing_file() -> None:
    with pytest.raises(DataError, match=r"'/nonexistent/mnist.npz': no such file"):
        load_mnist("/nonexistent/mnist.npz")


def test_refuses_a_truncated_npz(tmp_path: Path, mnist_npz: Path) -> None:
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(mnist_npz.read_bytes()[:100_000])
    with pytest.raises(DataError, match=r"truncated\.npz.*not a readable \.npz"):
        load_mnist(str(truncated))


def test_refuses_a_corrupt_gzip_idx_file(tmp_path: Path, mnist: MnistData) -> None:
    folder = write_idx_folder(tmp_path / "idx", mnist, compress=True)
    victim = folder / f"{IDX_FILES[1]}.gz"
    victim.write_bytes(victim.read_bytes()[:-40] + b"\x00" * 40)
    with pytest.raises(DataError, match=rf"{IDX_FILES[1]}\.gz.*corrupt gzip"):
        load_mnist(str(folder))


def test_refuses_an_idx_body_shorter_than_its_header(tmp_path: Path, mnist: MnistData) -> None:
    folder = write_idx_folder(tmp_path / "idx", mnist, compress=False)
    victim = folder / IDX_FILES[0]
    victim.write_bytes(victim.read_bytes()[:-28])
    with pytest.raises(DataError, match="IDX body has"):
        load_mnist(str(folder))


def _small(mnist: MnistData) -> dict[str, np.ndarray]:
    return {
        "x_train": mnist.x_train[:200],
        "y_train": mnist.y_train[:200],
        "x_test": mnist.x_test[:100],
        "y_test": mnist.y_test[:100],
    }


@pytest.mark.parametrize(
    ("defect", "change", "message"),
    [
        ("wrong shape", {"x_train": np.zeros((200, 32, 32), np.uint8)}, r"x_train has shape \(200, 32, 32\)"),
        ("float images", {"x_test": np.zeros((100, 28, 28), np.float32)}, "x_test has dtype float32"),
        ("label 10", {"y_train": np.full(200, 10, np.int64)}, "y_train holds label 10"),
        ("label -1", {"y_test": np.full(100, -1, np.int64)}, "y_test holds label -1"),
        ("float labels", {"y_train": np.zeros(200, np.float32)}, "y_train has dtype float32"),
        ("length mismatch", {"y_train": np.zeros(150, np.uint8)}, "200 train images but 150 labels"),
        ("empty", {"x_test": np.zeros((0, 28, 28), np.uint8)}, "x_test is empty"),
    ],
)
def test_refuses_invalid_arrays(
    tmp_path: Path, mnist: MnistData, defect: str, change: dict, message: str
) -> None:
    path = write_npz(tmp_path / "bad.npz", **(_small(mnist) | change))
    with pytest.raises(DataError, match=rf"bad\.npz.*{message}"):
        load_mnist(path)


def test_refuses_an_npz_missing_arrays(tmp_path: Path, mnist: MnistData) -> None:
    arrays = _small(mnist)
    del arrays["y_test"]
    with pytest.raises(DataError, match=r"lacks arrays \['y_test'\]"):
        load_mnist(write_npz(tmp_path / "bad.npz", **arrays))


def test_content_hash_names_the_content(mnist: MnistData) -> None:
    assert mnist.head(1000).content_hash() == mnist.head(1000).content_hash()
    assert mnist.head(1000).content_hash() != mnist.head(1001).content_hash()


def test_validation_split_is_seeded_and_disjoint() -> None:
    ids, labels = np.arange(1000), np.arange(1000) % 10  # ids stand in for images
    (train_ids, _), (val_ids, val_labels) = split_validation(ids, labels, 0.1, seed=7)
    (_, _), (again_ids, _) = split_validation(ids, labels, 0.1, seed=7)
    (_, _), (other_ids, _) = split_validation(ids, labels, 0.1, seed=8)
    assert len(val_ids) == 100 and len(train_ids) == 900
    assert np.array_equal(val_ids, again_ids) and not np.array_equal(val_ids, other_ids)
    assert set(train_ids).isdisjoint(val_ids) and set(train_ids) | set(val_ids) == set(ids)
    assert np.array_equal(val_labels, val_ids % 10)  # images and labels stay paired
