"""Where the Model Registry's names and links land: the run tab, the promote task's extra link and
the navigation entry, served by Airflow's own api-server app with the plugin loaded."""

from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import SliceVerdict, Verdict
from mnist_pipeline.registry.records import HistoryEvent, VersionSummary
from mnist_pipeline.runs import legacy_run_key, run_key
from mnist_pipeline.storage import LocalStorage
from mnist_pipeline.web.app import URL_PREFIX
from mnist_pipeline.web.link import LINK_NAME, NAV_ROUTE, RUN_TAB_ROUTE, registry_link
from mnist_pipeline.web.runs import RunDecisionMissingError, load_run_decision
from tests.page_settings import serve_settings
from tests.registry_helpers import record_event

RUN_ID = "manual__2026-11-29T10:00:00+00:00"
HTML = {"Accept": "text/html"}
CHAMPION = VersionSummary("cnn", "20261128T010203Z-0123abcd", {"accuracy": 0.9912})


def kept_event(run_id: str = RUN_ID) -> HistoryEvent:
    """A DNN kept against the CNN champion: better on no slice, one digit's recall down."""
    slices = [
        SliceVerdict(
            "mnist_test", 10000, 0.9850, 0.9912, b=90, c=28, p_value=1e-8, margin=0.0005, worse=True
        ),
        SliceVerdict("new_data", 120, 0.9500, 0.9583, b=2, c=1, p_value=1.0, decides=False),
    ]
    verdict = Verdict(
        False, "worse than the champion on mnist_test by 0.62 points", 0.9850, 0.9912,
        rule="non-inferiority", slices=slices, recall_drops={"7": 0.216},
    )  # fmt: skip
    return HistoryEvent(
        "gate", "dnn", verdict, promoted=False, run_id=run_id, trigger="manual",
        metrics={"accuracy": 0.9850, "loss": 0.05}, previous_champion=CHAMPION,
        time="2026-11-29T10:05:00.000000Z",
    )  # fmt: skip


def promoted_event(run_id: str, version: str, dry_run: bool = False) -> HistoryEvent:
    verdict = Verdict(True, "better and significant on mnist_test", 0.995, 0.9912, rule="better")
    return HistoryEvent(
        "gate", "cnn", verdict, promoted=not dry_run, run_id=run_id, version=None if dry_run else version,
        metrics={"accuracy": 0.995}, dry_run=dry_run, previous_champion=CHAMPION,
    )  # fmt: skip


def record_decision(
    artifacts: Path, event: HistoryEvent, candidates: list[dict[str, Any]], why_not: str | None = None
) -> None:
    """What the promote step writes for every run that reaches it."""
    LocalStorage(artifacts).write_json(
        f"{run_key(event.run_id or '')}/promotion.json",
        event.to_dict() | {"candidates": candidates, "why_not_promoted": why_not},
    )


@pytest.fixture
def artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MNIST_ARTIFACTS_URI", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MNIST_REGISTRY_URI", str(tmp_path / "registry"))
    serve_settings(monkeypatch)
    return tmp_path / "artifacts"


@pytest.fixture
def api(api_app) -> Any:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="reader", role="VIEWER"))
    with TestClient(api_app, base_url="http://localhost", cookies={"_token": token}) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def run_page(api: Any, run_id: str) -> Any:
    from urllib.parse import quote

    return api.get(
        f"{URL_PREFIX}/runs/mnist_training/{quote(run_id, safe='')}", headers=HTML, follow_redirects=False
    )


def test_a_run_that_kept_the_champion_shows_its_verdict_slice_by_slice(api, artifacts: Path) -> None:
    candidates = [{"model": "dnn", "accuracy": 0.985, "loss": 0.05}, {"model": "linear", "accuracy": 0.92}]
    record_decision(artifacts, kept_event(), candidates)
    response = run_page(api, RUN_ID)
    assert response.status_code == 200
    text = response.text
    assert "kept the champion" in text and "worse than the champion on mnist_test by 0.62 points" in text
    assert 'data-slice="mnist_test"' in text and 'data-slice="new_data"' in text and "reported only" in text
    assert 'data-model="linear"' in text and "0.9200" in text  # every candidate, not only the challenger
    assert f"{URL_PREFIX}/versions/cnn/20261128T010203Z-0123abcd" in text  # the champion it faced
    # Recall drops are stored as fractions: 0.216 is 21.6 percentage points, labelled so.
    assert "<td>7</td><td>21.60 points</td>" in text and "recall lost (percentage points)" in text


def test_a_run_that_promoted_nothing_says_why_in_its_own_words(api, artifacts: Path) -> None:
    why = "there is no champion yet, and the run's best model, linear, scored 0.8123, below the 0.90"
    first = replace(kept_event(), previous_champion=None)
    record_decision(artifacts, first, [{"model": "linear", "accuracy": 0.8123}], why_not=why)
    response = run_page(api, RUN_ID)
    assert response.status_code == 200
    text = html.unescape(response.text)
    assert "promoted nothing" in text and f'<td id="why-not-promoted">{why}' in text
    record_decision(artifacts, kept_event(), [])
    assert 'id="why-not-promoted"' not in run_page(api, RUN_ID).text  # said only where there is a reason


def test_a_run_that_promoted_opens_the_version_it_published(api, artifacts: Path) -> None:
    record_decision(artifacts, promoted_event("scheduled__2026-11-30", "20261130T000000Z-feedbeef"), [])
    response = run_page(api, "scheduled__2026-11-30")
    assert response.status_code == 303
    assert response.headers["location"] == f"{URL_PREFIX}/versions/cnn/20261130T000000Z-feedbeef"


def test_a_dry_run_shows_what_it_would_have_done_without_a_version(api, artifacts: Path) -> None:
    record_decision(artifacts, promoted_event("dry", "unused", dry_run=True), [])
    response = run_page(api, "dry")
    assert response.status_code == 200 and "would promote (dry run)" in response.text


def test_a_run_without_a_decision_is_a_404_naming_the_run(api, artifacts: Path) -> None:
    response = run_page(api, "manual__still-training")
    assert response.status_code == 404
    assert "manual__still-training" in response.text and "has not run yet" in response.text


def test_run_ids_that_differ_only_in_escaped_characters_keep_their_own_folders(artifacts: Path) -> None:
    ids = ["run/a", "run:a", "run+a", "run_a", "run~3aa", "rén"]
    assert len({run_key(run_id) for run_id in ids}) == len(ids)
    record_decision(artifacts, kept_event("run/a"), [])
    with pytest.raises(RunDecisionMissingError, match="run 'run:a' of DAG 'mnist_training'"):
        load_run_decision(LocalStorage(artifacts), "mnist_training", "run:a")
    assert load_run_decision(LocalStorage(artifacts), "mnist_training", "run/a").event.run_id == "run/a"


def test_a_run_recorded_before_the_escaping_is_still_read_but_never_another_runs(artifacts: Path) -> None:
    legacy = LocalStorage(artifacts)
    legacy.write_json(f"{legacy_run_key(RUN_ID)}/promotion.json", kept_event().to_dict() | {"candidates": []})
    assert load_run_decision(legacy, "mnist_training", RUN_ID).event.run_id == RUN_ID
    other = RUN_ID.replace("+", ":")  # the same legacy folder, a different run
    with pytest.raises(RunDecisionMissingError, match="has no promotion decision"):
        load_run_decision(legacy, "mnist_training", other)


@pytest.mark.parametrize("run_id", ["..", ".", "no-such-run"])
def test_an_unknown_run_is_a_404_that_shows_no_server_path(api, artifacts: Path, run_id: str) -> None:
    LocalStorage(artifacts).write_json("promotion.json", kept_event().to_dict())  # where `..` would lead
    LocalStorage(artifacts).write_json("runs/promotion.json", kept_event().to_dict())  # and `.`
    escaped = "".join(f"%{byte:02X}" for byte in run_id.encode())  # so that no client resolves `..`
    response = api.get(f"{URL_PREFIX}/runs/mnist_training/{escaped}", headers=HTML)
    assert response.status_code == 404 and "has no promotion decision" in response.text
    assert str(artifacts.parent) not in response.text


def test_an_unreadable_run_record_is_a_503_that_shows_no_server_path(api, artifacts: Path) -> None:
    LocalStorage(artifacts).write_json(f"{run_key(RUN_ID)}/promotion.json", ["not", "a", "decision"])
    response = run_page(api, RUN_ID)
    assert response.status_code == 503 and "expected a JSON object" in response.text
    assert str(artifacts.parent) not in response.text and "/promotion.json" in response.text


def pending_event(run_id: str, version: str) -> HistoryEvent:
    """The gate allowed the DNN; a person must approve before the champion moves."""
    verdict = Verdict(True, "better and significant on mnist_test", 0.995, 0.9912, rule="better")
    return HistoryEvent(
        "gate", "dnn", verdict, promoted=False, run_id=run_id, version=version, approval="pending",
        metrics={"accuracy": 0.995}, previous_champion=CHAMPION, time="2026-11-29T10:05:00.000000Z",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "approver", "shown"),
    [
        (None, None, "waiting for approval: dnn/v1 is the candidate"),
        ("approved", "alice", "approved by alice: dnn/v1 promoted"),
        ("rejected", "bob", "rejected by bob: dnn/v1 not promoted, the champion stays"),
        ("timed-out", None, "approval timed out: dnn/v1 not promoted, the champion stays"),
    ],
)
def test_a_decision_that_asked_a_person_shows_the_registrys_answer(
    api, artifacts: Path, answer: str | None, approver: str | None, shown: str
) -> None:
    gate = pending_event(RUN_ID, "v1")
    record_decision(artifacts, gate, [])  # the run's own record says only "pending"
    registry = Registry(LocalStorage(artifacts.parent / "registry"))
    record_event(registry, gate)
    if answer is not None:
        promoted = answer == "approved"
        said = replace(gate, kind="approval", approval=answer, approver=approver, promoted=promoted)
        record_event(registry, said, actor=approver or "timeout")
    response = run_page(api, RUN_ID)
    assert response.status_code == 200 and shown in html.unescape(response.text)
    assert f'data-approval="{answer or "pending"}"' in response.text
    assert "kept the champion" not in response.text and "promoted nothing" not in response.text


def test_the_extra_link_opens_the_runs_tab_inside_airflow() -> None:
    outcome = {"promoted": False, "model": "dnn", "version": None}
    tab = f"/dags/mnist_training/runs/manual__2026-11-29T10%3A00%3A00%2B00%3A00/plugin/{RUN_TAB_ROUTE}"
    assert registry_link("mnist_training", RUN_ID, outcome) == tab
    assert registry_link("mnist_training", RUN_ID, outcome, "/airflow/") == f"/airflow{tab}"
    assert registry_link("mnist_training", RUN_ID, None) == ""  # promote has not decided yet


def test_the_plugin_uses_one_name_for_its_page_tab_and_link(api) -> None:
    plugins = api.get("/api/v2/plugins").json()["plugins"]
    (plugin,) = [p for p in plugins if p["name"] == "mnist_model_registry"]
    views = {view["destination"]: view for view in plugin["external_views"]}
    assert views["nav"]["href"] == f"{URL_PREFIX}/" and views["nav"]["url_route"] == NAV_ROUTE
    assert views["dag_run"]["href"] == f"{URL_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}"
    assert views["dag_run"]["url_route"] == RUN_TAB_ROUTE
    assert {view["name"] for view in views.values()} == {LINK_NAME} == {plugin["fastapi_apps"][0]["name"]}
    assert any("PromotedVersionLink" in link for link in plugin["global_operator_extra_links"])
