"""The guard of tests/training_guard.py: a test not marked slow that trains fails, naming the marker."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.training_guard import FAST_TEST_TRAINS, TRAINING_GUARD, TrainingInFastTest

REFUSAL = re.escape(FAST_TEST_TRAINS)


def tiny_model():
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    return model


def test_a_test_not_marked_slow_cannot_fit_or_train_on_a_batch() -> None:
    model, x, y = tiny_model(), np.zeros((4, 2)), np.zeros((4, 1))
    with pytest.raises(TrainingInFastTest, match=REFUSAL):
        model.fit(x, y, verbose=0)
    with pytest.raises(TrainingInFastTest, match=REFUSAL):
        model.train_on_batch(x, y)
    assert TRAINING_GUARD.refused == ["keras.Model.fit", "keras.Model.train_on_batch"]
    TRAINING_GUARD.refused.clear()  # refused on purpose: this test passes


def test_a_refusal_the_caller_swallowed_still_fails_the_test() -> None:
    TRAINING_GUARD.refused.append("keras.Model.fit")  # as an Airflow task that caught the error leaves it
    with pytest.raises(pytest.fail.Exception, match=REFUSAL):
        TRAINING_GUARD.check()
    TRAINING_GUARD.refused.clear()


@pytest.mark.slow
def test_a_test_marked_slow_trains() -> None:
    history = tiny_model().fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=1, verbose=0)
    assert len(history.epoch) == 1
