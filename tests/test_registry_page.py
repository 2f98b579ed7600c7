"""The Model Registry page, mounted by the plugin in Airflow's own api-server app (FastAPI
TestClient), behind Airflow's authentication, reading a registry on fake-gcs-server."""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline.config import PipelineSettings, TrainConfig
from mnist_pipeline.evaluation.reports import FIGURE_SIZES
from mnist_pipeline.registry.gate import GateConfig
from mnist_pipeline.registry.promotion import PromotionOptions, promote
from mnist_pipeline.registry.records import ChampionPointer
from mnist_pipeline.steps import evaluate, ingest, train
from mnist_pipeline.storage import GcsStorage
from mnist_pipeline.web.app import URL_PREFIX
from mnist_pipeline.web.link import registry_link

FLOOR = 0.5  # the first, weak model must become champion so that the second can beat it
HTML = {"Accept": "text/html"}


@pytest.fixture(scope="module")
def registry_uri(gcs_server, tmp_path_factory: pytest.TempPathFactory, mnist_npz: Path) -> str:
    """Two promotions and one refusal: a weak linear champion, a DNN that beats it, the linear again."""
    bucket = f"mnist-page-{uuid.uuid4().hex[:12]}"
    GcsStorage(f"gs://{bucket}").client.create_bucket(bucket)
    uri = f"gs://{bucket}/registry"
    artifacts = str(tmp_path_factory.mktemp("artifacts"))
    options = PromotionOptions(gate=GateConfig(floor=FLOOR))
    evaluations = {}
    for run_id, model, images in (("run-linear", "linear", 1000), ("run-dnn", "dnn", 6000)):
        settings = PipelineSettings(
            source=str(mnist_npz), artifacts_uri=artifacts, registry_uri=uri, max_train_images=images
        )
        training = train(model, ingest(settings, run_id), TrainConfig(epochs=1), settings, run_id)
        evaluations[run_id] = evaluate(training, settings)
        assert promote([evaluations[run_id]], settings, run_id, options).promoted
    refused = promote([evaluations["run-linear"]], settings, "run-linear-again", options)
    assert not refused.promoted
    return uri


@pytest.fixture(scope="module")
def api_app(airflow_db) -> Any:
    """Airflow's api-server application, with the repository's plugins folder loaded."""
    from airflow.api_fastapi.app import create_app

    return create_app("core")


@pytest.fixture
def api(api_app) -> Any:
    """A client of its own for each test: no cookie a response set reaches another test."""
    from fastapi.testclient import TestClient

    with TestClient(api_app, base_url="http://localhost") as client:
        yield client


@pytest.fixture(scope="module")
def token(api_app) -> str:
    """A session of a read-only user, signed by Airflow's auth manager like a login would sign it."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="reader", role="VIEWER"))


@pytest.fixture
def signed_in(api, token: str) -> Any:
    """GET a path of the registry page as a signed-in reader, of the registry MNIST_REGISTRY_URI names."""

    def get(path: str, **kwargs: Any) -> Any:
        return api.get(f"{URL_PREFIX}{path}", cookies={"_token": token}, **kwargs)

    return get


@pytest.fixture
def page(signed_in, registry_uri: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`signed_in`, on the registry of the trained runs."""
    monkeypatch.setenv("MNIST_REGISTRY_URI", registry_uri)
    return signed_in


def unreachable_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_REGISTRY_URI", f"gs://mnist-page-{uuid.uuid4().hex[:12]}/registry")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{closed_port()}")


def champion_of(registry_uri: str) -> ChampionPointer | None:
    from mnist_pipeline.registry.store import ModelRegistry
    from mnist_pipeline.storage import open_storage

    return ModelRegistry(open_storage(registry_uri)).champion()


@pytest.mark.slow
def test_the_overview_shows_champion_versions_and_history(page, registry_uri: str) -> None:
    champion = champion_of(registry_uri)
    response = page("/", headers=HTML)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert champion.model == "dnn"
    champion_row = re.search(r'<tr class="champion" data-version="([^"]+)"', html)
    assert champion_row and champion_row.group(1) == f"dnn/{champion.version}"
    versions = re.findall(r'<tr class="[^"]*" data-version="([^"]+)"', html)
    assert len(versions) == 2 and {v.split("/")[0] for v in versions} == {"linear", "dnn"}
    assert f"{champion.metrics['accuracy']:.4f}" in html
    history = html.split('id="history"')[1]
    assert history.count("<tr>") == 4  # the header, then one row per decision
    assert "run-linear-again" in history and "not better" in history


@pytest.mark.slow
def test_a_version_page_shows_its_figures_and_model_card(page, registry_uri: str) -> None:
    champion = champion_of(registry_uri)
    response = page(f"/versions/dnn/{champion.version}", headers=HTML)
    assert response.status_code == 200
    html = response.text
    assert champion.data_hash in html.split('id="model-card"')[1]  # the card, rendered
    assert "<h2>Gate verdict</h2>" in html and "<table>" in html.split('id="model-card"')[1]
    # It beat the linear champion on the mnist_test slice: the page lists the slice's figures.
    slices = html.split('id="slices"')[1].split("</table>")[0]
    assert 'data-slice="mnist_test"' in slices and "better" in slices
    figures = re.findall(r'<img src="([^"]+)"', html)
    assert len(figures) == len(FIGURE_SIZES) - 1  # a DNN has no convolution: no Grad-CAM
    for link in figures:
        image = page(link.removeprefix(URL_PREFIX))
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert image.content.startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.slow
def test_only_report_files_are_served_and_unknown_versions_are_404(page, registry_uri: str) -> None:
    version = champion_of(registry_uri).version
    assert page(f"/versions/dnn/{version}/files/model.keras").status_code == 404
    assert page(f"/versions/dnn/{version}/files/model_card.md").status_code == 200
    missing = page("/versions/dnn/20000101T000000Z-deadbeef")
    assert missing.status_code == 404 and "no published version" in missing.json()["detail"]
    assert page("/versions/dnn/..%2F..%2Fchampion.json").status_code == 404


def test_without_a_session_it_is_airflows_login_or_401(api) -> None:
    assert api.get(f"{URL_PREFIX}/").status_code == 401
    browser = api.get(f"{URL_PREFIX}/", headers=HTML, follow_redirects=False)
    assert browser.status_code == 303 and browser.headers["location"].startswith("/auth/login?next=")
    forged = api.get(f"{URL_PREFIX}/", cookies={"_token": "not-a-jwt"})
    assert forged.status_code in (401, 403)


def test_a_missing_bucket_is_a_503_with_the_reason(
    gcs_server, signed_in, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNIST_REGISTRY_URI", f"gs://no-such-bucket-{uuid.uuid4().hex[:8]}/registry")
    response = signed_in("/")
    assert response.status_code == 503
    assert "does not exist" in response.json()["detail"] and "Traceback" not in response.text
    assert "Model registry unavailable" in signed_in("/", headers=HTML).text


def test_an_unreachable_emulator_is_a_503(signed_in, monkeypatch: pytest.MonkeyPatch) -> None:
    unreachable_registry(monkeypatch)
    monkeypatch.setenv("MNIST_STORAGE_RETRY_DEADLINE", "1")
    response = signed_in("/")
    assert response.status_code == 503 and "unreachable" in response.json()["detail"]


def test_a_registry_slower_than_the_page_timeout_is_a_503(signed_in, monkeypatch: pytest.MonkeyPatch) -> None:
    unreachable_registry(monkeypatch)
    monkeypatch.setenv("MNIST_STORAGE_RETRY_DEADLINE", "5")  # storage keeps retrying past the page's patience
    monkeypatch.setenv("MNIST_REGISTRY_PAGE_TIMEOUT", "0.5")
    response = signed_in("/")
    assert response.status_code == 503 and "did not answer within 0.5 s" in response.json()["detail"]


def test_the_plugin_is_registered_with_its_view_app_and_link(api, token: str) -> None:
    plugins = api.get("/api/v2/plugins", headers={"Authorization": f"Bearer {token}"}).json()["plugins"]
    (plugin,) = [p for p in plugins if p["name"] == "mnist_model_registry"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == URL_PREFIX
    (view,) = plugin["external_views"]
    assert view["destination"] == "nav" and view["href"] == f"{URL_PREFIX}/"
    assert any("PromotedVersionLink" in link for link in plugin["global_operator_extra_links"])


def test_the_promote_link_opens_the_promoted_version() -> None:
    promoted = {"promoted": True, "model": "cnn", "version": "20261128T010203Z-0123abcd"}
    assert registry_link(promoted) == f"{URL_PREFIX}/versions/cnn/20261128T010203Z-0123abcd"
    assert (
        registry_link(promoted, "/airflow/") == f"/airflow{URL_PREFIX}/versions/cnn/20261128T010203Z-0123abcd"
    )
    assert registry_link({"promoted": False, "model": "cnn", "version": None}) == f"{URL_PREFIX}/"
    assert registry_link(None) == ""


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
