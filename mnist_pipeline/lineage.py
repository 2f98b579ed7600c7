"""OpenLineage: what each task of `mnist_training` read and wrote, as OpenLineage datasets.

Airflow's OpenLineage provider sends a START and a COMPLETE event for every task. A `@task` has no
extractor and reports nothing to the hook lineage collector, so the provider takes the task's
`inlets` and `outlets`, which may hold OpenLineage datasets: each step puts its own there once it
knows the URIs and content hashes (`ingested`, `trained`, `evaluated`, `promoted`), and the task's
COMPLETE event lists them. The hook lineage collector is not used: it names only URIs whose scheme
an installed provider maps (here `file`; `gs` needs the Google provider, `https` has none), drops
facets, and in `airflow dags test`, where every task runs in one process, it would hand one task's
datasets on to the next.

Nothing happens without Airflow, outside a running task (the CLI calls the same steps), or while
OpenLineage is not configured: with no transport, the provider disables itself.

Names follow the OpenLineage naming spec: namespace `gs://<bucket>` and the object's path; `file`
and the absolute path for a local file (as Airflow's file assets and the client's `LocalFileSystem`
name it); `https://<host>` and the path for a downloaded source.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.data.snapshot import SnapshotInfo, snapshot_uri
from mnist_pipeline.evaluation.record import EvaluationRecord
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.storage import Storage
from mnist_pipeline.training.record import TrainingRecord

if TYPE_CHECKING:
    from mnist_pipeline.registry.promotion import PromotionOutcome

__all__ = [
    "FILE",
    "MODEL",
    "LineageDataset",
    "dataset_name",
    "evaluated",
    "ingested",
    "promoted",
    "report",
    "trained",
]

log = logging.getLogger(__name__)
FILE, MODEL = "FILE", "MODEL"  # values of the `datasetType` facet: data files, trained models


@dataclass(frozen=True)
class LineageDataset:
    """One dataset a task read or wrote, by URI: gs://, https://, file:// or a local path."""

    uri: str
    version: str | None = None  # its content hash or registry version: the `version` facet
    kind: str = FILE  # the `datasetType` facet
    splits: Mapping[str, str] = field(default_factory=dict)  # parts read (name -> hash): `subset`


def dataset_name(uri: str) -> tuple[str, str]:
    """(namespace, name) of `uri` under the OpenLineage naming spec."""
    parts = urlsplit(uri)
    if not parts.scheme:  # a local path; taken whole, since `#` and `?` are legal in file names
        return "file", os.path.abspath(uri)
    if parts.scheme == "file":
        path = unquote(parts.path)
        local = parts.netloc in ("", "localhost")
        return ("file", path) if local else (f"file://{parts.netloc}", path)
    if parts.scheme in ("gs", "gcs"):
        return f"gs://{parts.netloc}", parts.path.lstrip("/") or "/"
    # Any other URL (the https:// source): no query and no fragment in the name; `#sha256=` pins
    # the content, which the `version` facet carries.
    return f"{parts.scheme}://{parts.netloc}", parts.path or "/"


def ingested(snapshot: SnapshotInfo, sources: Iterable[Mapping[str, Any]]) -> None:
    """ingest: the MNIST source and the accepted shards in (the manifest's `sources`), the
    content-addressed snapshot out."""
    inputs = [LineageDataset(source["uri"], source.get("sha256")) for source in sources]
    report(inputs, [LineageDataset(snapshot.uri, snapshot.data_hash)])


def trained(snapshot: SnapshotInfo, training: TrainingRecord) -> None:
    """train: the snapshot in (and the champion, when its weights were the start), the model out."""
    inputs = [LineageDataset(snapshot.uri, snapshot.data_hash)]
    origin = training.initialized_from
    if origin:
        inputs.append(LineageDataset(origin["uri"], origin.get("version"), MODEL))
    report(inputs, [_model(training)])


def evaluated(evaluation: EvaluationRecord, artifacts: Storage) -> None:
    """evaluate: the model and the snapshot's test split (and new-data slice) in, the metrics out."""
    splits = {"test": evaluation.test_hash}
    if evaluation.new_data_hash:
        splits["new_data"] = evaluation.new_data_hash
    data_uri = snapshot_uri(artifacts, evaluation.data_hash)
    data = LineageDataset(data_uri, evaluation.data_hash, splits=splits)
    report([_model(evaluation), data], [LineageDataset(evaluation.metrics_uri)])


def promoted(
    evaluations: Sequence[EvaluationRecord], outcome: PromotionOutcome, settings: PipelineSettings
) -> None:
    """promote: the evaluated models in; out, the registry version it published, if any (none when
    the gate said no, nor in a dry run)."""
    if _running_task() is None:  # spares opening the registry when nothing is reported
        return
    outputs = []
    if outcome.version and not outcome.dry_run:
        registry = Registry.from_settings(settings)
        uri = registry.uri(VersionRef(outcome.model, outcome.version))
        outputs.append(LineageDataset(uri, outcome.version, MODEL))
    report([_model(evaluation) for evaluation in evaluations], outputs)


def _model(record: TrainingRecord | EvaluationRecord) -> LineageDataset:
    return LineageDataset(record.model_uri, record.model_sha256, MODEL)


def report(inputs: Sequence[LineageDataset], outputs: Sequence[LineageDataset]) -> None:
    """Make `inputs` and `outputs` the running task's lineage, which the OpenLineage provider sends
    in its COMPLETE event. One call per task: each replaces the datasets an earlier call set."""
    task = _running_task()
    if task is None:
        return
    try:
        _replace(task.inlets, [_openlineage(dataset, output=False) for dataset in inputs])
        _replace(task.outlets, [_openlineage(dataset, output=True) for dataset in outputs])
    except Exception:  # lineage is a side channel: a bug here must not fail a training run
        log.warning("OpenLineage: could not report the lineage of %s", task.task_id, exc_info=True)


def _running_task() -> Any | None:
    """The running Airflow task, when OpenLineage is on; else None."""
    if "airflow.sdk" not in sys.modules:  # no task runs in this process: spare importing Airflow
        return None
    from airflow.sdk import get_current_context

    try:
        task = get_current_context()["task"]
    except RuntimeError:  # Airflow is loaded, but no task is running (a test, the CLI)
        return None
    try:
        from airflow.providers.openlineage.conf import is_disabled
    except ImportError:  # without the provider, nothing would read the lineage
        return None
    return None if is_disabled() else task


def _replace(lineage: list[Any], datasets: list[Any]) -> None:
    """Put `datasets` in a task's inlets or outlets in place of the OpenLineage datasets there: a
    task run again in the same process (`dag.test()` twice) must not report the last run's. Assets
    stay: Airflow emits their events."""
    from openlineage.client.event_v2 import Dataset

    lineage[:] = [item for item in lineage if not isinstance(item, Dataset)] + datasets


def _openlineage(dataset: LineageDataset, output: bool) -> Any:
    """The OpenLineage input or output dataset, with its `datasetType`, `version` and `subset` facets."""
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import base_subset_dataset, dataset_type_dataset, dataset_version_dataset

    namespace, name = dataset_name(dataset.uri)
    facets: dict[str, Any] = {"datasetType": dataset_type_dataset.DatasetTypeDatasetFacet(dataset.kind)}
    if dataset.version:
        facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(dataset.version)
    if output:
        return OutputDataset(namespace, name, facets=facets)
    input_facets: dict[str, Any] = {}
    if dataset.splits:
        partitions = [
            base_subset_dataset.Partition(dimensions={"split": split}, identifier=digest)
            for split, digest in dataset.splits.items()
        ]
        condition = base_subset_dataset.PartitionSubsetCondition(partitions=partitions)
        input_facets["subset"] = base_subset_dataset.InputSubsetInputDatasetFacet(inputCondition=condition)
    return InputDataset(namespace, name, facets=facets, inputFacets=input_facets)
