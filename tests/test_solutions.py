"""The exercises and their worked solutions.

Every notebook ends with an "## Exercises" section, and solutions/ holds one worked notebook
for each, `solutions/<notebook>_solutions.ipynb`. Every solution runs top to bottom with nbval in
both tiny profiles (seconds each), from its own folder as a learner opens it: in `tiny` here, in
`tiny-causal` after its notebook in the same runs folder (tests/test_notebooks.py). It records nothing:
runs/<profile>/results.json, which REPORT.md, notebook 05's comparison and `make check-results`
read, stays the notebooks' own. Where it needs the notebook's model it trains under the notebook's
checkpoint name and settings, so a notebook that ran is reused, and its changed settings train under
names of their own.
"""

import re
from pathlib import Path

import nbformat
import pytest
from conftest import run_notebook_with_nbval

from utils.apps.kernel import course_kernelspec
from utils.apps.runner import notebook_paths
from utils.profiles import get_profile

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*_solutions.ipynb"))
WITH_EXERCISES = ["01_prompting", "02_full_fine_tuning", "03_lora", "04_prompt_tuning", "05_qlora", "06_rlhf_ppo",
                  "07_reward_modelling", "08_dpo", "09_grpo"]

# The trainings each solution leaves in runs/<profile>/checkpoints/: the notebook's own name first
# (the same settings, so a finished notebook is reused), then the changed settings' names.
TRAININGS = {
    "02_full_fine_tuning_solutions": lambda p: ["full", "full-half-steps"],
    "03_lora_solutions": lambda p: [f"lora-r{p.lora_rank}", "lora-r1", f"lora-r{p.lora_rank}-all-linear"],
    "04_prompt_tuning_solutions": lambda p: ["prompt-tuning-text", f"prompt-tuning-text-{max(1, p.virtual_tokens // 4)}-tokens",
                                             "prompt-tuning-text-lora-lr"],
    "05_qlora_solutions": lambda p: [f"qlora-r{p.lora_rank}", f"qlora-r{p.lora_rank}-attention"],
    "07_reward_modelling_solutions": lambda p: ["reward-model", "reward-model-swapped"],
    "09_grpo_solutions": lambda p: [f"lora-r{p.lora_rank}"],  # its GRPO runs are the notebook's, in runs/<profile>/grpo/
}


def exercise_section(notebook: Path) -> list[nbformat.NotebookNode]:
    """The cells from the notebook's "## Exercises" heading to its end ([] when it has none)."""
    cells = nbformat.read(notebook, as_version=4).cells
    starts = [i for i, cell in enumerate(cells) if cell.cell_type == "markdown" and cell.source.startswith("## Exercises")]
    return cells[starts[0]:] if starts else []


def code_of(notebook: Path) -> str:
    return "\n".join(cell.source for cell in nbformat.read(notebook, as_version=4).cells if cell.cell_type == "code")


def test_every_notebook_has_exercises_and_its_solutions():
    with_exercises = [p.stem for p in NOTEBOOKS if exercise_section(p)]

    assert set(WITH_EXERCISES) <= set(with_exercises)
    assert [p.name for p in SOLUTIONS] == [f"{stem}_solutions.ipynb" for stem in with_exercises]


@pytest.mark.parametrize("notebook", [p for p in NOTEBOOKS if exercise_section(p)], ids=lambda p: p.stem)
def test_the_exercises_end_the_notebook_two_to_four_of_them_naming_their_solutions(notebook):
    heading, *exercises = exercise_section(notebook)

    assert f"solutions/{notebook.stem}_solutions.ipynb" in heading.source
    assert 2 <= len(exercises) <= 4
    assert [cell.cell_type for cell in exercises] == ["markdown"] * len(exercises)  # nothing for `make run` to execute
    assert [re.match(r"### Exercise (\d) · ", cell.source).group(1) for cell in exercises] == \
        [str(n) for n in range(1, len(exercises) + 1)]
    assert any("predict" in cell.source.lower() for cell in exercises)


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_a_solution_is_stored_like_the_notebooks_and_never_records(solution):
    stored = nbformat.read(solution, as_version=4)
    code = [cell for cell in stored.cells if cell.cell_type == "code"]

    assert stored.metadata.kernelspec == course_kernelspec()
    assert [(cell.outputs, cell.execution_count) for cell in code] == [([], None)] * len(code)
    assert f'course.start("{solution.stem}")' in code[0].source
    assert not re.search(r"\.record\(|record_result", code_of(solution))


def test_make_run_runs_the_notebooks_only():
    assert notebook_paths() == NOTEBOOKS
    assert not any("solutions" in path.parts for path in notebook_paths())


def unfinished_trainings(solution: Path, profile: str, runs: Path) -> list[str]:
    """The trainings `solution` should have left in `runs` (TRAININGS) that did not finish there."""
    names = TRAININGS.get(solution.stem, lambda p: [])(get_profile(profile))
    return [name for name in names if not (runs / profile / "checkpoints" / name / "finished.json").exists()]


# `long` (`make test-long`, CI): `make test` runs 02's solution after its notebook in tiny-causal.
# In tiny-causal each solution runs after its notebook, in the notebook's runs folder (tests/test_notebooks.py),
# where it is also checked to reuse the notebook's training and leave its results alone.
@pytest.mark.long
@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_a_solution_runs_from_its_folder_with_nbval_in_the_tiny_profile_and_records_nothing(solution, tmp_path):
    runs = tmp_path / "runs"

    run_notebook_with_nbval(solution, {"COURSE_PROFILE": "tiny"}, runs)

    assert not (runs / "tiny" / "results.json").exists(), "a solution recorded results"
    assert unfinished_trainings(solution, "tiny", runs) == []
