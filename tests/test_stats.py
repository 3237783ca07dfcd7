"""The paired before/after comparison of notebook 06, on numbers small enough to check by hand."""

import math

import pytest

from utils.stats import paired_difference, proportion_interval, t_quantile, verdict


def test_t_quantiles_match_the_printed_tables():
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(0.975, 3) == pytest.approx(3.1824, abs=1e-4)
    assert t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)


def test_a_clear_drop_has_an_interval_below_zero():
    # Differences after - before: -2, -1, -2, -3, -2 -> mean -2, std sqrt(0.5);
    # half-width 2.7764 * 0.7071 / sqrt(5) = 0.8780.
    before = [5, 5, 5, 5, 5]
    after = [3, 4, 3, 2, 3]

    result = paired_difference(before, after)

    assert result["n"] == 5 and result["samples"] == 1
    assert result["before_mean"] == 5 and result["before_std"] == 0
    assert result["after_mean"] == pytest.approx(3.0)
    assert result["after_std"] == pytest.approx(math.sqrt(0.5))
    assert result["difference"] == pytest.approx(-2.0)
    assert result["difference_std"] == pytest.approx(math.sqrt(0.5))
    assert result["ci_low"] == pytest.approx(-2.8780, abs=1e-4)
    assert result["ci_high"] == pytest.approx(-1.1220, abs=1e-4)
    assert result["excludes_zero"] is True


def test_a_noisy_change_has_an_interval_across_zero():
    # Differences -1, -1, 0, -2 -> mean -1, std sqrt(2/3); half-width 3.1824 * 0.8165 / 2 = 1.2992.
    result = paired_difference([1, 2, 3, 4], [0, 1, 3, 2])

    assert result["difference"] == pytest.approx(-1.0)
    assert result["ci_low"] == pytest.approx(-2.2992, abs=1e-4)
    assert result["ci_high"] == pytest.approx(0.2992, abs=1e-4)
    assert result["excludes_zero"] is False


def test_samples_of_one_item_are_averaged_before_pairing():
    # Item means: before 2, 2; after 0, 2 -> differences -2, 0: mean -1, std sqrt(2), half-width 12.7062.
    result = paired_difference([[1, 3], [2, 2]], [[0, 0], [1, 3]])

    assert result["n"] == 2 and result["samples"] == 2
    assert result["before_mean"] == pytest.approx(2.0)
    assert result["before_std"] == pytest.approx(math.sqrt(2 / 3))  # over all four scores 1, 3, 2, 2
    assert result["difference"] == pytest.approx(-1.0)
    assert result["difference_std"] == pytest.approx(math.sqrt(2))
    assert result["ci_low"] == pytest.approx(-1 - 12.7062, abs=1e-3)
    assert result["ci_high"] == pytest.approx(-1 + 12.7062, abs=1e-3)


def test_a_lower_confidence_gives_a_narrower_interval():
    wide = paired_difference([1, 2, 3, 4], [0, 1, 3, 2], confidence=0.95)
    narrow = paired_difference([1, 2, 3, 4], [0, 1, 3, 2], confidence=0.80)

    assert narrow["ci_high"] - narrow["ci_low"] < wide["ci_high"] - wide["ci_low"]


@pytest.mark.parametrize(
    ("before", "after", "confidence", "message"),
    [
        ([1, 2], [1, 2, 3], 0.95, "pair"),
        ([1], [2], 0.95, "at least 2"),
        ([1, 2], [1, float("nan")], 0.95, "NaN"),
        ([], [], 0.95, "shape"),
        ([1, 2], [1, 2], 1.5, "between 0 and 1"),
    ],
)
def test_unusable_inputs_are_refused_with_a_reason(before, after, confidence, message):
    with pytest.raises(ValueError, match=message):
        paired_difference(before, after, confidence)


def test_the_verdict_says_real_or_noise_from_the_numbers():
    real = verdict(paired_difference([5, 5, 5, 5, 5], [3, 4, 3, 2, 3]))
    noise = verdict(paired_difference([1, 2, 3, 4], [0, 1, 3, 2]))
    rise = verdict(paired_difference([3, 4, 3, 2, 3], [5, 5, 5, 5, 5]), quantity="reward")

    assert "excludes zero" in real and "drop is real" in real
    assert "includes zero" in noise and "noise" in noise
    assert "rise is real" in rise and "reward" in rise


def test_the_wilson_interval_of_an_accuracy_matches_the_hand_computed_values():
    # 50 of 100 at 95% (z = 1.96): centre 0.5, half-width 1.96 / 1.0384 * sqrt(0.0025 + 0.000096) = 0.0962.
    assert proportion_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    # 0 of 10: the lower end is 0 and the upper one is not (z^2/n / (1 + z^2/n) = 0.2775).
    assert proportion_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    low, high = proportion_interval(10, 10)
    assert (low, high) == pytest.approx((1 - 0.2775, 1.0), abs=1e-4)


def test_a_lower_confidence_gives_a_narrower_interval_of_an_accuracy():
    def width(confidence):
        low, high = proportion_interval(30, 40, confidence)
        return high - low

    assert width(0.8) < width(0.95) < width(0.99)


@pytest.mark.parametrize("successes, n, message",
                         [(1, 0, "at least 1"), (11, 10, "between 0 and n"), (-1, 5, "between")])
def test_an_impossible_proportion_is_refused(successes, n, message):
    with pytest.raises(ValueError, match=message):
        proportion_interval(successes, n)
