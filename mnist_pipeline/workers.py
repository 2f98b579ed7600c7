"""Where tasks run: the queue and pool of the training tasks, and how a worker names itself.

Training is the only step that wants an accelerator, so only `train` tasks are routed: to the
Celery queue `MNIST_TRAIN_QUEUE` (the GPU workers listen on it) and into the Airflow pool
`MNIST_TRAIN_POOL`, whose slots are sized to the GPUs so two trainings never share one GPU unless
the pool is made larger on purpose. Read at DAG parse time: no TensorFlow here.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping

from mnist_pipeline.errors import ConfigError

__all__ = ["DEFAULT_POOL", "DEFAULT_QUEUE", "train_pool", "train_queue", "worker_hostname"]

DEFAULT_QUEUE = "default"  # Airflow's [operators] default_queue
DEFAULT_POOL = "default_pool"  # exists in every Airflow installation
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def train_queue(env: Mapping[str, str] | None = None) -> str:
    """The queue of the `train` tasks: `MNIST_TRAIN_QUEUE`, else Airflow's default queue."""
    return _checked_name(env, "MNIST_TRAIN_QUEUE", DEFAULT_QUEUE)


def train_pool(env: Mapping[str, str] | None = None) -> str:
    """The pool of the `train` tasks: `MNIST_TRAIN_POOL`, else Airflow's default pool."""
    return _checked_name(env, "MNIST_TRAIN_POOL", DEFAULT_POOL)


def worker_hostname() -> str:
    """The name a task instance records as its host (`[core] hostname_callable`).

    Containers each have their own host name; several workers on one machine do not, so a worker
    started with `MNIST_WORKER_NAME=gpu` records `gpu@<host>` and its task instances say which
    worker ran them.
    """
    host = socket.getfqdn()
    name = os.environ.get("MNIST_WORKER_NAME")
    return f"{name}@{host}" if name else host


def _checked_name(env: Mapping[str, str] | None, variable: str, default: str) -> str:
    value = (os.environ if env is None else env).get(variable) or default
    if not _NAME.match(value):
        raise ConfigError(f"environment variable {variable} must be a plain name, got {value!r}")
    return value
