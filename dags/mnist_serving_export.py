"""
### MNIST serving export

Runs whenever the champion moves (an event on the `mnist_champion` asset, which `mnist_training`'s
`release` task emits) and copies the champion's SavedModel to TF Serving's layout:
`<registry>/serving/mnist/<n>/` (`saved_model.pb` + `variables/`), `n` one more than the highest
number there, with `<n>.json` beside it naming the registry version. A TF Serving instance with
`--model_base_path=<registry>/serving/mnist` picks up each new champion.

Active from the start (not paused like new DAGs): its first run, as soon as the DAG is parsed,
exports the current champion, so a champion made before (by `make demo`, say) is served without
anyone unpausing anything. It also runs daily at 04:00 UTC and at once after a pause: asset events
that arrive while a DAG is paused queue nothing, and such a run exports a champion they missed
(writing nothing when the newest export already is the champion).

The version comes from the triggering event's extra (the newest, when several were merged into one
run), or the current champion for a run started by the clock or by hand. Every file is checked
against the sha256 the registry recorded before anything is written; a version already exported as
the newest number writes nothing; a version no longer champion is not exported, and with no
champion yet there is nothing to export (the task is skipped, saying why).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, get_current_context, task

from mnist_pipeline.registry.release import CHAMPION_ASSET_NAME

CHAMPION = Asset(CHAMPION_ASSET_NAME)
# With a start_date in the past and no catchup, the latest past slot runs as soon as the DAG is
# active (first parsed, or unpaused): the current champion is exported then, events or not.
RECONCILE = CronTriggerTimetable("0 4 * * *", timezone="UTC")


@task
def export() -> dict:
    """Export the released version (or, started by the clock or by hand, the current champion)."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from mnist_pipeline.config import PipelineSettings
    from mnist_pipeline.errors import RegistryError
    from mnist_pipeline.registry.client import Registry
    from mnist_pipeline.registry.release import release_from_extras
    from mnist_pipeline.registry.serving_export import NoChampionError, export_release

    registry = Registry.from_settings(PipelineSettings.from_env())  # settings read once, here
    events = get_current_context()["triggering_asset_events"].get(CHAMPION, [])
    oldest_first = sorted(events, key=lambda event: event.timestamp)  # several merged into one run
    try:
        release = release_from_extras([event.extra for event in oldest_first])
        outcome = export_release(registry, release)
    except NoChampionError as exc:  # the first champion's event will start the export
        raise AirflowSkipException(f"{exc}: the first champion's mnist_champion event exports it") from exc
    except RegistryError as exc:  # a malformed event or a tampered file: a retry fails the same way
        raise AirflowFailException(str(exc)) from exc
    if outcome.number is None:
        raise AirflowSkipException(outcome.note)
    return outcome.to_dict()


with DAG(
    dag_id="mnist_serving_export",
    schedule=AssetOrTimeSchedule(timetable=RECONCILE, assets=[CHAMPION]),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    is_paused_upon_creation=False,  # follows the champion from the start: no unpause needed
    max_active_runs=1,
    tags=["mnist", "serving"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
) as dag:
    export()
