"""The Model Registry pages as a user sees them at 1024 px: headless Chromium (Debian's
/usr/bin/chromium, driven by Playwright) against Airflow's own api-server application (the UI and
the plugin) served by uvicorn, over a registry and artifacts store written through the library.

The registry holds a decision waiting for approval, one rejected and one approved, and then many
promotions and rollbacks, so that the chart has many champion changes to draw.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from mnist_pipeline.web.app import URL_PREFIX
from mnist_pipeline.web.link import NAV_ROUTE
from tests.airflow_api import wait_until
from tests.page_settings import serve_settings
from tests.ports import free_port
from tests.registry_helpers import record_event
from tests.test_registry_page import CNN, DNN, LINEAR, asked_and_answered, crowned, gate_decision
from tests.test_run_page import kept_event, pending_event, record_decision

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
)
WIDTH = 1024
CHANGES = 30  # promotions and rollbacks after the approvals: labels must not pile up
WAITING_RUN, KEPT_RUN = "manual__2026-12-01T10:00:00+00:00", "scheduled__2026-12-02T00:00:00+00:00"


@pytest.fixture(scope="module")
def server(api_app: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Airflow's api-server app (the UI and the plugin; the suite's one, built once) served by uvicorn
    on a free port, over a seeded registry."""
    import uvicorn

    root = tmp_path_factory.mktemp("browser-registry")
    env = {"MNIST_ARTIFACTS_URI": str(root / "artifacts"), "MNIST_REGISTRY_URI": str(root / "registry")}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    seed(root)
    port = free_port()
    uvicorn_server = uvicorn.Server(uvicorn.Config(api_app, port=port, log_level="warning"))
    page_settings = pytest.MonkeyPatch()
    serve_settings(page_settings)  # the page reads the settings it was created with: these
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    wait_until(lambda: uvicorn_server.started or not thread.is_alive(), 60, 0.1)
    assert uvicorn_server.started, "the api-server did not start"
    yield f"http://127.0.0.1:{port}"
    uvicorn_server.should_exit = True
    thread.join(timeout=10)
    page_settings.undo()
    for name, value in saved.items():
        os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)


def seed(root: Path) -> None:
    """Approvals answered and not, many champion changes, and two runs' records."""
    registry = asked_and_answered(root)
    for index in range(CHANGES):
        ref, accuracy = (LINEAR, 0.92) if index % 2 else (DNN, 0.97)
        event = gate_decision(ref.model, accuracy, (CNN[2], 0.98), ref.version)
        kind = "rollback" if index % 3 == 0 else "manual-promotion"
        record_event(registry, replace(event, kind=kind, run_id=None), crowned(ref, accuracy))
    artifacts = root / "artifacts"
    record_decision(artifacts, pending_event(WAITING_RUN, CNN[1].version), [])
    record_decision(artifacts, kept_event(KEPT_RUN), [{"model": "dnn", "accuracy": 0.985}])
    record_event(registry, pending_event(WAITING_RUN, CNN[1].version))


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[Any]:
    """A 1024 px wide page, signed in with a session Airflow's auth manager signed."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from playwright.sync_api import sync_playwright

    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="ADMIN"))
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        context = chromium.new_context(viewport={"width": WIDTH, "height": 800})
        context.add_cookies([{"name": "_token", "value": token, "url": server}])
        page = context.new_page()
        page.set_default_timeout(20_000)
        yield page
        chromium.close()


def fits_the_width(page: Any) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def overlapping_labels(page: Any) -> list[tuple[str, str]]:
    """Pairs of the chart's texts whose boxes overlap on screen."""
    return page.evaluate(
        """() => {
        const boxes = [...document.querySelectorAll('#accuracy-chart text')]
          .map(t => [t.textContent, t.getBoundingClientRect()]).filter(([s, b]) => s && b.width > 0);
        const pairs = [];
        for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
          const [a, p] = boxes[i], [b, q] = boxes[j];
          if (p.left < q.right - 1 && q.left < p.right - 1 && p.top < q.bottom - 1 && q.top < p.bottom - 1)
            pairs.push([a, b]);
        }
        return pairs;
      }"""
    )


def test_the_overview_tells_every_decision_apart_and_fits_1024_px(server: str, browser: Any) -> None:
    page = browser
    page.goto(f"{server}{URL_PREFIX}/")
    history = page.locator("#history")
    assert history.locator("tr[data-status=pending] td.pending").first.inner_text() == "waiting for approval"
    assert history.get_by_text("no: rejected by bob", exact=True).count() == 1
    assert history.get_by_text("yes: approved by alice", exact=True).count() == 1
    versions = page.locator("#versions")
    assert versions.locator(f'tr[data-version="{CNN[0]}"] .badge.rejected').inner_text() == "rejected"
    assert "waiting for approval" in versions.locator(f'tr[data-version="{CNN[1]}"]').inner_text()
    chart = page.locator("#accuracy-chart")
    assert chart.is_visible() and chart.bounding_box()["width"] <= WIDTH
    assert page.locator('#accuracy-chart [aria-roledescription="rule mark"]').count() >= CHANGES
    assert overlapping_labels(page) == []
    for table in (history, versions):  # the tables themselves fit, not only their scrolling boxes
        assert table.bounding_box()["x"] + table.bounding_box()["width"] <= WIDTH
    assert fits_the_width(page)


def test_a_run_waiting_for_approval_says_so_on_its_tab(server: str, browser: Any) -> None:
    page = browser
    page.goto(f"{server}{URL_PREFIX}/runs/mnist_training/{quote(WAITING_RUN, safe='')}")
    heading = page.locator("#run-decision")
    assert f"waiting for approval: dnn/{CNN[1].version} is the candidate" in heading.inner_text()
    assert heading.get_attribute("data-approval") == "pending" and fits_the_width(page)


def test_a_kept_runs_recall_loss_is_shown_in_points(server: str, browser: Any) -> None:
    page = browser
    page.goto(f"{server}{URL_PREFIX}/runs/mnist_training/{quote(KEPT_RUN, safe='')}")
    assert "kept the champion" in page.locator("#run-decision").inner_text()
    table = page.locator("#recall-drops")
    assert "recall lost (percentage points)" in table.inner_text()
    assert table.locator("tr").nth(1).inner_text().split() == ["7", "21.60", "points"]


def test_a_rejected_versions_page_says_it_was_not_promoted(server: str, browser: Any) -> None:
    page = browser
    page.goto(f"{server}{URL_PREFIX}/versions/{CNN[0]}")
    assert page.locator("#approval").inner_text() == "rejected"
    assert "Not promoted" in page.locator("#approval-note").inner_text() and fits_the_width(page)


def test_a_garbage_history_cursor_is_a_400_with_the_reason(server: str, browser: Any) -> None:
    page = browser
    response = page.goto(f"{server}{URL_PREFIX}/?before=yesterday")
    assert response.status == 400 and "names no page of history" in page.locator("body").inner_text()
    page.goto(f"{server}{URL_PREFIX}/")
    newest = page.locator("#history tr[data-status]").all_inner_texts()
    response = page.goto(f"{server}{URL_PREFIX}/?before=")  # empty: the newest page
    assert response.status == 200 and page.locator("#history tr[data-status]").all_inner_texts() == newest


def test_the_approval_link_opens_the_version_inside_the_airflow_ui(server: str, browser: Any) -> None:
    from mnist_pipeline.registry.approval import VERSION_PAGE

    page = browser
    page.goto(server + VERSION_PAGE.format(model=CNN[1].model, version=CNN[1].version))
    assert f"/plugin/{NAV_ROUTE}{URL_PREFIX}/versions/" in page.url
    frame = page.frame_locator("iframe")
    assert CNN[1].version in frame.locator("h1").inner_text(timeout=30_000)
    deadline = time.monotonic() + 5
    while not any(f.url.endswith(f"{URL_PREFIX}/versions/{CNN[1]}") for f in page.frames):
        assert time.monotonic() < deadline, [f.url for f in page.frames]
        time.sleep(0.1)
