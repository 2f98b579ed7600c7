"""The promotion policy over slices: better somewhere (McNemar, Holm), worse nowhere, no digit left
behind; small slices are reported, not gated."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_pipeline.errors import ConfigError
from mnist_pipeline.registry.gate import MNIST_TEST, NEW_DATA, GateConfig, Slice, Verdict, holm, judge

TEST_LABELS = np.repeat(np.arange(10, dtype=np.uint8), 1000)  # 1,000 images of each digit


def with_errors(labels: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """`labels` predicted right except at the indices `wrong` (predicted as the next digit)."""
    predictions = labels.copy()
    predictions[wrong] = (labels[wrong] + 1) % 10
    return predictions


def digit_indices(digit: int, count: int, labels: np.ndarray = TEST_LABELS) -> np.ndarray:
    return np.flatnonzero(labels == digit)[:count]


def mnist_test(challenger_wrong: np.ndarray, champion_wrong: np.ndarray) -> Slice:
    return Slice(
        MNIST_TEST,
        TEST_LABELS,
        with_errors(TEST_LABELS, challenger_wrong),
        with_errors(TEST_LABELS, champion_wrong),
    )


def new_data(images: int, challenger_errors: int, champion_errors: int) -> Slice:
    labels = np.arange(images, dtype=np.uint8) % 10
    everyone = np.arange(images)
    return Slice(
        NEW_DATA,
        labels,
        with_errors(labels, everyone[:challenger_errors]),
        with_errors(labels, everyone[:champion_errors]),
    )


# The champion misses 8 images of every digit (80 in all).
CHAMPION_WRONG = np.concatenate([digit_indices(digit, 8) for digit in range(10)])


def assert_promoted(verdict: Verdict, rule: str = "better") -> None:
    assert verdict.promote, verdict.reason
    assert verdict.rule == rule


def assert_not_promoted(verdict: Verdict, rule: str, *words: str) -> None:
    assert not verdict.promote, verdict.reason
    assert verdict.rule == rule, verdict.reason
    for word in words:
        assert word in verdict.reason


def test_a_challenger_better_overall_but_worse_on_one_digit_is_refused_naming_it() -> None:
    # Fixes every error on digits other than 7 (72 images), but misses 15 more 7s (1.5 points of recall).
    sevens = digit_indices(7, 8 + 15)
    verdict = judge([mnist_test(sevens, CHAMPION_WRONG)], GateConfig())
    assert verdict.challenger_accuracy > verdict.champion_accuracy
    assert_not_promoted(verdict, "recall", "digit 7", "1.50 points")
    assert verdict.recall_drops["7"] == pytest.approx(0.015)


def test_an_overwhelmingly_better_challenger_whose_p_value_underflows_is_promoted() -> None:
    # The champion misses 200 images of every digit, the challenger none: McNemar's exact p-value
    # for b=0, c=2000 is 2 / 2**2000, below the smallest float.
    champion_wrong = np.concatenate([digit_indices(digit, 200) for digit in range(10)])
    verdict = judge([mnist_test(np.array([], dtype=int), champion_wrong)], GateConfig())
    assert verdict.p_value == 0.0 and verdict.slices[0].adjusted_p_value == 0.0
    assert_promoted(verdict)


def test_a_recall_drop_within_the_limit_does_not_block() -> None:
    sevens = digit_indices(7, 8 + 9)  # 0.9 points of digit 7's recall
    assert_promoted(judge([mnist_test(sevens, CHAMPION_WRONG)], GateConfig()))


def test_a_recall_drop_of_exactly_the_limit_passes_and_one_image_more_is_refused() -> None:
    at_limit = digit_indices(7, 8 + 10)  # 1.00 point of digit 7's recall: "at most 1 point"
    verdict = judge([mnist_test(at_limit, CHAMPION_WRONG)], GateConfig())
    assert_promoted(verdict)
    assert verdict.recall_drops["7"] == pytest.approx(0.010)
    beyond = digit_indices(7, 8 + 11)  # 1.10 points
    assert_not_promoted(judge([mnist_test(beyond, CHAMPION_WRONG)], GateConfig()), "recall", "1.10 points")


def test_new_data_decides_when_mnist_test_is_within_the_non_inferiority_margin() -> None:
    # 8 more errors on mnist_test, one on each of eight digits: 0.08 points below the champion,
    # within the 0.1-point non-inferiority margin (and 0.1 points of recall each).
    slightly_worse = np.concatenate([CHAMPION_WRONG, *(digit_indices(digit, 9)[8:] for digit in range(8))])
    same_test = mnist_test(slightly_worse, CHAMPION_WRONG)
    verdict = judge([same_test, new_data(500, challenger_errors=5, champion_errors=45)], GateConfig())
    assert verdict.challenger_accuracy == pytest.approx(verdict.champion_accuracy - 0.0008)
    assert_promoted(verdict)
    assert "new_data" in verdict.reason.split(":")[0]
    figures = verdict.slice(NEW_DATA)
    assert figures is not None and (figures.b, figures.c) == (0, 40) and figures.better
    assert verdict.slice(MNIST_TEST) is not None and not verdict.slice(MNIST_TEST).better


def test_better_on_new_data_but_worse_on_mnist_test_is_refused() -> None:
    # 3 more errors on each of eight digits: -0.24 points overall, 0.3 points of recall each.
    worse_test = np.concatenate([CHAMPION_WRONG, *(digit_indices(digit, 11)[8:] for digit in range(8))])
    verdict = judge([mnist_test(worse_test, CHAMPION_WRONG), new_data(500, 5, 45)], GateConfig())
    assert_not_promoted(verdict, "non-inferiority", "mnist_test")


def test_a_slice_too_small_is_reported_and_decides_nothing() -> None:
    verdict = judge([mnist_test(CHAMPION_WRONG, CHAMPION_WRONG), new_data(150, 0, 60)], GateConfig())
    assert_not_promoted(verdict, "not-better", "too small to decide")
    small = verdict.slice(NEW_DATA)
    assert small is not None and not small.decides and small.adjusted_p_value is None and small.c == 60


def test_holm_makes_two_slices_each_prove_more() -> None:
    assert holm([0.03, 0.04]) == pytest.approx([0.06, 0.06])
    assert holm([0.01, 0.04, 0.5]) == pytest.approx([0.03, 0.08, 0.5])
    # p = 0.03 on new_data alone would pass at alpha 0.05; next to mnist_test it must pass at 0.025.
    verdict = judge([mnist_test(CHAMPION_WRONG, CHAMPION_WRONG), new_data(400, 2, 8)], GateConfig())
    figures = verdict.slice(NEW_DATA)
    assert figures is not None and figures.p_value < 0.05 < figures.adjusted_p_value
    assert_not_promoted(verdict, "not-better", "not significant")


def test_with_no_champion_the_floor_decides() -> None:
    labels = TEST_LABELS
    assert_promoted(judge([Slice(MNIST_TEST, labels, labels)], GateConfig()), rule="floor")
    wrong = with_errors(labels, np.arange(2000))
    assert_not_promoted(judge([Slice(MNIST_TEST, labels, wrong)], GateConfig()), "floor", "below the floor")


def test_the_verdict_survives_the_round_trip_through_json() -> None:
    verdict = judge([mnist_test(CHAMPION_WRONG[:40], CHAMPION_WRONG), new_data(300, 3, 20)], GateConfig())
    assert Verdict.from_dict(verdict.to_dict(), "verdict") == verdict


def test_bad_gate_settings_and_slices_are_refused() -> None:
    with pytest.raises(ConfigError, match="non_inferiority"):
        GateConfig(non_inferiority=-0.1)
    with pytest.raises(ConfigError, match="min_slice_images"):
        GateConfig(min_slice_images=0)
    with pytest.raises(ConfigError, match="mnist_test slice first"):
        judge([new_data(300, 1, 2)], GateConfig())
    with pytest.raises(ConfigError, match="slice new_data: 3 challenger predictions for 300 labels"):
        Slice(NEW_DATA, np.zeros(300, np.uint8), np.zeros(3, np.uint8))
