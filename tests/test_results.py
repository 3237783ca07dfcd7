"""runs/<profile>/results.json records what each notebook measured; REPORT.md shows it."""

import json
import time

import pytest

from utils.apps.report import write_report
from utils.plumbing.results import load_results, record_result, results_path


def stored(profile="tiny"):
    return json.loads(results_path(profile).read_text(encoding="utf-8"))


def test_record_result_writes_a_list_of_records(isolated_runs):
    record_result("tiny", "02_full_fine_tuning", "full", "tiny:t5", rouge1=0.25, train_seconds=3)

    assert results_path("tiny") == isolated_runs / "tiny" / "results.json"
    assert stored() == [
        {"notebook": "02_full_fine_tuning", "method": "full", "profile": "tiny", "model": "tiny:t5",
         "rouge1": 0.25, "train_seconds": 3}
    ]


def test_recording_the_same_notebook_and_method_replaces_it_and_keeps_the_others():
    record_result("tiny", "01_prompting", "zero_shot", "tiny:t5", rouge1=0.1)
    record_result("tiny", "02_full_fine_tuning", "full", "tiny:t5", rouge1=0.2)
    record_result("tiny", "02_full_fine_tuning", "full", "tiny:t5", variant="lr 1e-3", rouge1=0.3)

    record_result("tiny", "01_prompting", "zero_shot", "tiny:t5", rouge1=0.15)

    by_key = {(r["notebook"], r["method"], r.get("variant", "")): r["rouge1"] for r in stored()}
    assert by_key == {
        ("01_prompting", "zero_shot", ""): 0.15,
        ("02_full_fine_tuning", "full", ""): 0.2,
        ("02_full_fine_tuning", "full", "lr 1e-3"): 0.3,
    }
    assert len(stored()) == 3


def test_each_profile_has_its_own_results():
    record_result("tiny", "01_prompting", "zero_shot", "tiny:t5", rouge1=0.1)
    record_result("tiny-causal", "01_prompting", "zero_shot", "tiny:llama", rouge1=0.2)

    assert [r["rouge1"] for r in load_results("tiny")] == [0.1]
    assert [r["rouge1"] for r in load_results("tiny-causal")] == [0.2]


def test_no_results_yet_is_an_empty_list():
    assert load_results("tiny") == []


def test_an_unknown_method_raises_and_writes_nothing():
    with pytest.raises(ValueError, match="no_such_method"):
        record_result("tiny", "01_prompting", "no_such_method", "tiny:t5", rouge1=0.1)

    assert not results_path("tiny").exists()


def test_nan_is_stored_as_null_and_floats_are_rounded():
    record_result("tiny", "05_ppo", "ppo", "tiny:t5", reward=float("nan"), rouge1=0.123456789)

    (record,) = stored()
    assert record["reward"] is None
    assert record["rouge1"] == 0.123457


def test_write_report_has_a_table_with_the_recorded_rouge_and_a_png_plot(isolated_runs):
    record_result("tiny", "01_prompting", "zero_shot", "tiny:t5", rouge1=0.1234, rouge2=0.05, rougeL=0.1, rougeLsum=0.1)
    record_result("tiny", "02_full_fine_tuning", "full", "tiny:t5", rouge1=0.4321, rouge2=0.2, rougeL=0.3,
                  rougeLsum=0.3, trainable_params=1234567)

    path = write_report("tiny", {"profile": "tiny", "seed": 42})

    assert path == isolated_runs / "tiny" / "REPORT.md"
    report = path.read_text(encoding="utf-8")
    table = [line for line in report.splitlines() if line.startswith("| 02_full_fine_tuning | full |")]
    assert "| notebook | method | rouge1 | rouge2 | rougeL | rougeLsum | trainable_params |" in report
    assert len(table) == 1 and "0.4321" in table[0] and "1,234,567" in table[0]
    assert "| 01_prompting | zero_shot | 0.1234 |" in report
    assert "| seed | 42 |" in report
    assert "![ROUGE by method](rouge_by_method.png)" in report
    plot = isolated_runs / "tiny" / "rouge_by_method.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_without_results_says_so():
    report = write_report("tiny").read_text(encoding="utf-8")

    assert "No results recorded yet." in report


def test_the_report_gives_each_notebook_the_machine_speed_measured_before_and_after_it(isolated_runs):
    (isolated_runs / "tiny").mkdir(parents=True, exist_ok=True)
    status = {"01_prompting": {"status": "done", "seconds": 92.4, "machine": "a CPU",
                               "matmul_gflops_before_after": [231.4, 118.9]},
              "02_full_fine_tuning": {"status": "done", "seconds": 225.0, "machine": "a CPU"}}  # from before speeds
    (isolated_runs / "tiny" / "status.json").write_text(json.dumps(status))

    report = write_report("tiny").read_text(encoding="utf-8")

    assert "| 01_prompting | done | 92 |  | a CPU | 231 / 119 |" in report
    assert "| 02_full_fine_tuning | done | 225 |  | a CPU |  |" in report


def test_the_machine_speed_is_a_positive_sustained_rate():
    from utils.plumbing.measure import matrix_product_gflops

    started = time.perf_counter()
    speed = matrix_product_gflops(seconds=0.2, size=128)

    assert 0 < speed < 1e5  # GFLOP/s: more than nothing, less than any CPU
    assert time.perf_counter() - started >= 0.2  # it kept multiplying for the time asked


def test_results_json_stays_valid_json_with_an_infinite_value():
    record_result("tiny", "02_full_fine_tuning", "full", "tiny:t5", eval_loss=float("inf"))

    def reject(token):
        raise ValueError(f"{token} is not JSON")

    (record,) = json.loads(results_path("tiny").read_text(), parse_constant=reject)
    assert record["eval_loss"] is None


def test_the_method_comparison_keeps_one_main_record_per_method_in_teaching_order():
    from utils.apps.report import method_comparison

    records = [
        {"notebook": "05_qlora", "method": "qlora", "rouge1": 0.4, "trainable_params": 10, "total_params": 1000},
        {"notebook": "02_full_fine_tuning", "method": "base", "rouge1": 0.3},
        {"notebook": "03_lora", "method": "lora", "variant": "sweep r=4", "rouge1": 0.9},
        {"notebook": "03_lora", "method": "lora", "rouge1": 0.41, "trainable_params": 20, "total_params": 1000},
        {"notebook": "01_prompting", "method": "zero_shot", "rouge1": 0.2},
    ]

    rows = method_comparison(records)

    assert [r["method"] for r in rows] == ["base", "lora", "qlora"]
    assert rows[1]["rouge1"] == 0.41 and rows[1]["trainable_percent"] == 2.0
    assert "trainable_percent" not in rows[0]


def test_write_report_compares_every_method_when_several_ran(isolated_runs):
    from utils.apps.report import write_report
    from utils.plumbing.results import record_result

    record_result("tiny", "02_full_fine_tuning", "base", "m", rouge1=0.3, rouge2=0.1, rougeL=0.2, rougeLsum=0.2)
    record_result("tiny", "05_qlora", "qlora", "m", rouge1=0.4, rouge2=0.1, rougeL=0.3, rougeLsum=0.3,
                  trainable_params=5, total_params=100, peak_memory_mb=512.0)

    text = write_report("tiny").read_text()

    assert "## Every method on the same data" in text
    assert "| 05_qlora | qlora | 0.4000 |" in text
    assert (isolated_runs / "tiny" / "method_comparison.png").stat().st_size > 0


def test_write_report_shows_alignment_and_reward_model_results_in_their_own_tables(isolated_runs):
    from utils.apps.report import write_report
    from utils.plumbing.results import record_result

    record_result("tiny", "03_lora", "lora", "m", rouge1=0.4, rouge2=0.1, rougeL=0.3, rougeLsum=0.3)
    record_result("tiny", "06_rlhf_ppo", "ppo", "m", toxicity_before_mean=0.4, toxicity_after_mean=0.25,
                  toxicity_difference=-0.15, ci_low=-0.2, ci_high=-0.1, ci_excludes_zero=True,
                  rouge1_before=0.41, rouge1_after=0.39)
    record_result("tiny", "07_reward_modelling", "reward_model", "m", test_accuracy=0.9, untrained_accuracy=0.5)
    record_result("tiny", "08_dpo", "dpo", "m", toxicity_before_mean=0.4, toxicity_after_mean=0.2,
                  toxicity_difference=-0.2, ci_low=-0.3, ci_high=-0.1, ci_excludes_zero=True,
                  rouge1_before=0.41, rouge1_after=0.4)

    text = write_report("tiny").read_text()
    results = text.split("## Results")[1].split("##")[0]

    assert "| 03_lora | lora | 0.4000 |" in results
    assert "ppo" not in results and "reward_model" not in results  # no empty ROUGE rows
    assert "## Alignment with PPO (notebook 06)" in text
    assert "| 06_rlhf_ppo | ppo | 0.4000 | 0.2500 | -0.1500 | -0.2000 | -0.1000 | yes | 0.4100 | 0.3900 |" in text
    assert "## Reward model (notebook 07)" in text
    assert "| 07_reward_modelling | reward_model | 0.9000 | 0.5000 |" in text
    assert "## Alignment with DPO (notebook 08)" in text
    assert "| 08_dpo | dpo | 0.4000 | 0.2000 | -0.2000 | -0.3000 | -0.1000 | yes | 0.4100 | 0.4000 |" in text
