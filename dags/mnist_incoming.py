"""
### MNIST incoming labelled data

Every few minutes, takes the shards of new labelled digits that landed under
`<artifacts>/incoming/` (`.npz` with `images` N x 28 x 28 uint8 and `labels` 0-9), checks each
exactly once (never following a link; against base MNIST, the shards accepted before and, when
the registry has a champion, its confident predictions), moves valid ones to `accepted/`, those
whose labels look wrong to `quarantine/` and anything else to `rejected/`, each with a reason
file (see docs/incoming.md), and, once at least `MNIST_MIN_NEW_IMAGES` accepted images wait,
announces them with an event on the `mnist_new_labelled_data` asset, which schedules
`mnist_training`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, get_current_context, task

from mnist_pipeline.data.incoming import NEW_DATA_ASSET_NAME

NEW_LABELLED_DATA = Asset(NEW_DATA_ASSET_NAME)


def _artifacts(settings: Any) -> Any:  # a Storage; the library is imported inside tasks only
    from mnist_pipeline.storage import open_storage

    return open_storage(settings.artifacts_uri, settings)


@task
def process_shards() -> dict:
    """Claim, check and place every waiting entry; report what went where."""
    from mnist_pipeline.config import PipelineSettings
    from mnist_pipeline.data.incoming import INCOMING, ShardReport
    from mnist_pipeline.steps import process_new_data

    settings = PipelineSettings.from_env()  # once, as the task starts
    # Every entry counts, links and hidden names included: none may wait unreported.
    if not _artifacts(settings).entries(INCOMING):
        return ShardReport().to_dict()
    return process_new_data(settings, get_current_context()["run_id"]).to_dict()


@task(outlets=[NEW_LABELLED_DATA])
def announce(report: dict) -> dict:
    """Emit the asset event, once enough accepted images wait; skip (no event) below that."""
    from airflow.sdk.exceptions import AirflowSkipException

    from mnist_pipeline.config import PipelineSettings
    from mnist_pipeline.data.incoming import announce_pending

    settings = PipelineSettings.from_env()  # once, as the task starts
    threshold = settings.min_new_images
    announcement = announce_pending(_artifacts(settings), threshold)
    if announcement is None:
        raise AirflowSkipException(f"fewer than {threshold} new accepted images wait; no retraining yet")
    get_current_context()["outlet_events"][NEW_LABELLED_DATA].extra = announcement
    return announcement


with DAG(
    dag_id="mnist_incoming",
    schedule="*/5 * * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["mnist", "data"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
) as dag:
    # TaskFlow passes the XComArg, resolved to the report before `announce` runs.
    announce(process_shards())  # pyright: ignore[reportArgumentType]
