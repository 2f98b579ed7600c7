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


# --- what the gate says, word for word: the registry page, the model card and the CLI show it -----

# The challenger fixes 20 of the champion's 80 errors and breaks one more image of each digit:
# +0.1 point exactly (the margin), McNemar b=10 c=20, p ~ 0.099: better, but not significantly.
NOT_SIGNIFICANT = np.concatenate([CHAMPION_WRONG[20:], *(digit_indices(digit, 9)[8:] for digit in range(10))])
# One image more wrong than the champion on each digit: 0.1 point below it, exactly the margin.
AT_NON_INFERIORITY = np.concatenate([CHAMPION_WRONG, *(digit_indices(digit, 9)[8:] for digit in range(10))])


def test_a_challenger_better_on_two_slices_names_both_and_every_figure() -> None:
    verdict = judge([mnist_test(np.array([], dtype=int), CHAMPION_WRONG), new_data(500, 5, 45)], GateConfig())
    assert verdict.reason == (
        "better and significant on mnist_test, new_data, not worse elsewhere: "
        "mnist_test 1.0000 vs champion 0.9920 on 10000, McNemar b=0 c=80 p=3.31e-24; "
        "new_data 0.9900 vs champion 0.9100 on 500, McNemar b=0 c=40 p=1.82e-12"
    )


def test_better_but_not_significant_is_told_apart_from_not_better_and_a_small_slice_says_so() -> None:
    verdict = judge([mnist_test(NOT_SIGNIFICANT, CHAMPION_WRONG), new_data(150, 0, 60)], GateConfig())
    assert_not_promoted(verdict, "not-better")
    assert verdict.reason == (
        "better but not significant at alpha 0.05 (Holm-adjusted): "
        "mnist_test 0.9930 vs champion 0.9920 on 10000, McNemar b=10 c=20 p=0.0987; "
        "new_data 1.0000 vs champion 0.6000 on 150, McNemar b=0 c=60 (too small to decide)"
    )
    # The small slice gained 40 points, but a slice too small to decide gains nothing either.
    same = judge([mnist_test(CHAMPION_WRONG, CHAMPION_WRONG), new_data(150, 0, 60)], GateConfig())
    assert same.reason.startswith("not better by the margin on any slice: mnist_test 0.9920 vs champion")


def test_a_gain_of_exactly_the_margin_counts_as_reaching_it() -> None:
    verdict = judge([mnist_test(CHAMPION_WRONG[:70], CHAMPION_WRONG)], GateConfig())  # +0.1 point
    assert_promoted(verdict)
    assert (verdict.b, verdict.c, verdict.slices[0].margin) == (0, 10, 0.001)


def test_the_refusals_give_the_digit_the_slice_and_the_limits_in_points() -> None:
    recall = judge([mnist_test(digit_indices(7, 8 + 15), CHAMPION_WRONG)], GateConfig())
    assert recall.reason == (
        "digit 7's recall on mnist_test drops by 1.50 points (at most 1.00 allowed): "
        "mnist_test 0.9977 vs champion 0.9920 on 10000, McNemar b=15 c=72 p=4.26e-10"
    )
    worse_test = np.concatenate([CHAMPION_WRONG, *(digit_indices(digit, 11)[8:] for digit in range(8))])
    worse = judge([mnist_test(worse_test, CHAMPION_WRONG), new_data(500, 5, 45)], GateConfig())
    assert worse.reason.startswith(
        "worse than the champion on mnist_test by 0.24 points (non-inferiority margin 0.10 points): "
        "mnist_test 0.9896 vs champion 0.9920 on 10000, McNemar b=24 c=0 p=1.19e-07; new_data"
    )


def test_a_fall_of_exactly_the_non_inferiority_margin_is_not_worse() -> None:
    verdict = judge([mnist_test(AT_NON_INFERIORITY, CHAMPION_WRONG), new_data(500, 5, 45)], GateConfig())
    test = verdict.slice(MNIST_TEST)
    assert test is not None and test.gain == pytest.approx(-0.001) and not test.worse
    assert_promoted(verdict)


def test_new_data_must_gain_its_own_larger_margin() -> None:
    # +0.3 points on 10,000 new images (b=0, c=30: p ~ 2e-9): past mnist_test's margin, not its own.
    verdict = judge([mnist_test(CHAMPION_WRONG, CHAMPION_WRONG), new_data(10_000, 70, 100)], GateConfig())
    figures = verdict.slice(NEW_DATA)
    assert figures is not None and figures.margin == 0.005 and figures.adjusted_p_value < 1e-8
    assert_not_promoted(verdict, "not-better", "not better by the margin")
    half_a_point = new_data(10_000, 50, 100)
    assert_promoted(judge([mnist_test(CHAMPION_WRONG, CHAMPION_WRONG), half_a_point], GateConfig()))


def test_a_slice_of_exactly_the_minimum_size_decides() -> None:
    verdict = judge([mnist_test(CHAMPION_WRONG, CHAMPION_WRONG), new_data(200, 0, 60)], GateConfig())
    figures = verdict.slice(NEW_DATA)
    assert figures is not None and figures.decides and figures.better
    assert_promoted(verdict)


def test_a_p_value_of_exactly_alpha_is_not_significant() -> None:
    # b=0, c=2: McNemar's p is exactly 0.5; one slice, so Holm leaves it as it is.
    labels = np.zeros(10, dtype=np.uint8)
    champion = labels.copy()
    champion[:2] = 1
    gate = GateConfig(alpha=0.5, min_slice_images=1)
    verdict = judge([Slice(MNIST_TEST, labels, labels, champion)], gate)
    assert verdict.slices[0].adjusted_p_value == 0.5
    assert_not_promoted(verdict, "not-better", "not significant at alpha 0.5")


def test_forcing_promotes_a_refused_challenger_and_keeps_what_the_gate_said() -> None:
    slices = [mnist_test(digit_indices(7, 8 + 15), CHAMPION_WRONG)]
    refused = judge(slices, GateConfig())
    forced = judge(slices, GateConfig(), force=True)
    assert (forced.promote, forced.forced, forced.rule) == (True, True, "forced")
    assert forced.reason == f"forced (gate said: {refused.reason})"
    assert (forced.b, forced.c, forced.slices, forced.recall_drops) == (
        refused.b,
        refused.c,
        refused.slices,
        refused.recall_drops,
    )
    promoted = [mnist_test(np.array([], dtype=int), CHAMPION_WRONG)]
    assert judge(promoted, GateConfig(), force=True) == judge(promoted, GateConfig())  # nothing to force


def test_a_first_model_of_exactly_the_floor_is_promoted_and_an_empty_test_set_is_not() -> None:
    labels = np.arange(10, dtype=np.uint8)
    verdict = judge([Slice(MNIST_TEST, labels, with_errors(labels, np.array([0])))], GateConfig())
    assert (verdict.promote, verdict.rule, verdict.challenger_accuracy) == (True, "floor", 0.9)
    assert verdict.reason == "no champion yet; accuracy 0.9000 reaches the floor 0.9"
    empty = np.array([], dtype=np.uint8)
    nothing = judge([Slice(MNIST_TEST, empty, empty)], GateConfig())
    assert (nothing.promote, nothing.challenger_accuracy) == (False, 0.0)
    assert nothing.reason == "no champion yet; accuracy 0.0000 is below the floor 0.9"


def test_recall_drops_are_fractions_rounded_to_six_places() -> None:
    labels = np.array([0, 0, 0, 1], dtype=np.uint8)
    challenger = np.array([0, 0, 1, 1], dtype=np.uint8)  # one of three 0s lost
    verdict = judge([Slice(MNIST_TEST, labels, challenger, labels)], GateConfig(min_slice_images=1))
    assert verdict.recall_drops == {"0": 0.333333, "1": 0.0}


def test_holm_adjusts_in_the_order_of_the_p_values_and_never_above_one() -> None:
    from mnist_pipeline.registry.gate import mcnemar_exact

    assert holm([0.04, 0.01]) == pytest.approx([0.04, 0.02])
    assert holm([0.6, 0.7]) == [1.0, 1.0]
    assert mcnemar_exact(1, 1) == 1.0  # the doubled tail of an even split is capped at 1


def test_the_gate_settings_accept_their_bounds_and_refuse_what_is_not_a_number() -> None:
    assert GateConfig(margin=0.0, min_slice_images=1).min_slice_images == 1
    for bad in ({"floor": 1.0}, {"floor": 1.5}, {"margin": "0.1"}, {"alpha": True}):
        with pytest.raises(ConfigError, match=rf"^gate {next(iter(bad))} must be in \[0.0, 1.0\), got"):
            GateConfig(**bad)
    for count in ("5", True):
        with pytest.raises(ConfigError, match=r"^gate min_slice_images must be a positive integer"):
            GateConfig(min_slice_images=count)
    with pytest.raises(ConfigError, match=r"^slice new_data: 3 champion predictions for 300 labels$"):
        Slice(NEW_DATA, np.zeros(300, np.uint8), np.zeros(300, np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(ConfigError, match=r"^the gate needs the mnist_test slice first$"):
        judge([], GateConfig())
    assert judge([mnist_test(CHAMPION_WRONG, CHAMPION_WRONG)], GateConfig()).slice(NEW_DATA) is None


def test_every_slice_below_the_champion_is_named_with_its_fall_in_points() -> None:
    labels = np.arange(1000, dtype=np.uint8) % 10
    more = Slice("more_new_data", labels, with_errors(labels, np.arange(100)), labels)  # 10 points below
    six_worse = np.concatenate([CHAMPION_WRONG, *(digit_indices(d, 68)[8:] for d in range(10))])
    gate = GateConfig(non_inferiority=0.05, max_recall_drop=0.5)
    verdict = judge([mnist_test(six_worse, CHAMPION_WRONG), new_data(500, 5, 45), more], gate)
    assert_not_promoted(verdict, "non-inferiority")
    assert verdict.reason.startswith(
        "worse than the champion on mnist_test by 6.00 points, more_new_data by 10.00 points"
        " (non-inferiority margin 5.00 points): "
    )


def test_every_slice_worse_than_the_champion_is_named_with_its_fall_in_points() -> None:
    # Recall left loose so that the non-inferiority rule speaks: 10 and 20 points below, margin 5.
    gate = GateConfig(non_inferiority=0.05, max_recall_drop=0.5)
    far_worse = np.concatenate([digit_indices(digit, 8 + 100) for digit in range(10)])
    labels = np.arange(1000, dtype=np.uint8) % 10
    other = Slice("other", labels, with_errors(labels, np.arange(200)), labels)
    verdict = judge([mnist_test(far_worse, CHAMPION_WRONG), other, new_data(1000, 0, 300)], gate)
    assert verdict.rule == "non-inferiority" and not verdict.promote
    assert verdict.reason.startswith(
        "worse than the champion on mnist_test by 10.00 points, other by 20.00 points"
        " (non-inferiority margin 5.00 points): "
    )
