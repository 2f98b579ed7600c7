"""How a worker names itself in the task instances it runs (`[core] hostname_callable`).

Containers each have their own host name; several workers on one machine do not, so a worker
started with `MNIST_WORKER_NAME=gpu` records `gpu@<host>` and its task instances say which worker
ran them. The queue and pool of the training tasks are settings (`config.PipelineSettings`).
"""

from __future__ import annotations

import socket

from mnist_pipeline.config import settings

__all__ = ["worker_hostname"]


def worker_hostname() -> str:
    host = socket.getfqdn()
    name = settings().worker_name
    return f"{name}@{host}" if name else host
