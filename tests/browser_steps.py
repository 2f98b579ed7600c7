"""The steps of the browser scenario in `test_airflow_ui.py`: Playwright on a page signed in to
`make airflow`'s Airflow, each step checking what a user sees there."""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import quote

from mnist_pipeline.web.link import LINK_NAME, NAV_ROUTE, RUN_TAB_ROUTE
from tests.airflow_api import AirflowApi, wait_until

SCHEDULER_LOOPS_S = 10  # a few of the scheduler's loops (it checks for due runs every few seconds)
RUN_TIMEOUT_S = 420  # a linear model on 3,000 images, each task a process of its own, on 2 cores
UI_RUN = {"Models": {"linear: epochs": "1"}, "Training": {"Training images": "3000"}}  # by form section


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
    """The form's "Unpause on trigger" (ticked by default) unpaused the DAG; no scheduled run for a slot
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
