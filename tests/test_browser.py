"""The Airflow UI as a user meets it, in a real browser, against `make airflow`'s Airflow.

`scripts/airflow_ui.py` (what `make airflow` runs) starts `airflow standalone` on a free port with
a registry that already holds two versions (a weak linear champion, then a DNN that beat it).
Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) then signs in with the
password the script printed and, in one scenario: opens the trigger form (Models is a multi-select
of the known models), submits epochs = 0 and reads the refusal naming the field, triggers a small
linear run from the form's fields (unpausing the DAG starts nothing else), reads the training log
(epoch lines, no TensorFlow start-up notices), follows the promote task's "Model Registry" link to
that run's verdict inside Airflow, opens the registry from the navigation and finds the accuracy
chart, then a version's comparison with the champion.

Screenshots land in `$MNIST_TEST_ARTIFACTS/screenshots` (else the test's temporary folder); their
paths are printed.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.registry.gate import GateConfig
from mnist_pipeline.registry.promotion import PromotionOptions, promote
from mnist_pipeline.web.link import LINK_NAME, NAV_ROUTE, RUN_TAB_ROUTE
from tests.airflow_api import AirflowApi
from tests.ports import free_port
from tests.test_airflow_ui import start_wrapper, stop_wrapper, wait_until, wrapper_env
from tests.trained_runs import evaluate_runs

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]
READY_TIMEOUT_S = 300
SCHEDULER_LOOPS_S = 10  # a few of the scheduler's loops (it checks for due runs every few seconds)
RUN_TIMEOUT_S = 420  # a linear model on 3,000 images, each task a process of its own, on 2 cores
# Seeds: a weak first champion, then a DNN that beats it; the run the browser triggers is kept.
SEED_RUNS = {"seed-linear": ("linear", 1000, 1), "seed-dnn": ("dnn", 6000, 1)}
UI_RUN = {"Models": {"linear: epochs": "1"}, "Training": {"Training images": "3000"}}  # by form section


@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory: pytest.TempPathFactory, mnist_npz: Path) -> Iterator[dict[str, Any]]:
    """`make airflow`'s Airflow on a free port, over a registry seeded with two promotions."""
    root = tmp_path_factory.mktemp("browser")
    env = wrapper_env(root, free_port()) | {"MNIST_SOURCE": str(mnist_npz)}
    seed_registry(env, mnist_npz)
    wrapper = start_wrapper(env)
    try:
        wait_until(lambda: "Ctrl-C" in wrapper.output or wrapper.process.poll() is not None, READY_TIMEOUT_S)
        address, password = wrapper.printed(r"ready: (http://\S+)"), wrapper.printed(r"password: +(\S+)")
        if wrapper.process.poll() is not None or not (address and password):
            pytest.fail(f"make airflow did not get ready:\n{wrapper.output}", pytrace=False)
        yield {"address": address, "user": wrapper.printed(r"user: +(\S+)"), "password": password}
    finally:
        stop_wrapper(wrapper.process)


def seed_registry(env: dict[str, str], mnist_npz: Path) -> None:
    """Two real runs promoted through the gate (its floor lowered for models trained this briefly)."""
    evaluations = evaluate_runs(env["MNIST_ARTIFACTS_URI"], mnist_npz, SEED_RUNS)
    settings = PipelineSettings(
        source=str(mnist_npz),
        artifacts_uri=env["MNIST_ARTIFACTS_URI"],
        registry_uri=env["MNIST_REGISTRY_URI"],
    )
    options = PromotionOptions(gate=GateConfig(floor=0.5))
    for run_id, evaluation in evaluations.items():
        assert promote([evaluation], settings, run_id, options).promoted


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MNIST_TEST_ARTIFACTS") or tmp_path) / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser_page(airflow_ui: dict[str, Any]) -> Iterator[Any]:
    """A signed-in page: Airflow's login form, filled with what `make airflow` printed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(f"{airflow_ui['address']}/")
        page.wait_for_url("**/auth/login**")
        page.get_by_label("Username").fill(airflow_ui["user"])
        page.get_by_label("Password").fill(airflow_ui["password"])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{airflow_ui['address']}/")
        yield page
        browser.close()


def test_a_user_triggers_a_run_and_follows_it_to_the_registry(
    airflow_ui: dict[str, Any], browser_page: Any, screenshots: Path
) -> None:
    page, address = browser_page, airflow_ui["address"]
    api = AirflowApi(address)
    api.sign_in(airflow_ui["user"], airflow_ui["password"])
    shots: list[Path] = []

    def shot(name: str) -> None:
        shots.append(screenshots / f"{len(shots) + 1:02d}_{name}.png")
        page.screenshot(path=str(shots[-1]), full_page=True)

    dialog = open_trigger_form(page, address)
    dialog.get_by_text("Unpause mnist_training on trigger").wait_for()  # the DAG starts paused
    refused = submit_conf(page, dialog, {"models": ["linear"], "epochs": 0})
    assert re.search(r"Invalid input for param epochs: 0 is less than the minimum of 1", refused)
    shot("trigger_form_refuses_epochs_0")
    assert_unpaused_with_no_run(api)  # the form unpauses before it submits: nothing may start

    run_id = trigger_small_linear_run(page, address, shot)
    shot("run_triggered")
    assert_one_run_only(api, run_id)
    wait_for_success(api, run_id)

    assert_quiet_training_log(page, address, run_id)
    shot("training_log_quiet")
    follow_the_extra_link(page, address, run_id)
    shot("extra_link_opens_the_run_verdict")
    open_registry_from_navigation(page, address)
    shot("registry_accuracy_chart")
    open_a_version_against_the_champion(page, address)
    shot("version_compared_with_champion")
    print("\nscreenshots:\n" + "\n".join(str(path) for path in shots))


def open_trigger_form(page: Any, address: str) -> Any:
    page.goto(f"{address}/dags/mnist_training")
    page.get_by_test_id("trigger-dag-button").click()
    dialog = page.locator("[role=dialog][data-state=open]")
    dialog.get_by_text("Trigger Dag - mnist_training").wait_for()
    return dialog


def choose_only_linear(page: Any, dialog: Any, shot: Any) -> None:
    """Models is a multi-select of the known models: all three chosen by default; taking two out
    offers exactly those two back, and a name it does not know offers nothing."""
    dialog.get_by_text("Models", exact=True).first.click()
    field = dialog.locator("#element_models")
    chips = field.locator("[aria-label^='Remove ']")
    assert sorted(chip.get_attribute("aria-label") for chip in chips.all()) == [
        "Remove cnn", "Remove dnn", "Remove linear",
    ]  # fmt: skip
    for model in ("dnn", "cnn"):
        field.locator(f"[aria-label='Remove {model}']").click()
    field.get_by_role("combobox").click()
    options = page.locator("[id^='react-select'][id*='-option-']")
    options.first.wait_for()
    assert sorted(option.inner_text() for option in options.all()) == ["cnn", "dnn"]
    shot("trigger_form_models_offers_the_known_models")
    page.keyboard.insert_text("resnet")
    page.get_by_text("No options").wait_for()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")  # the typed text only; Escape would close the whole dialog
    dialog.get_by_text("Trigger Dag - mnist_training").click()  # closes the menu


def submit_conf(page: Any, dialog: Any, conf: dict[str, Any]) -> str:
    """Type `conf` into the form's "Configuration JSON" and trigger; the dialog's text afterwards."""
    dialog.get_by_text("Advanced Options", exact=True).click()
    # The last editor of the form: the sweep parameter has one of its own above it.
    dialog.locator(".monaco-editor .view-lines").last.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(json.dumps(conf))  # not typed: the editor would close brackets itself
    page.keyboard.press("Control+Shift+End")
    page.keyboard.press("Delete")
    dialog.get_by_test_id("trigger-dag-submit").click()
    dialog.get_by_text("Bad Request").first.wait_for()
    return dialog.inner_text()


def trigger_small_linear_run(page: Any, address: str, shot: Any) -> str:
    """From the form's own fields: only the linear model, 3,000 images, one epoch; "Unpause on
    trigger" left ticked, as a new user leaves it."""
    dialog = open_trigger_form(page, address)
    choose_only_linear(page, dialog, shot)
    for section, fields in UI_RUN.items():
        if not dialog.get_by_label(next(iter(fields))).is_visible():
            dialog.get_by_text(section, exact=True).first.click()
        for label, value in fields.items():
            dialog.get_by_label(label).fill(value)
    shot("trigger_form_linear_3000_images_1_epoch")
    dialog.get_by_test_id("trigger-dag-submit").click()
    page.wait_for_url(re.compile(r".*/dags/mnist_training/runs/[^/]+$"))
    return unquote_run_id(page.url)


def unquote_run_id(url: str) -> str:
    from urllib.parse import unquote

    return unquote(url.rstrip("/").rsplit("/", 1)[1])


def run_ids(api: AirflowApi) -> dict[str, str]:
    status, body = api.request("GET", "/api/v2/dags/mnist_training/dagRuns?limit=100")
    assert status == 200, body[:300]
    return {run["dag_run_id"]: run["run_type"] for run in json.loads(body)["dag_runs"]}


def assert_unpaused_with_no_run(api: AirflowApi) -> None:
    """"Unpause on trigger" (ticked by default) unpaused the DAG; no scheduled run for a slot
    already past started, even after the scheduler had a few loops to start one."""
    status, body = api.request("GET", "/api/v2/dags/mnist_training")
    assert status == 200 and json.loads(body)["is_paused"] is False
    time.sleep(SCHEDULER_LOOPS_S)
    assert run_ids(api) == {}


def assert_one_run_only(api: AirflowApi, run_id: str) -> None:
    assert run_ids(api) == {run_id: "manual"}


def wait_for_success(api: AirflowApi, run_id: str) -> None:
    path = f"/api/v2/dags/mnist_training/dagRuns/{quote(run_id, safe='')}"

    def finished() -> str | None:
        state = json.loads(api.request("GET", path)[1])["state"]
        return state if state in ("success", "failed") else None

    assert wait_until(finished, RUN_TIMEOUT_S, every_s=3) == "success"
    assert run_ids(api) == {run_id: "manual"}  # and nothing started while it ran


def task_page(address: str, run_id: str, task_id: str) -> str:
    return f"{address}/dags/mnist_training/runs/{quote(run_id, safe='')}/tasks/{task_id}"


UNSILENCEABLE_NOTICES = ("absl::InitializeLog() is called", "oneDNN custom operations are on")


def assert_quiet_training_log(page: Any, address: str, run_id: str) -> None:
    """The epoch lines are there; TensorFlow's start-up notices (and any error line) are not."""
    # `train` is mapped over the model's trials: one instance without a sweep, map index 0.
    page.goto(task_page(address, run_id, "linear.train") + "/mapped/0")
    page.get_by_text("epoch 1/1").first.wait_for()
    log = page.locator("main, body").first.inner_text()
    assert "cpu_feature_guard" not in log, f"the training log shows a start-up notice:\n{log[-3000:]}"
    # Where oneDNN is on (CPUs with AVX-512), TensorFlow prints its oneDNN notice, and absl's
    # preamble before it, before its own logging starts: no setting silences those two, so they
    # are the only error lines allowed.
    unsilenceable = sum(log.count(notice) for notice in UNSILENCEABLE_NOTICES)
    assert log.count("ERROR") <= unsilenceable, f"the training log shows an error:\n{log[-3000:]}"


def follow_the_extra_link(page: Any, address: str, run_id: str) -> None:
    """The promote task's link opens the run's Model Registry tab in place; the run kept the DNN
    champion, so the tab shows its verdict."""
    page.goto(task_page(address, run_id, "promote"))
    page.get_by_text("Details", exact=True).click()
    page.get_by_role("link", name=LINK_NAME).click()
    page.wait_for_url(f"**/runs/{quote(run_id, safe='')}/plugin/{RUN_TAB_ROUTE}")
    frame = page.frame_locator(f"iframe[title='{LINK_NAME}']")
    heading = frame.locator("#run-decision")
    heading.wait_for()
    assert "kept the champion" in heading.inner_text()
    assert "dnn" in frame.locator("#summary").inner_text()  # the champion it faced
    assert frame.locator("#slices tr[data-slice='mnist_test']").count() == 1


def open_registry_from_navigation(page: Any, address: str) -> None:
    """Browse > Model Registry: the overview inside Airflow, with its chart of three decisions."""
    page.goto(f"{address}/")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name=LINK_NAME).click()
    page.wait_for_url(f"**/plugin/{NAV_ROUTE}/model-registry/")
    frame = page.frame_locator(f"iframe[title='{LINK_NAME}']")
    chart = frame.locator("#accuracy-chart")
    chart.wait_for()
    # Vega names each point for screen readers: "…, <outcome>, at <time>".
    points = chart.locator("[aria-roledescription='point']")
    labels = [points.nth(i).get_attribute("aria-label") or "" for i in range(points.count())]
    outcomes = sorted(label.split(", at ")[0].split(", ")[-1] for label in labels)
    assert outcomes == ["kept", "promoted", "promoted"]


def open_a_version_against_the_champion(page: Any, address: str) -> None:
    """The first linear version, no longer champion, side by side with the DNN champion; its
    address in Airflow is a deep link."""
    frame = page.frame_locator(f"iframe[title='{LINK_NAME}']")
    frame.locator("#versions tr:not(.champion) a").first.click()
    comparison = frame.locator("#comparison")
    comparison.wait_for()
    assert "test accuracy" in comparison.inner_text() and "recall of digit 7" in comparison.inner_text()
    assert "dnn" in frame.locator("#compared-with").inner_text()
    page.wait_for_url(re.compile(rf".*/plugin/{NAV_ROUTE}/model-registry/versions/linear/[^/]+$"))
    page.reload()  # the deep link opens the same version again
    frame.locator("#comparison").wait_for()
