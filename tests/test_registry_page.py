"""The Model Registry page, mounted by the plugin in Airflow's own api-server app (FastAPI
TestClient), behind Airflow's authentication, reading a registry on fake-gcs-server."""

from __future__ import annotations

import html as html_module
import re
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from mnist_pipeline.config import PipelineSettings, TrainConfig
from mnist_pipeline.evaluation.reports import FIGURE_SIZES
from mnist_pipeline.registry.aliases import set_alias
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import MNIST_TEST, NEW_DATA, GateConfig, SliceVerdict, Verdict
from mnist_pipeline.registry.promotion import PromotionOptions, promote
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent, VersionSummary
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.steps import evaluate, ingest, train
from mnist_pipeline.storage import GcsStorage, open_storage
from mnist_pipeline.web.app import URL_PREFIX, load_overview, load_version
from mnist_pipeline.web.charts import accuracy_chart
from tests.page_settings import serve_settings
from tests.ports import free_port
from tests.registry_helpers import headline, publish_scored_version, record_event
from tests.storage_helpers import CountingStorage

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
def signed_in(api, token: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """GET a path of the registry page as a signed-in reader, of the registry MNIST_REGISTRY_URI names
    (the page serving the settings the test's environment holds as it asks)."""

    def get(path: str, **kwargs: Any) -> Any:
        serve_settings(monkeypatch)
        return api.get(f"{URL_PREFIX}{path}", cookies={"_token": token}, **kwargs)

    return get


@pytest.fixture
def page(signed_in, registry_uri: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`signed_in`, on the registry of the trained runs."""
    monkeypatch.setenv("MNIST_REGISTRY_URI", registry_uri)
    return signed_in


def unreachable_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_REGISTRY_URI", f"gs://mnist-page-{uuid.uuid4().hex[:12]}/registry")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")


def champion_of(registry_uri: str) -> ChampionPointer | None:
    from mnist_pipeline.registry.client import Registry
    from mnist_pipeline.storage import open_storage

    return Registry(open_storage(registry_uri)).champion()


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
    assert history.count("<tr data-status=") == 3  # one row per decision
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
def test_the_trained_runs_chart_marks_both_promotions_and_the_refusal(page, registry_uri: str) -> None:
    champion = champion_of(registry_uri)
    chart = chart_of(page("/", headers=HTML).text)
    points = [name.split(": ")[0] for name in marks_of(chart)]
    assert [name.split(", ")[-1] for name in marks_of(chart)] == ["promoted", "promoted", "kept"]
    assert points[1] == f"dnn/{champion.version}" and points[0].startswith("linear/")
    changes = [name.split(",")[0] for name in marks_of(chart, "rule mark")]
    assert changes == [f"champion {points[0]}", f"champion {points[1]}"]


@pytest.mark.slow
def test_the_trained_linear_version_is_compared_with_the_dnn_champion(page, registry_uri: str) -> None:
    champion = champion_of(registry_uri)
    linear = re.search(r'data-version="linear/([^"]+)"', page("/", headers=HTML).text)
    html = page(f"/versions/linear/{linear.group(1)}", headers=HTML).text
    table = html.split('<table id="comparison">')[1].split("</table>")[0]
    _, champions, tone, difference = comparison_row(table, "test accuracy")
    assert champions == f"{champion.metrics['accuracy'] * 100:.2f}%"
    assert tone == "no" and difference.startswith("-")  # the DNN beat it
    assert len(re.findall(r"<th>recall of digit \d</th>", table)) == 10  # from both metrics.json


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


# The accuracy chart and the comparison with the champion, on registries written through the
# library (no model is trained): three gate decisions of two models, on a local folder.

LINEAR = VersionRef("linear", "20260101T000001Z-00000001")
DNN = VersionRef("dnn", "20260101T000002Z-00000002")
HOSTILE_MODEL = "<script>alert(1)</script>"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def gate_decision(
    model: str,
    accuracy: float,
    champion: tuple[VersionRef, float] | None = None,
    version: str | None = None,
    new_data: tuple[float, float] | None = None,
    time: str = "",
) -> HistoryEvent:
    """A gate decision: promoted when it names the `version` it published, kept otherwise."""
    promoted = version is not None
    against = champion[1] if champion else None
    paired = {"b": 30, "c": 530, "adjusted_p_value": 1e-9} if champion else {}  # McNemar needs a champion
    slices = [SliceVerdict(MNIST_TEST, 10000, accuracy, against, **paired)]
    slices += [SliceVerdict(NEW_DATA, 400, *new_data, b=2, c=9)] if new_data else []
    summary = (
        VersionSummary(champion[0].model, champion[0].version, headline(champion[1])) if champion else None
    )
    reason = "no champion yet" if champion is None else "better" if promoted else "not better"
    verdict = Verdict(promoted, reason, accuracy, against, slices=slices)
    return HistoryEvent(
        kind="gate",
        model=model,
        verdict=verdict,
        promoted=promoted,
        version=version,
        metrics={"accuracy": accuracy},
        previous_champion=summary,
        time=time,
    )


def crowned(ref: VersionRef, accuracy: float) -> ChampionPointer:
    """The champion pointer a gate decision that promoted `ref` makes."""
    return ChampionPointer.for_version(
        VersionSummary(ref.model, ref.version, headline(accuracy)), "u", "t", "ok"
    )


def three_decisions(root: Path, kept: int = 1, new_data: bool = False) -> Registry:
    """A linear champion (92%), a DNN that beats it (97%), then `kept` linear challengers kept (92.5%)."""
    registry = Registry(open_storage(str(root / "registry")))
    publish_scored_version(registry, LINEAR, 0.92, root / "folders")
    record_event(registry, gate_decision("linear", 0.92, version=LINEAR.version), crowned(LINEAR, 0.92))
    publish_scored_version(registry, DNN, 0.97, root / "folders")
    ours = (0.95, 0.90) if new_data else None
    promoted = gate_decision("dnn", 0.97, (LINEAR, 0.92), DNN.version, ours)
    record_event(registry, promoted, crowned(DNN, 0.97))
    for _ in range(kept):
        theirs = (0.91, 0.95) if new_data else None
        record_event(registry, gate_decision("linear", 0.925, (DNN, 0.97), new_data=theirs))
    return registry


@pytest.fixture
def page_of(signed_in, monkeypatch: pytest.MonkeyPatch) -> Callable[[Registry, str], str]:
    """The HTML of a page of the registry page, reading `registry` (a local folder)."""

    def get(registry: Registry, path: str) -> str:
        monkeypatch.setenv("MNIST_REGISTRY_URI", registry.storage.root_uri)
        response = signed_in(path, headers=HTML)
        assert response.status_code == 200, response.text
        return response.text

    return get


def chart_of(html: str) -> str:
    assert html.count('<svg id="accuracy-chart"') == 1
    return html.split('<svg id="accuracy-chart"')[1].split("</svg>")[0]


def marks_of(chart: str, role: str = "point") -> list[str]:
    """The accessible names Vega gives the chart's marks of `role` (point, rule mark), in order,
    each cut before its time."""
    names = re.findall(rf'aria-label="([^"]*)"[^>]*aria-roledescription="{role}"', chart)
    return [html_module.unescape(name).split(", at ")[0] for name in names]


def test_the_chart_plots_each_gate_decision_and_marks_each_new_champion(page_of, tmp_path: Path) -> None:
    html = page_of(three_decisions(tmp_path), "/")
    # Under the champion, above the versions.
    assert (
        html.index('id="champion"') < html.index("<h2>Accuracy over time</h2>") < html.index("<h2>Versions")
    )
    chart = chart_of(html)
    assert marks_of(chart) == [
        f"{LINEAR}: 92.00% on mnist_test, promoted",
        f"{DNN}: 97.00% on mnist_test, promoted",
        "linear: 92.50% on mnist_test, kept",  # a kept challenger is not published
    ]
    changes = [name.split(",")[0] for name in marks_of(chart, "rule mark")]
    assert changes == [f"champion {LINEAR}", f"champion {DNN}"]
    assert 'aria-roledescription="line mark"' in chart and "accuracy on new_data" not in chart
    assert "<script" not in chart  # rendered on the server: the page needs no script


def test_a_slice_panel_appears_only_when_the_decisions_judged_that_slice(tmp_path: Path) -> None:
    plain = [gate_decision("dnn", 0.97, time=f"2026-03-01T12:0{i}:00.000000Z") for i in range(3)]
    assert "accuracy on new_data" not in accuracy_chart(plain)
    with_new_data = [
        *plain,
        gate_decision("dnn", 0.98, (DNN, 0.97), "v4", (0.95, 0.9), "2026-03-01T12:05:00Z"),
    ]
    chart = accuracy_chart(with_new_data)
    assert "accuracy on new_data" in chart
    assert len([name for name in marks_of(chart) if "on mnist_test" in name]) == 4  # every decision
    assert len([name for name in marks_of(chart) if "on new_data" in name]) == 2  # challenger, champion


def test_the_overview_without_history_says_there_is_nothing_to_chart(page_of, tmp_path: Path) -> None:
    html = page_of(Registry(open_storage(str(tmp_path / "empty"))), "/")
    assert "<svg" not in html and "No gate decisions yet: nothing to chart." in html


def test_model_names_are_escaped_in_the_chart(page_of, tmp_path: Path) -> None:
    registry = three_decisions(tmp_path)
    record_event(registry, gate_decision(HOSTILE_MODEL, 0.9, (DNN, 0.97)))
    html = page_of(registry, "/")
    assert HOSTILE_MODEL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in chart_of(html)  # its point and legend entry


def test_the_overview_lists_every_alias_above_the_versions(page_of, tmp_path: Path) -> None:
    registry = three_decisions(tmp_path)
    set_alias(registry, "staging", LINEAR, "test:alice", "smoke tests")
    html = page_of(registry, "/")
    assert html.index('<table id="aliases">') < html.index('<table id="versions">')
    table = html.split('<table id="aliases">')[1].split("</table>")[0]
    assert re.findall(r'<tr data-alias="([^"]+)">', table) == ["champion", "staging"]
    assert f'<a href="{URL_PREFIX}/versions/{LINEAR}">linear / {LINEAR.version}</a>' in table
    assert "test:alice: smoke tests" in table
    linear = re.search(rf'<tr class="" data-version="{LINEAR}">.*?</tr>', html, re.S)
    assert linear and '<span class="badge alias">staging</span>' in linear.group(0)
    champion = re.search(r'<tr class="champion" data-version="([^"]+)"', html)
    assert champion and champion.group(1) == str(DNN)


def test_a_version_page_compares_it_with_the_champion(page_of, tmp_path: Path) -> None:
    html = page_of(three_decisions(tmp_path), f"/versions/{LINEAR}")
    assert "<h2>Compared with the champion</h2>" in html
    assert f'<a href="{URL_PREFIX}/versions/{DNN}">dnn / {DNN.version}</a>' in html
    table = html.split('<table id="comparison">')[1].split("</table>")[0]
    accuracy = comparison_row(table, "test accuracy")
    assert accuracy == ("92.00%", "97.00%", "no", "-5.00 pt")  # worse than the champion: red
    assert comparison_row(table, "loss") == ("0.0800", "0.0300", "no", "+0.0500")  # higher loss: worse
    assert comparison_row(table, "recall of digit 9") == ("91.10%", "96.10%", "no", "-5.00 pt")
    assert len(re.findall(r"<th>recall of digit \d</th>", table)) == 10
    # It was promoted as the first champion: its decision had no one to pair it with.
    assert '<tr class="mcnemar"><th>McNemar</th><td colspan="3">no paired test: no champion yet</td>' in table


def test_the_champion_page_compares_it_with_the_champion_it_replaced(page_of, tmp_path: Path) -> None:
    html = page_of(three_decisions(tmp_path), f"/versions/{DNN}")
    assert "<h2>Compared with the champion it replaced</h2>" in html
    table = html.split('<table id="comparison">')[1].split("</table>")[0]
    assert comparison_row(table, "test accuracy") == ("97.00%", "92.00%", "yes", "+5.00 pt")
    mcnemar = re.search(r'<tr class="mcnemar" data-slice="mnist_test">.*?</tr>', table, re.S)
    assert mcnemar and "b = 30, c = 530, p = 1e-09" in mcnemar.group(0)
    assert f'href="{URL_PREFIX}/versions/{LINEAR}"' in html


def test_the_first_champion_replaced_none(page_of, tmp_path: Path) -> None:
    registry = Registry(open_storage(str(tmp_path / "registry")))
    publish_scored_version(registry, LINEAR, 0.92, tmp_path / "folders")
    record_event(registry, gate_decision("linear", 0.92, version=LINEAR.version), crowned(LINEAR, 0.92))
    html = page_of(registry, f"/versions/{LINEAR}")
    assert "It replaced no champion" in html and 'id="comparison"' not in html


def comparison_row(table: str, name: str) -> tuple[str, ...]:
    row = re.search(
        rf'<th>{name}</th><td>([^<]*)</td><td>([^<]*)</td>\s*<td class="([^"]*)">([^<]*)</td>', table
    )
    assert row, f"no row {name!r} in {table}"
    return row.groups()


def test_the_pages_cost_the_same_storage_calls_for_3_or_40_decisions(tmp_path: Path) -> None:
    small, large = three_decisions(tmp_path / "small"), three_decisions(tmp_path / "large", kept=38)
    readers: dict[str, Callable[[Registry], Any]] = {
        "overview": lambda registry: load_overview(registry, str),
        "challenger's page": lambda registry: load_version(registry, LINEAR, str),
        "champion's page": lambda registry: load_version(registry, DNN, str),
    }
    costs = {name: (calls(small, read), calls(large, read)) for name, read in readers.items()}
    assert all(at_3 == at_40 for at_3, at_40 in costs.values()), costs
    # The chart adds nothing to the overview; the comparison adds the champion's metadata and the
    # two metrics.json files with per-class recall.
    assert costs["overview"][0] <= 10 and costs["challenger's page"][0] <= 10, costs
    assert len(load_overview(large, str)["history"]) == 40


def calls(registry: Registry, read: Callable[[Registry], Any]) -> int:
    counted = CountingStorage(registry.storage)
    read(Registry(counted))
    return counted.total


# The chart's axes: scaled to the data, never to an empty range.


def test_decisions_without_a_test_accuracy_are_left_out() -> None:
    blank = HistoryEvent(
        kind="gate", model="dnn", verdict=Verdict(False, "?"), promoted=False, time="2026-03-01T12:00:00Z"
    )
    assert accuracy_chart([]) is None and accuracy_chart([blank]) is None
    untimed = gate_decision("dnn", 0.9)  # never recorded: no time
    chart = accuracy_chart([blank, untimed, gate_decision("dnn", 0.9, time="2026-03-01T12:01:00Z")])
    assert marks_of(chart) == ["dnn: 90.00% on mnist_test, kept"]


def test_decisions_of_the_same_instant_are_each_plotted() -> None:
    same = "2026-03-01T12:00:00.000000Z"
    events = [
        gate_decision("dnn", 0.97, version="v1", time=same),
        gate_decision("cnn", 0.96, (DNN, 0.97), time=same),
    ]
    assert marks_of(accuracy_chart(events)) == [
        "dnn/v1: 97.00% on mnist_test, promoted",
        "cnn: 96.00% on mnist_test, kept",
    ]


def test_fifty_decisions_over_months_are_all_plotted_inside_the_chart() -> None:
    events = [
        gate_decision(
            ("cnn", "dnn", "linear")[i % 3],
            0.9 + (i % 7) / 100,
            (DNN, 0.95),
            f"v{i}" if i % 10 == 0 else None,
            time=(T0 + timedelta(days=3 * i)).isoformat(),
        )
        for i in range(50)
    ]
    chart = accuracy_chart(events)
    assert len(marks_of(chart)) == 50 and len(marks_of(chart, "rule mark")) == 5
    assert sum(name.endswith(", promoted") for name in marks_of(chart)) == 5


# What users see is what the log says: approvals, history cursors, caching, headers.

CNN = [VersionRef("cnn", f"20260101T00000{i}Z-0000000{i}") for i in (3, 4, 5)]


def asked_and_answered(root: Path) -> Registry:
    """After `three_decisions`: three CNN candidates the gate allowed, each waiting for a person;
    bob rejects the first, nobody answers the second, alice approves the third."""
    registry = three_decisions(root, kept=0)
    for index, (ref, answer) in enumerate(zip(CNN, ("rejected", None, "approved"), strict=True)):
        publish_scored_version(registry, ref, 0.98, root / "folders")
        gate = gate_decision("cnn", 0.98, (DNN, 0.97), ref.version)
        gate = replace(gate, promoted=False, approval="pending", run_id=f"run-{index}")
        record_event(registry, gate)
        if answer is not None:
            who = "alice" if answer == "approved" else "bob"
            said = replace(
                gate, kind="approval", approval=answer, approver=who, promoted=answer == "approved"
            )
            record_event(registry, said, crowned(ref, 0.98) if answer == "approved" else None)
    return registry


def test_every_view_tells_waiting_approved_and_rejected_decisions_apart(page_of, tmp_path: Path) -> None:
    registry = asked_and_answered(tmp_path)
    html = page_of(registry, "/")
    history = html.split('<table id="history">')[1].split("</table>")[0]
    cells = re.findall(r'<td class="(?:yes|no|pending)">([^<]*)', history)
    statuses = [html_module.unescape(cell) for cell in cells]
    assert statuses[:5] == [
        "yes: approved by alice",
        "asked for approval: yes: approved by alice",
        "waiting for approval",
        "no: rejected by bob",
        "asked for approval: no: rejected by bob",
    ]
    decisions = [name.split(", ")[-1] for name in marks_of(chart_of(html))]
    assert decisions == ["promoted", "promoted", "rejected", "waiting for approval", "approved"]
    rows = dict(re.findall(r'data-version="([^"]+)" data-approval="([\w-]+)"', html))
    assert rows == {str(CNN[0]): "rejected", str(CNN[1]): "pending", str(CNN[2]): "approved"}
    rejected = page_of(registry, f"/versions/{CNN[0]}")
    assert 'id="approval"' in rejected and "rejected by a person: not promoted" in rejected
    approved = page_of(registry, f"/versions/{CNN[2]}")
    assert 'id="approval"' not in approved and "no promoting decision recorded" not in approved


def test_history_cursors_page_correctly_and_a_garbage_cursor_is_a_400(
    page_of, signed_in, tmp_path: Path
) -> None:
    registry = three_decisions(tmp_path, kept=50)  # 52 events: a page of 50, then 2

    def rows(path: str) -> list[str]:
        return re.findall(r'<tr data-status="\w+"><td class="nowrap">([^<]+)', page_of(registry, path))

    newest = rows("/")
    older = re.search(r'id="older-history" href="\?before=([^"]+)"', page_of(registry, "/")).group(1)
    assert len(newest) == 50 and len(rows(f"/?before={older}")) == 2
    assert rows("/?before=") == newest and rows("/?before=2999-01-01T00:00:00Z") == newest
    assert rows("/?before=299901") == newest  # a month, as a page cut short at a shard names it
    assert rows(f"/?before={newest[10].replace('+00:00', 'Z')}")[0] == newest[11]
    assert "No events older than this point" in page_of(registry, "/?before=2000-01-01T00:00:00Z")
    for garbage in ("yesterday", "2026-13-01", "<b>", "2026-01-31T25:00"):
        response = signed_in(f"/?before={quote(garbage)}", headers=HTML)
        assert response.status_code == 400 and "names no page of history" in response.text
        assert "<b>" not in response.text


def test_the_overview_answers_304_to_its_etag_until_the_next_commit(
    signed_in, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    registry = three_decisions(tmp_path)
    monkeypatch.setenv("MNIST_REGISTRY_URI", registry.storage.root_uri)
    first = signed_in("/", headers=HTML)
    etag = first.headers["etag"]
    assert first.status_code == 200 and first.headers["cache-control"] == "private, no-cache"
    again = signed_in("/", headers=HTML | {"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    record_event(registry, gate_decision("linear", 0.931, (DNN, 0.97)))
    after = signed_in("/", headers=HTML | {"If-None-Match": etag})
    assert after.status_code == 200 and after.headers["etag"] != etag and "93.10%" in after.text


def test_report_files_are_never_sniffed_as_html(
    signed_in, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    registry = Registry(open_storage(str(tmp_path / "registry")))
    folder = tmp_path / "card"
    folder.mkdir()
    (folder / "model.keras").write_bytes(b"weights")
    (folder / "model_card.md").write_text("<html><script>alert(1)</script></html>")
    registry.publish(LINEAR, folder, {"metrics": headline(0.92)})
    monkeypatch.setenv("MNIST_REGISTRY_URI", registry.storage.root_uri)
    card = signed_in(f"/versions/{LINEAR}/files/model_card.md")
    assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
    assert card.headers["x-content-type-options"] == "nosniff"


def test_the_login_redirect_never_reflects_the_host_header(api) -> None:
    path = f"{URL_PREFIX}/versions/dnn/v1?tab=card"
    response = api.get(path, headers=HTML | {"Host": "evil.example"}, follow_redirects=False)
    location = response.headers["location"]
    assert response.status_code == 303 and "evil.example" not in location
    assert parse_qs(urlsplit(location).query)["next"] == [path]
