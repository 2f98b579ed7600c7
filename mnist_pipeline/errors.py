"""Every error the pipeline raises on purpose derives from `MnistPipelineError`.

Callers (the CLI, Airflow tasks, tests) can catch the base class and show its message: each
message names the offending input and what is wrong with it.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConflictError",
    "DataError",
    "MnistPipelineError",
    "RegistryError",
    "StorageError",
    "UnknownModelError",
    "VerificationRefused",
]


class MnistPipelineError(Exception):
    """Base class of every error raised by `mnist_pipeline`."""


class ConfigError(MnistPipelineError, ValueError):
    """A setting or parameter has a value the pipeline cannot use."""


class UnknownModelError(ConfigError, KeyError):
    """A model name is not in the table of architectures."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class DataError(MnistPipelineError, ValueError):
    """A data source cannot be read or does not hold valid MNIST."""


class StorageError(MnistPipelineError):
    """A storage location is unreachable, missing or malformed."""


class RegistryError(MnistPipelineError):
    """The model registry is missing something or holds something inconsistent."""


class ConflictError(RegistryError):
    """A registry change was refused because what it was based on moved since (optimistic
    concurrency): the message says what moved, when and by whom. Nothing was written."""


class VerificationRefused(MnistPipelineError):
    """A published version cannot be retrained from its recorded lineage (`mnist-pipeline verify`):
    its snapshot is gone, say, or the version it was warm-started from. The message says which."""
