"""The storage interface behaves the same on a local folder and on a GCS bucket."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnist_pipeline.errors import StorageError
from mnist_pipeline.storage import GcsStorage, LocalStorage, open_storage, split_gs_uri


def test_round_trips_bytes_and_json(storage_uri: str) -> None:
    store = open_storage(storage_uri)
    store.write_bytes("a/b.bin", b"\x00\x01")
    store.write_json("a/c.json", {"x": 1})
    assert store.read_bytes("a/b.bin") == b"\x00\x01"
    assert store.read_json("a/c.json") == {"x": 1}
    assert store.exists("a/b.bin") and not store.exists("a/missing")
    assert store.list_keys("a/") == ["a/b.bin", "a/c.json"]
    assert store.uri("a/b.bin").endswith("a/b.bin")


def test_names_a_missing_object(storage_uri: str) -> None:
    with pytest.raises(StorageError, match=r"missing\.json does not exist"):
        open_storage(storage_uri).read_bytes("missing.json")


def test_uploads_and_downloads_folders(storage_uri: str, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "deep").mkdir(parents=True)
    (source / "top.txt").write_text("top")
    (source / "deep" / "leaf.txt").write_text("leaf")
    store = open_storage(storage_uri)
    assert store.upload_dir(source, "tree") == ["tree/deep/leaf.txt", "tree/top.txt"]
    copy = store.download_prefix("tree", tmp_path / "copy")
    assert (copy / "deep" / "leaf.txt").read_text() == "leaf"
    store.delete("tree")
    assert store.list_keys("tree") == []


def test_picks_the_backend_by_uri(gcs_bucket: str, tmp_path: Path) -> None:
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert isinstance(open_storage(f"file://{tmp_path}"), LocalStorage)
    assert isinstance(open_storage(f"gs://{gcs_bucket}/p"), GcsStorage)
    with pytest.raises(StorageError, match="only local paths and gs:// URIs"):
        open_storage("s3://bucket/p")


def test_local_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="escapes the storage root"):
        LocalStorage(tmp_path / "root").write_bytes("../outside.txt", b"x")


def test_a_missing_bucket_is_named(gcs_server) -> None:
    with pytest.raises(StorageError, match="bucket gs://no-such-bucket-xyz does not exist"):
        open_storage("gs://no-such-bucket-xyz/p").write_bytes("k", b"v")


def test_splits_gs_uris() -> None:
    assert split_gs_uri("gs://bucket/a/b/") == ("bucket", "a/b")
    assert split_gs_uri("gs://bucket") == ("bucket", "")
    with pytest.raises(StorageError, match="names no bucket"):
        split_gs_uri("gs:///a")


def test_compare_and_swap_lets_only_the_first_writer_in(storage_uri: str) -> None:
    store = open_storage(storage_uri)
    assert store.read_versioned("pointer.json") == (None, "0")
    assert store.write_if_generation("pointer.json", b"first", "0")
    assert not store.write_if_generation("pointer.json", b"second", "0")  # it exists now
    data, generation = store.read_versioned("pointer.json")
    assert data == b"first"
    assert store.write_if_generation("pointer.json", b"third", generation)
    assert not store.write_if_generation("pointer.json", b"stale", generation)
    assert store.read_bytes("pointer.json") == b"third"
