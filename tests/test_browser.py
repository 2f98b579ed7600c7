"""The Model Registry page in a real browser, served by a real `airflow api-server`.

One real DAG run (one model, a slice of MNIST) promotes a champion; an api-server started as a
subprocess on the same metadata database serves the plugin; headless Chromium (Debian's
/usr/bin/chromium, driven by Playwright) signs in through Airflow's login page, opens the
promote task's extra link and finds the champion's row. Screenshots land in
`$MNIST_TEST_ARTIFACTS` (else the test's temporary folder); their paths are printed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline.registry.store import ModelRegistry
from mnist_pipeline.storage import open_storage
from mnist_pipeline.web.app import URL_PREFIX

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]
REPO = Path(__file__).resolve().parent.parent
USER, PASSWORD = "reviewer", "a-known-test-password"
SERVER_START_TIMEOUT_S = 120
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


@pytest.fixture(scope="module")
def locations(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("browser")
    uris = {"MNIST_REGISTRY_URI": str(root / "registry"), "MNIST_ARTIFACTS_URI": str(root / "artifacts")}
    saved = {name: os.environ.get(name) for name in uris}
    os.environ.update(uris)
    yield uris
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def dag_run(airflow_db: Path, locations: dict[str, str]) -> Any:
    """A real run of `mnist_training` (a DNN on 12,000 images, about 94%, clear of the 90% floor for a
    first champion): its promote task's XCom feeds the extra link."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    dag = DagBag(dag_folder=str(REPO / "dags")).dags["mnist_training"]
    run = dag.test(run_conf={"models": ["dnn"], "max_train_images": 12000, "epochs": 2})
    assert run.state == DagRunState.SUCCESS
    return run


@pytest.fixture(scope="module")
def api_server(
    dag_run: Any, locations: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`airflow api-server` on a free port, same metadata database, one user with a known password."""
    home = tmp_path_factory.mktemp("api-server")
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    port = free_port()
    env = os.environ | {
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}/",
    }
    log = (home / "api-server.log").open("w")
    command = [str(Path(sys.executable).parent / "airflow"), "api-server", "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--workers", "1"], env=env, stdout=log, stderr=log
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(f"{base}/api/v2/monitor/health", server, home / "api-server.log")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"airflow api-server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(
        f"airflow api-server did not answer within {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
    )


def api_token(base: str) -> str:
    body = json.dumps({"username": USER, "password": PASSWORD}).encode()
    request = urllib.request.Request(f"{base}/auth/token", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["access_token"]


def promote_link(base: str, run_id: str) -> str:
    """The promote task's "Model Registry" extra link, as the Airflow UI asks the REST API for it."""
    from urllib.parse import quote

    url = f"{base}/api/v2/dags/mnist_training/dagRuns/{quote(run_id, safe='')}/taskInstances/promote/links"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_token(base)}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["extra_links"]["Model Registry"]


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MNIST_TEST_ARTIFACTS") or tmp_path) / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_a_signed_in_browser_finds_the_champion(
    api_server: str, dag_run: Any, locations, screenshots
) -> None:
    from playwright.sync_api import sync_playwright

    champion = ModelRegistry(open_storage(locations["MNIST_REGISTRY_URI"])).champion()
    assert champion is not None and champion.run_id == dag_run.run_id
    link = promote_link(api_server, dag_run.run_id)
    assert link == f"{URL_PREFIX}/versions/{champion.model}/{champion.version}"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{api_server}{URL_PREFIX}/")  # no session yet: Airflow's login page
        page.wait_for_url("**/auth/login**")
        page.get_by_label("Username").fill(USER)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"**{URL_PREFIX}/")  # back where the browser wanted to go

        row = page.locator("#versions tr.champion")
        assert row.get_attribute("data-version") == f"{champion.model}/{champion.version}"
        assert f"{champion.metrics['accuracy']:.4f}" in row.inner_text()
        overview = screenshots / "model_registry.png"
        page.screenshot(path=str(overview), full_page=True)

        page.goto(f"{api_server}{link}")  # what clicking the promote task's link opens
        page.locator("#model-card").wait_for()
        assert champion.data_hash in page.locator("#model-card").inner_text()
        images = page.locator("img")
        assert images.count() == 4 and all(
            images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0") for i in range(4)
        )
        version = screenshots / "model_registry_version.png"
        page.screenshot(path=str(version), full_page=True)
        browser.close()
    print(f"\nscreenshots: {overview} {version}")
