"""`make check-results` and `python -m utils record-expected`: every figure docs/expected_results.toml
records, against a new run's results.json, and how a run's figures get into that file."""

import json

import pytest

from utils.apps.check_results import check, compare
from utils.apps.expected_results import (
    EXPECTED_FILE,
    Figure,
    format_expected,
    load_expected,
    make_source,
    parse_expected,
    record_expected,
    record_file,
)
from utils.apps.runner import notebook_paths

EXPECTED = """
[sources.fp32]
profile = "offline"
precision = "float32"
machine = "a 2-core CPU"
commit = "abc123"
lock = "0123456789ab"
command = "make check-results"
date = "2026-12-07"

[sources.bf16]
profile = "offline"
precision = "bf16 autocast"
machine = "a 2-core CPU"
commit = "abc123"
lock = "0123456789ab"
command = "make run"
date = "2026-12-07"

[[figures]]
notebook = "04_prompt_tuning"
method = "prompt_tuning"
variant = ""
figure = "rouge1"
value = 0.3521
tolerance = 0.01
source = "fp32"

[[figures]]
notebook = "03_lora"
method = "lora"
variant = "sweep r=4"
figure = "rouge1"
value = 0.3433
tolerance = 0.002
source = "fp32"

[[figures]]
notebook = "03_lora"
method = "lora"
variant = "sweep r=4"
figure = "rouge1"
value = 0.3700
tolerance = 0.002
source = "bf16"
"""


@pytest.fixture
def expected_file(tmp_path):
    path = tmp_path / "expected_results.toml"
    path.write_text(EXPECTED)
    return path


def test_each_figure_carries_its_source_and_precision():
    expected = parse_expected(EXPECTED)

    assert expected.of_precision("float32") == [
        Figure("04_prompt_tuning", "prompt_tuning", "", "rouge1", 0.3521, 0.01, "fp32", "float32"),
        Figure("03_lora", "lora", "sweep r=4", "rouge1", 0.3433, 0.002, "fp32", "float32"),
    ]
    assert expected.sources["bf16"].command == "make run"


def test_a_figure_within_its_tolerance_passes_and_one_that_moved_fails(expected_file):
    as_recorded = [{"notebook": "04_prompt_tuning", "method": "prompt_tuning", "rouge1": 0.3530},
                   {"notebook": "03_lora", "method": "lora", "variant": "sweep r=4", "rouge1": 0.3433}]
    broken = [{"notebook": "04_prompt_tuning", "method": "prompt_tuning", "rouge1": 0.0301},
              {"notebook": "03_lora", "method": "lora", "variant": "sweep r=4", "rouge1": 0.3433}]

    ok, lines = check(as_recorded, expected_file=expected_file)
    assert ok, lines
    ok, lines = check(broken, expected_file=expected_file)
    assert not ok
    assert lines[0].startswith("MOVED") and "-0.3220" in lines[0]
    assert lines[-1] == "1 of 2 float32 figures as recorded; 1 moved or missing"


def test_a_bf16_run_is_checked_against_the_bf16_figures(expected_file):
    bf16_run = [{"notebook": "03_lora", "method": "lora", "variant": "sweep r=4", "rouge1": 0.3700}]

    assert check(bf16_run, ["03"], expected_file=expected_file, precision="bf16 autocast")[0]
    assert not check(bf16_run, ["03"], expected_file=expected_file)[0]


def test_a_missing_figure_fails_and_notebooks_can_be_checked_alone(expected_file):
    only_04 = [{"notebook": "04_prompt_tuning", "method": "prompt_tuning", "rouge1": 0.3521}]

    assert check(only_04, ["04"], expected_file=expected_file)[0]
    ok, lines = check(only_04, expected_file=expected_file)
    assert not ok and any(line.startswith("MISSING 03_lora lora [sweep r=4] rouge1") for line in lines)
    assert not check(only_04, ["99"], expected_file=expected_file)[0]


def test_a_figure_naming_an_unknown_source_is_an_error():
    with pytest.raises(ValueError, match="nowhere"):
        parse_expected(EXPECTED.replace('source = "fp32"', 'source = "nowhere"', 1))


def test_recording_a_run_replaces_its_precision_s_figures_of_the_notebooks_it_covers():
    expected = parse_expected(EXPECTED)
    source = make_source("float32", "offline", "another CPU", "def456", "ba9876543210", "make check-results",
                         "2026-12-08")
    records = [{"notebook": "03_lora", "method": "lora", "variant": "sweep r=4", "rouge1": 0.3501, "rank": 4,
                "train_seconds": 12.5},
               {"notebook": "03_lora", "method": "lora", "variant": "forgetting", "second_task_after": 0.25,
                "perplexity_after": 6.4, "ci_excludes_zero": True},
               {"notebook": "09_grpo", "method": "grpo", "reward_after": 0.8}]

    updated, lines = record_expected(expected, records, source, tolerances={"reward_after": 0.02})

    figures = {(f.label, f.precision): (f.recorded, f.tolerance, f.source) for f in updated.figures}
    assert figures[("03_lora lora [sweep r=4] rouge1", "float32")] == (0.3501, 0.002, "float32-def456")
    assert figures[("03_lora lora [forgetting] perplexity_after", "float32")] == (6.4, 0.05, "float32-def456")
    assert figures[("09_grpo grpo reward_after", "float32")] == (0.8, 0.02, "float32-def456")
    assert figures[("03_lora lora [sweep r=4] rouge1", "bf16 autocast")] == (0.37, 0.002, "bf16")  # kept
    assert figures[("04_prompt_tuning prompt_tuning rouge1", "float32")][2] == "fp32"  # not covered: kept
    assert not any("rank" in label or "seconds" in label or "excludes" in label for label, _ in figures)
    assert "moved   03_lora lora [sweep r=4] rouge1: 0.3433 -> 0.3501 (tolerance 0.002)" in lines
    assert updated.sources["float32-def456"].machine == "another CPU"
    assert parse_expected(format_expected(updated)) == updated


def test_record_expected_writes_the_file_that_check_results_reads(tmp_path, expected_file):
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"notebook": "04_prompt_tuning", "method": "prompt_tuning", "profile": "offline",
                                    "rouge1": 0.36, "rougeL": 0.27}]))

    lines = record_file(results, "bf16 autocast", commit="def456", machine="a CPU", lock="ba9876543210",
                        when="2026-12-08", expected_file=expected_file)

    assert lines[-1] == "2 bf16 autocast figure(s) of 1 notebook(s) recorded as source bf16-autocast-def456"
    assert check(json.loads(results.read_text()), ["04"], expected_file=expected_file, precision="bf16 autocast")[0]
    assert load_expected(expected_file).sources["bf16-autocast-def456"].command == "make run"


def test_the_course_file_records_float32_figures_of_every_notebook_with_a_source():
    expected = load_expected()
    figures = expected.of_precision("float32")
    notebooks = {path.stem for path in notebook_paths()}

    assert {f.notebook for f in figures} <= notebooks
    assert {f.notebook for f in figures} >= notebooks - {"09_grpo"}  # 09 is recorded from its first run
    assert all(f.tolerance > 0 for f in expected.figures)
    assert all(len(s.lock) == 12 and s.commit and s.machine for s in expected.sources.values())
    assert compare(figures, [])[0].measured is None
    assert EXPECTED_FILE.read_text(encoding="utf-8") == format_expected(expected)
