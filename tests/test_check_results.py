"""`make check-results`: every figure docs/RESULTS.md records, against a new run's results.json."""

import pytest

from utils.apps.check_results import RESULTS_DOC, Figure, check, compare, recorded_figures
from utils.apps.runner import notebook_paths

DOC = """# Results

## Recorded figures

| notebook | method | variant | figure | recorded | tolerance |
|---|---|---|---|---|---|
| 04_prompt_tuning | prompt_tuning | | rouge1 | 0.3521 | 0.002 |
| 03_lora | lora | sweep r=4 | rouge1 | 0.3433 | 0.002 |

## Something else
| not | a | figure |
"""


def test_the_table_is_read_from_its_section_only():
    figures = recorded_figures(DOC)

    assert figures == [
        Figure("04_prompt_tuning", "prompt_tuning", "", "rouge1", 0.3521, 0.002),
        Figure("03_lora", "lora", "sweep r=4", "rouge1", 0.3433, 0.002),
    ]


def test_a_figure_within_its_tolerance_passes_and_one_that_moved_fails(tmp_path):
    document = tmp_path / "RESULTS.md"
    document.write_text(DOC)
    as_recorded = [{"notebook": "04_prompt_tuning", "method": "prompt_tuning", "rouge1": 0.3530},
                   {"notebook": "03_lora", "method": "lora", "variant": "sweep r=4", "rouge1": 0.3433}]
    broken = [{"notebook": "04_prompt_tuning", "method": "prompt_tuning", "rouge1": 0.0301},
              {"notebook": "03_lora", "method": "lora", "variant": "sweep r=4", "rouge1": 0.3433}]

    ok, lines = check(as_recorded, document=document)
    assert ok, lines
    ok, lines = check(broken, document=document)
    assert not ok
    assert lines[0].startswith("MOVED") and "-0.3220" in lines[0]
    assert lines[-1] == "1 of 2 figures as recorded; 1 moved or missing"


def test_a_missing_figure_fails_and_notebooks_can_be_checked_alone(tmp_path):
    document = tmp_path / "RESULTS.md"
    document.write_text(DOC)
    only_04 = [{"notebook": "04_prompt_tuning", "method": "prompt_tuning", "rouge1": 0.3521}]

    assert check(only_04, ["04"], document=document)[0]
    ok, lines = check(only_04, document=document)
    assert not ok and any(line.startswith("MISSING 03_lora lora [sweep r=4] rouge1") for line in lines)
    assert not check(only_04, ["99"], document=document)[0]


def test_a_document_without_the_table_is_an_error():
    with pytest.raises(ValueError, match="Recorded figures"):
        recorded_figures("# Results\n\nNothing recorded.\n")


def test_the_course_document_records_figures_of_every_notebook():
    figures = recorded_figures(RESULTS_DOC.read_text(encoding="utf-8"))
    notebooks = {path.stem for path in notebook_paths()}

    assert {f.notebook for f in figures} == notebooks
    assert all(f.tolerance > 0 for f in figures)
    assert compare(figures, [])[0].measured is None
