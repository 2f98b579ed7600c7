"""`make airflow` (`scripts/airflow_ui.py`): the Airflow UI on this machine, in one command.

The slow tests run the wrapper as `make airflow` does, on a free port with an AIRFLOW_HOME, a
registry and artifacts of their own (the developer's `.local` stays untouched; the registry
already holds two versions: a weak linear champion, then a DNN that beat it), sign in with the
password it prints, open the plugin's page and find the DAG. Then headless Chromium (Debian's
/usr/bin/chromium, driven by Playwright; `browser_steps.py`) signs in as a user and, in one
scenario: opens the trigger form (Models is a multi-select of the known models), submits epochs = 0
and reads the refusal naming the field, triggers a small linear run from the form's fields
(unpausing the DAG starts nothing else), reads the training log (epoch lines, no TensorFlow
start-up notices), follows the promote task's "Model Registry" link to that run's verdict inside
Airflow, opens the registry from the navigation and finds the accuracy chart, then a version's
comparison with the champion. Screenshots land in `$MNIST_TEST_ARTIFACTS/screenshots` (else the
test's temporary folder). Last, Ctrl-C (SIGINT): the wrapper exits 0 and leaves no process
behind. One Airflow serves them all. The fast tests check that it refuses to start where it cannot.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.registry.gate import GateConfig
from mnist_pipeline.registry.promotion import PromotionOptions, promote
from tests import browser_steps as steps
from tests.airflow_api import AirflowApi, wait_until
from tests.ports import free_port
from tests.trained_runs import evaluate_runs

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "airflow_ui.py"
READY_TIMEOUT_S = 300  # 30-110 s seen on 2 busy cores: the database, then four components
DAG_TIMEOUT_S = 120  # the dag-processor parses the DAG files after it starts
IDLE_TIMEOUT_S = 180  # the serving export's first run takes seconds; a busy machine slows it
# A task run (`airflow worker -- <id>`) or a worker busy with one; an idle worker says `<idle>`.
BUSY = re.compile(r"airflow worker -- (?!LocalExecutor: <idle>)")
STOP_TIMEOUT_S = 60  # the wrapper's own bound is 30 s of SIGTERM, then SIGKILL
CHROMIUM = Path("/usr/bin/chromium")
# Seeds: a weak first champion, then a DNN that beats it; the run the browser triggers is kept.
SEED_RUNS = {"seed-linear": ("linear", 1000, 1), "seed-dnn": ("dnn", 6000, 1)}


def wrapper_env(tmp_path: Path, port: int) -> dict[str, str]:
    """The environment of `make airflow`, with every place it writes under `tmp_path`."""
    return os.environ | {
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW_PORT": str(port),
        "MNIST_REGISTRY_URI": str(tmp_path / "registry"),  # the registry page writes its index
        "MNIST_ARTIFACTS_URI": str(tmp_path / "artifacts"),
    }


@dataclass
class Wrapper:
    """The running wrapper and what it printed so far (read on a thread, so its pipe never fills)."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def printed(self, pattern: str) -> str | None:
        match = re.search(pattern, self.output)
        return match.group(1) if match else None


def start_wrapper(env: dict[str, str], *args: str) -> Wrapper:
    # A session of its own, as a terminal gives `make airflow`: our SIGINT reaches it alone.
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return Wrapper(process)


def live_processes(sessions: set[int]) -> list[psutil.Process]:
    """Every process of these sessions that still runs (a zombie has ended; its reaper is late)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) in sessions and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue  # ended meanwhile
    return found


def busy_processes(sessions: set[int]) -> list[str]:
    """The titles of task runs and of workers busy with one (a task's process starts as a fork of
    its worker, with the worker's title)."""
    titles = []
    for proc in live_processes(sessions):
        try:
            titles.append(" ".join(proc.cmdline()))
        except psutil.Error:
            continue  # ended meanwhile
    return [title for title in titles if BUSY.match(title)]


def idle(api: AirflowApi, sessions: set[int]) -> bool:
    """The serving export's first run, which starts unpaused once parsed, has ended, and no task
    runs: the Airflow as a user leaves it between runs."""
    runs = api.call("GET", "/api/v2/dags/mnist_serving_export/dagRuns")["dag_runs"]
    ended = bool(runs) and all(run["state"] in ("success", "failed") for run in runs)
    return ended and not busy_processes(sessions)


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunningUi:
    wrapper: Wrapper
    home: Path  # the test's AIRFLOW_HOME
    address: str
    username: str
    password: str
    sessions: set[int]  # the wrapper's session and standalone's
    groups: set[int]  # every process group seen while it ran


def sessions_and_groups(root: int) -> tuple[set[int], set[int]]:
    """The sessions and process groups of `root` and every process below it."""
    sessions, groups = set(), set()
    procs = [psutil.Process(root)]
    procs += procs[0].children(recursive=True)
    for proc in procs:
        try:
            sessions.add(os.getsid(proc.pid))
            groups.add(os.getpgid(proc.pid))
        except OSError:
            continue
    return sessions, groups


def stop_wrapper(process: subprocess.Popen[str]) -> None:
    """The safety net when a test failed half-way: Ctrl-C, so the wrapper stops Airflow itself."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, mnist_npz: Path) -> Iterator[RunningUi]:
    """The wrapper over a registry seeded with two promotions, started, once it printed how to
    sign in. One Airflow serves every test here, the browser's included: the Ctrl-C test runs last."""
    tmp_path = tmp_path_factory.mktemp("airflow-ui")
    env = wrapper_env(tmp_path, free_port()) | {"MNIST_SOURCE": str(mnist_npz)}
    seed_registry(env, mnist_npz)
    wrapper = start_wrapper(env)
    wait_until(lambda: "Ctrl-C" in wrapper.output or wrapper.process.poll() is not None, READY_TIMEOUT_S)
    address, password = wrapper.printed(r"ready: (http://\S+)"), wrapper.printed(r"password: +(\S+)")
    if wrapper.process.poll() is not None or not (address and password):
        stop_wrapper(wrapper.process)
        pytest.fail(f"the wrapper did not get ready:\n{wrapper.output}", pytrace=False)
    sessions, groups = sessions_and_groups(wrapper.process.pid)
    username = wrapper.printed(r"user: +(\S+)") or ""
    home = Path(env["AIRFLOW_HOME"])
    yield RunningUi(wrapper, home, address, username, password, sessions, groups)
    stop_wrapper(wrapper.process)
    for proc in live_processes(sessions):
        proc.kill()


def seed_registry(env: dict[str, str], mnist_npz: Path) -> None:
    """Two real runs promoted through the gate (its floor lowered for models trained this briefly):
    a weak linear champion, then a DNN that beat it."""
    evaluations = evaluate_runs(env["MNIST_ARTIFACTS_URI"], mnist_npz, SEED_RUNS)
    settings = PipelineSettings(
        source=str(mnist_npz),
        artifacts_uri=env["MNIST_ARTIFACTS_URI"],
        registry_uri=env["MNIST_REGISTRY_URI"],
    )
    options = PromotionOptions(gate=GateConfig(floor=0.5))
    for run_id, evaluation in evaluations.items():
        assert promote([evaluation], settings, run_id, options).promoted


@pytest.mark.slow
def test_prints_the_address_user_and_password(ui: RunningUi) -> None:
    port = ui.address.rsplit(":", 1)[1]
    assert ui.address == f"http://localhost:{port}"
    assert ui.username == "admin"
    # The test's AIRFLOW_HOME, not the developer's .local/airflow; Airflow's own output went there.
    assert f"AIRFLOW_HOME={ui.home}" in ui.wrapper.output
    assert str(ui.home / "standalone.log") in ui.wrapper.output
    assert (ui.home / "standalone.log").stat().st_size > 0


@pytest.mark.slow
def test_the_address_answers(ui: RunningUi) -> None:
    status, body = AirflowApi(ui.address).request("GET", "/api/v2/monitor/health")
    assert status == 200
    assert json.loads(body)["metadatabase"]["status"] == "healthy"


@pytest.mark.slow
def test_the_printed_password_signs_in(ui: RunningUi) -> None:
    api = AirflowApi(ui.address)
    api.sign_in(ui.username, ui.password)
    assert api.token


@pytest.mark.slow
def test_the_plugin_page_is_served(ui: RunningUi) -> None:
    api = AirflowApi(ui.address)
    api.sign_in(ui.username, ui.password)
    status, body = api.request("GET", "/model-registry/")
    assert status == 200, f"/model-registry/ answered {status}: {body[:300]!r}"  # 404: no plugin


@pytest.mark.slow
def test_the_dag_is_listed(ui: RunningUi) -> None:
    api = AirflowApi(ui.address)
    api.sign_in(ui.username, ui.password)
    dag_ids = wait_until(lambda: "mnist_training" in (ids := api.dag_ids()) and ids, DAG_TIMEOUT_S, 2.0)
    assert dag_ids and "mnist_training" in dag_ids, f"DAGs listed after {DAG_TIMEOUT_S} s: {api.dag_ids()}"


@pytest.mark.slow
def test_idle_it_keeps_two_task_workers_per_core_up_to_4_in_under_2_5_gb(ui: RunningUi) -> None:
    """Airflow's default parallelism, 32, forked 32 LocalExecutor workers that held 6.6 GB idle."""
    slots = min(2 * len(os.sched_getaffinity(0)), 4)
    assert ui.wrapper.printed(r"tasks: +at most (\d+) at once") == str(slots)
    api = AirflowApi(ui.address)
    api.sign_in(ui.username, ui.password)
    assert wait_until(lambda: "mnist_training" in api.dag_ids(), DAG_TIMEOUT_S, 2.0)  # parsed
    settled = wait_until(lambda: idle(api, ui.sessions), IDLE_TIMEOUT_S, 1.0)
    assert settled, f"not idle after {IDLE_TIMEOUT_S} s: {busy_processes(ui.sessions)}"
    procs = live_processes(ui.sessions)
    titles = [" ".join(proc.cmdline()) for proc in procs]
    workers = [title for title in titles if title.startswith("airflow worker -- LocalExecutor")]
    assert 0 < len(workers) <= slots, titles
    sizes = [proc.memory_info().rss for proc in procs]
    print(f"\nidle: {len(procs)} processes, {len(workers)} task workers, {sum(sizes) / 1e9:.2f} GB RSS")
    table = [f"{size / 1e6:6.0f} MB  {title[:90]}" for size, title in zip(sizes, titles, strict=True)]
    assert sum(sizes) <= 2.5e9, "\n".join(table)


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MNIST_TEST_ARTIFACTS") or tmp_path) / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser_page(ui: RunningUi) -> Iterator[Any]:
    """A signed-in page: Airflow's login form, filled with what `make airflow` printed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(f"{ui.address}/")
        page.wait_for_url("**/auth/login**")
        page.get_by_label("Username").fill(ui.username)
        page.get_by_label("Password").fill(ui.password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{ui.address}/")
        yield page
        browser.close()


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")
def test_a_user_triggers_a_run_and_follows_it_to_the_registry(
    ui: RunningUi, browser_page: Any, screenshots: Path
) -> None:
    """Headless Chromium: the trigger form refuses epochs = 0 naming the field, then triggers a
    small linear run from its own fields (unpausing starts nothing else); the training log is quiet;
    the promote task's link opens the run's verdict; the registry's chart and a version's
    comparison with the champion are there."""
    page, address = browser_page, ui.address
    api = AirflowApi.signed_in(address, ui.username, ui.password)
    shots: list[Path] = []

    def shot(name: str) -> None:
        shots.append(screenshots / f"{len(shots) + 1:02d}_{name}.png")
        page.screenshot(path=str(shots[-1]), full_page=True)

    dialog = steps.open_trigger_form(page, address)
    dialog.get_by_text("Unpause mnist_training on trigger").wait_for()  # the DAG starts paused
    refused = steps.submit_conf(page, dialog, {"models": ["linear"], "epochs": 0})
    assert re.search(r"Invalid input for param epochs: 0 is less than the minimum of 1", refused)
    shot("trigger_form_refuses_epochs_0")
    steps.assert_unpaused_with_no_run(api)  # the form unpauses before it submits: nothing may start

    run_id = steps.trigger_small_linear_run(page, address, shot)
    shot("run_triggered")
    steps.assert_one_run_only(api, run_id)
    steps.wait_for_success(api, run_id)

    steps.assert_quiet_training_log(page, address, run_id)
    shot("training_log_quiet")
    steps.follow_the_extra_link(page, address, run_id)
    shot("extra_link_opens_the_run_verdict")
    steps.open_registry_from_navigation(page, address)
    shot("registry_accuracy_chart")
    steps.open_a_version_against_the_champion(page, address)
    shot("version_compared_with_champion")
    print("\nscreenshots:\n" + "\n".join(str(path) for path in shots))


@pytest.mark.slow
def test_ctrl_c_stops_everything(ui: RunningUi) -> None:
    """Runs last: SIGINT, as Ctrl-C sends it; the wrapper exits 0 and no process it started is left."""
    assert len(ui.groups) > 1, "standalone's process group was not seen"
    ui.wrapper.process.send_signal(signal.SIGINT)
    code = ui.wrapper.process.wait(STOP_TIMEOUT_S)
    assert code == 0, ui.wrapper.output
    assert "Airflow stopped." in ui.wrapper.output
    assert live_processes(ui.sessions) == []
    # Each group is gone once its ended members are reaped, by init for the orphans: a few seconds.
    gone = wait_until(lambda: not any(group_exists(group) for group in ui.groups), 20.0, 0.5)
    assert gone, f"process groups left: {[group for group in ui.groups if group_exists(group)]}"


@pytest.mark.parametrize("how", ["AIRFLOW_PORT", "--port"])
def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path, how: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = wrapper_env(tmp_path, port) if how == "AIRFLOW_PORT" else wrapper_env(tmp_path, free_port())
        args = ["--port", str(port)] if how == "--port" else []
        result = subprocess.run(
            [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode != 0
    assert f"Port {port} is already in use" in result.stderr
    assert not (tmp_path / "airflow" / "standalone.log").exists()  # Airflow never started


def test_a_second_instance_on_the_same_home_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "airflow"
    home.mkdir()
    with open(home / "airflow-ui.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running wrapper holds it
        env = wrapper_env(tmp_path, free_port())
        result = subprocess.run(
            [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode != 0
    assert "Another `make airflow` runs with AIRFLOW_HOME=" in result.stderr
    assert not (home / "standalone.log").exists()
