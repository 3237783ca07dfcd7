"""Training-step measurements of each method, as bench/training.py and notebook 05 use them."""

import pytest

from utils.apps.benchmark import TRAINING_METHODS, compare_training_methods, measure_training_steps, model_for_method
from utils.models import load_tokenizer


@pytest.mark.parametrize("method", TRAINING_METHODS)
def test_each_method_trains_a_few_steps_and_reports_its_costs(method, tiny_profile):
    row = measure_training_steps(tiny_profile, method, steps=1, batch_size=2)

    assert row["method"] == method
    assert row["tokens_per_second"] > 0 and row["peak_memory_mb"] > 0
    assert 0 < row["trainable_params"] <= row["total_params"]
    if method == "full":
        assert row["trainable_params"] == row["total_params"]
    elif method == "feature_extraction":  # one block of a tiny model's few is a large share
        assert row["trainable_params"] < row["total_params"] / 2
    else:
        assert row["trainable_params"] < row["total_params"] / 10


def test_lora_and_qlora_put_adapters_where_the_notebooks_do_unless_told_otherwise(tiny_profile):
    tokenizer = load_tokenizer(tiny_profile)

    def adapted_layers(method, lora_targets=None):
        model, _ = model_for_method(tiny_profile, method, tokenizer, lora_targets)
        return sum(hasattr(module, "lora_A") for module in model.modules())

    assert adapted_layers("lora") == adapted_layers("qlora", "attention")
    assert adapted_layers("lora") < adapted_layers("qlora") == adapted_layers("lora", "all-linear")


def test_an_unknown_method_is_refused(tiny_profile):
    with pytest.raises(ValueError, match="Unknown method"):
        measure_training_steps(tiny_profile, "bitfit", steps=1)


@pytest.mark.long  # one more measurement process per method; `make test` times the plain loop against one
def test_methods_are_measured_in_their_own_processes_with_ratios_to_full():
    from utils.profiles import get_profile

    rows = compare_training_methods(get_profile("tiny-causal"), ("full", "lora"), steps=1, batch_size=2)

    assert [r["method"] for r in rows] == ["full", "lora"]
    assert rows[0]["speed_vs_full"] == 1.0 and rows[0]["memory_vs_full"] == 1.0
    assert rows[1]["trainable_params"] < rows[0]["trainable_params"]


def test_the_plain_loop_is_timed_on_the_same_batch_and_every_row_gets_its_ratio_to_it():
    from utils.profiles import get_profile

    rows = compare_training_methods(get_profile("tiny-causal"), ("full",), steps=1, batch_size=2, plain=True)

    plain, course = rows
    assert plain["method"] == "full (plain loop)" and course["method"] == "full"
    assert plain["tokens_per_step"] == course["tokens_per_step"]  # the same real tokens
    assert plain["final_loss"] == pytest.approx(course["final_loss"], rel=1e-4)  # the same arithmetic, less of it
    assert plain["speed_vs_plain"] == 1.0
    assert course["speed_vs_plain"] == pytest.approx(course["tokens_per_second"] / plain["tokens_per_second"])


def test_the_command_line_offers_every_method_the_benchmarks_measure():
    from utils.apps import cli

    assert cli.TRAINING_METHODS == TRAINING_METHODS
