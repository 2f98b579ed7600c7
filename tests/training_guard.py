"""A test not marked slow trains nothing: `make test-fast` (`-m "not slow"`) stays fast.

Every model this suite trains goes through Keras' Model.fit (the trainer, `steps.train` and
in-process DAG runs alike). While a test not marked slow runs, from its setup (module-scoped
fixtures that train count too) to the end of its body, Model.fit and Model.train_on_batch raise,
and the test fails naming the marker it lacks, even where the caller (an Airflow task) swallows
the exception.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

FAST_TEST_TRAINS = "this test trains a model: mark it @pytest.mark.slow"
# The module that defines keras.Model, whichever import path (keras, tf.keras) loads it first.
KERAS_MODEL_MODULE = "keras.src.models.model"
GUARDED_METHODS = ("fit", "train_on_batch")


class TrainingInFastTest(RuntimeError):
    pass


class TrainingGuard:
    """Refuses Model.fit and Model.train_on_batch while armed, and remembers that it did."""

    def __init__(self) -> None:
        self.armed = False
        self.refused: list[str] = []

    def patch(self, module: ModuleType) -> None:
        model = module.Model
        for name in GUARDED_METHODS:
            setattr(model, name, self._refusing(getattr(model, name)))

    def _refusing(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def refusing(*args: Any, **kwargs: Any) -> Any:
            if self.armed:
                self.refused.append(f"keras.Model.{method.__name__}")
                raise TrainingInFastTest(FAST_TEST_TRAINS)
            return method(*args, **kwargs)

        return refusing

    def start(self, item: pytest.Item) -> None:
        self.armed = item.get_closest_marker("slow") is None
        self.refused.clear()

    def check(self) -> None:
        if self.refused:
            called = ", ".join(sorted(set(self.refused)))
            pytest.fail(f"{FAST_TEST_TRAINS} (it called {called})", pytrace=False)


class AfterImport(importlib.abc.MetaPathFinder):
    """Runs `then(module)` right after the module `name` is first executed. Importing Keras up
    front would cost every run of the suite seconds; most fast tests never load it."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once only; the finders after it locate the module
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module

            def execute_then(module: ModuleType) -> None:
                execute(module)
                self.then(module)

            spec.loader.exec_module = execute_then  # type: ignore[method-assign]
        return spec


TRAINING_GUARD = TrainingGuard()
if KERAS_MODEL_MODULE in sys.modules:
    TRAINING_GUARD.patch(sys.modules[KERAS_MODEL_MODULE])
else:
    sys.meta_path.insert(0, AfterImport(KERAS_MODEL_MODULE, TRAINING_GUARD.patch))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    TRAINING_GUARD.start(item)
    try:
        return (yield)
    finally:
        TRAINING_GUARD.check()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    finally:
        TRAINING_GUARD.armed = False
        TRAINING_GUARD.check()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    TRAINING_GUARD.armed = False  # also where setup failed and the body never ran
