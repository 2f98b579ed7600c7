"""The canonical MNIST is downloaded once into Keras' cache, verified, and read from there after.

Each download goes to a real HTTPS server on localhost serving the real mnist.npz, which counts
the requests it answers. That copy's zip headers differ from the canonical file's, so the tests
pass its own sha256 where the canonical one is the default.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mnist_pipeline.config import CANONICAL_MNIST_URL, PipelineSettings
from mnist_pipeline.data import keras_cache, sources
from mnist_pipeline.data.keras_cache import cached_mnist, keras_cache_path, read_cached_mnist
from mnist_pipeline.data.mnist import MnistData, load_mnist
from mnist_pipeline.errors import DataError
from mnist_pipeline.hashing import sha256_hex
from tests.https_server import serve_https
from tests.ports import free_port


@dataclass
class Server:
    url: str  # of mnist.npz
    sha256: str  # of the file it serves
    requests: list[str]


@pytest.fixture
def server(tmp_path: Path, mnist_npz: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    served = tmp_path / "www"
    served.mkdir()
    shutil.copy(mnist_npz, served / "mnist.npz")
    requests: list[str] = []
    with serve_https(served, tmp_path, requests) as (base_url, ca_file):
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        yield Server(f"{base_url}/mnist.npz", sha256_hex(mnist_npz.read_bytes()), requests)


@pytest.fixture
def keras_home(tmp_path: Path) -> str:
    return str(tmp_path / "keras")


def leftovers(keras_home: str) -> list[str]:
    folder = keras_cache_path(keras_home).parent
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_downloads_once_then_reads_the_cache(server: Server, keras_home: str, mnist_npz: Path) -> None:
    path = cached_mnist(keras_home, server.url, server.sha256)
    assert path == Path(keras_home) / "datasets" / "mnist.npz"
    assert path.read_bytes() == mnist_npz.read_bytes()
    assert server.requests == ["/mnist.npz"]
    assert leftovers(keras_home) == ["mnist.npz"]  # no temporary file left beside it

    assert read_cached_mnist(keras_home, server.url, server.sha256) == mnist_npz.read_bytes()
    assert cached_mnist(keras_home, server.url, server.sha256) == path
    assert server.requests == ["/mnist.npz"]  # the cache answered: no second request


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_corrupt_cached_copy_is_replaced(
    server: Server, keras_home: str, mnist_npz: Path, damage: str
) -> None:
    path = keras_cache_path(keras_home)
    path.parent.mkdir(parents=True)
    good = mnist_npz.read_bytes()
    path.write_bytes(good[: len(good) // 2] if damage == "truncated" else good[:-1] + bytes([good[-1] ^ 1]))
    assert read_cached_mnist(keras_home, server.url, server.sha256) == good
    assert path.read_bytes() == good
    assert server.requests == ["/mnist.npz"]
    assert leftovers(keras_home) == ["mnist.npz"]


def test_a_cache_that_cannot_be_written_says_so(server: Server, keras_home: str) -> None:
    keras_cache_path(keras_home).mkdir(parents=True)  # a folder where the file belongs
    with pytest.raises(DataError, match=r"cannot write the MNIST cache .*; set KERAS_HOME"):
        read_cached_mnist(keras_home, server.url, server.sha256)
    assert leftovers(keras_home) == ["mnist.npz"]  # the folder only: the download was removed


def test_a_download_with_the_wrong_hash_is_refused_and_leaves_nothing(
    server: Server, keras_home: str
) -> None:
    wrong = "0" * 64
    with pytest.raises(DataError) as refused:
        read_cached_mnist(keras_home, server.url, wrong)
    message = str(refused.value)
    assert server.url in message and wrong in message
    assert server.sha256 in message  # what did arrive
    assert "nothing was cached" in message
    assert leftovers(keras_home) == []


def test_an_oversized_download_is_refused_before_it_is_read_whole(
    server: Server, keras_home: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keras_cache, "MAX_MNIST_BYTES", 1_000_000)
    with pytest.raises(DataError, match=r"is over 1000000 bytes"):
        read_cached_mnist(keras_home, server.url, server.sha256)
    assert leftovers(keras_home) == []


def test_an_oversized_cached_file_is_not_trusted(
    server: Server, keras_home: str, mnist_npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = keras_cache_path(keras_home)
    path.parent.mkdir(parents=True)
    shutil.copy(mnist_npz, path)
    assert read_cached_mnist(keras_home, server.url, server.sha256) == mnist_npz.read_bytes()
    assert server.requests == []  # a good copy within bounds is used as it is
    monkeypatch.setattr(keras_cache, "MAX_MNIST_BYTES", 1_000_000)
    with pytest.raises(DataError, match=r"is over 1000000 bytes"):
        read_cached_mnist(keras_home, server.url, server.sha256)
    assert server.requests == ["/mnist.npz"]  # the oversized copy was not trusted


def test_an_unreachable_url_says_how_to_go_on_offline(keras_home: str) -> None:
    url = f"https://127.0.0.1:{free_port()}/mnist.npz"
    with pytest.raises(DataError) as refused:
        read_cached_mnist(keras_home, url)
    path = keras_cache_path(keras_home)
    assert str(refused.value).startswith(f"could not download MNIST from {url} (")
    assert str(refused.value).endswith(f"); put a copy at {path} or set MNIST_SOURCE=/path/to/mnist.npz")
    assert leftovers(keras_home) == []


def test_a_missing_file_on_the_server_names_the_http_status(server: Server, keras_home: str) -> None:
    with pytest.raises(DataError, match=r"could not download MNIST from .*/missing.npz \(HTTP 404 "):
        read_cached_mnist(keras_home, server.url.replace("mnist.npz", "missing.npz"), server.sha256)
    assert leftovers(keras_home) == []


def test_plain_http_is_refused(keras_home: str) -> None:
    with pytest.raises(DataError, match="only https:// URLs"):
        read_cached_mnist(keras_home, "http://127.0.0.1:1/mnist.npz")


def test_the_cache_is_where_keras_keeps_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert keras_cache_path() == tmp_path / "home" / ".keras" / "datasets" / "mnist.npz"
    settings = PipelineSettings.from_env({"KERAS_HOME": str(tmp_path / "k")})
    assert keras_cache_path(settings.keras_home) == tmp_path / "k" / "datasets" / "mnist.npz"
    assert PipelineSettings.from_env({}).keras_home == ""


def test_a_corrupt_copy_and_no_network_says_both(keras_home: str) -> None:
    path = keras_cache_path(keras_home)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not mnist")
    with pytest.raises(DataError, match=r"put a copy at .* \(the copy there does not match its sha256\)"):
        read_cached_mnist(keras_home, f"https://127.0.0.1:{free_port()}/mnist.npz")
    assert path.read_bytes() == b"not mnist"  # left for the person to look at


def test_the_pipeline_reads_the_canonical_url_through_the_cache(
    server: Server, keras_home: str, mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The canonical URL, answered by the local server: downloaded on the first load only.
    local = functools.partial(read_cached_mnist, url=server.url, sha256=server.sha256)
    monkeypatch.setattr(sources, "read_cached_mnist", local)
    for _ in range(2):
        assert load_mnist(CANONICAL_MNIST_URL, keras_home).content_hash() == mnist.content_hash()
    assert server.requests == ["/mnist.npz"]
    assert leftovers(keras_home) == ["mnist.npz"]
