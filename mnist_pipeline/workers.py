"""How a worker names itself in the task instances it runs (`[core] hostname_callable`).

Containers each have their own host name; several workers on one machine do not, so a worker
started with `MNIST_WORKER_NAME=gpu` records `gpu@<host>` and its task instances say which worker
ran them. The queue and pool of the training tasks are settings (`config.PipelineSettings`).
"""

from __future__ import annotations

import socket

from mnist_pipeline.config import PipelineSettings

__all__ = ["hostname_of", "worker_hostname"]


def worker_hostname() -> str:
    """Airflow's `[core] hostname_callable`: Airflow calls it without arguments, so it is an entry
    point of its own and reads `MNIST_WORKER_NAME` itself."""
    return hostname_of(PipelineSettings.from_env().worker_name)


def hostname_of(worker_name: str) -> str:
    """`<worker_name>@<host>`, or the host alone for a worker without a name."""
    host = socket.getfqdn()
    return f"{worker_name}@{host}" if worker_name else host
