"""What a learner opens: every notebook and solution starts with its title, keeps its set-up short and its
prose free of plumbing, shows the library's own API where a method first appears, shows its pictures, and
has an executed reference copy (reference/offline/) whose code is the notebook's own.

Each check is a function of a notebook's path that returns the problems it finds ([] when none); the
checks run over notebooks/ and solutions/, and, at the end of this file, over small made-up notebooks
that show what each one catches.
"""

import base64
import dataclasses
import functools
import io
import json
import re
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from utils.apps.reference import MAX_IMAGE_WIDTH
from utils.apps.times import TIME_PREFIX, first_markdown, time_line
from utils.profiles import Profile

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
REFERENCE = ROOT / "reference" / "offline"
MAX_CELLS = 40
MAX_REFERENCE_BYTES = 8 * 2**20  # every copy together: a few MB
MAX_SETUP_LINES = 8

# Words that tell of how the course was made, not of what it teaches (matched case-insensitively).
FORBIDDEN_IN_MARKDOWN = {
    r"\b20\d\d-\d\d-\d\d\b": "a date",
    r"bf16 copy": "a plumbing detail (the bf16 copy)",
    r"\bbench/": "a bench script",
    r"\btests/": "a test file",
    r"docs/RESULTS": "a results document",
    r"\bissue #?\d+": "an issue number",
    r"\bsince (TRL|transformers)\b": "a library's version history",
}
FORBIDDEN_ANYWHERE = ("this stop", "session", "helper", "one-off")

# The library's own API, in a code cell of the notebook that teaches it (a notebook is named by its topic,
# the part of its name after the number, so that renumbering leaves this list right).
LIBRARY_IN_SIGHT = {
    "full_fine_tuning": ("TrainingArguments", "Trainer"),
    "lora": ("LoraConfig", "get_peft_model"),
    "prompt_tuning": ("PromptTuningConfig",),
    "qlora": ("BitsAndBytesConfig", "prepare_model_for_kbit_training"),
    "reward_modelling": ("RewardConfig",),
}
# The picture of each idea: a figure in notebooks/figures/ whose name starts with the notebook's number.
DIAGRAMS = {
    "prompting": "the three families' attention masks",
    "full_fine_tuning": "labels masked with -100",
    "lora": "LoRA's W + BA side path",
    "prompt_tuning": "virtual tokens prepended to the input",
    "qlora": "NF4 blocks and double quantization",
    "rlhf_ppo": "the PPO loop: policy, reference, reward, KL and value",
    "dpo": "a preference pair and the DPO margin",
}
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)[^)]*\)|<img[^>]*\ssrc=[\"']([^\"']+)[\"']")


def cells(path, kind):
    return [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == kind]


def topic(path):
    """"lora" for notebooks/03_lora.ipynb (and for its solutions, 03_lora_solutions.ipynb)."""
    return Path(path).stem[3:].removesuffix("_solutions")


@functools.cache
def profile_field_names():
    """The profiles' settings that are not also parameters of the library APIs the notebooks teach
    (max_new_tokens, say, is generate's own and may be named in prose)."""
    import peft
    import transformers
    import trl

    library = set(transformers.GenerationConfig().to_dict())
    for config in (transformers.TrainingArguments, peft.LoraConfig, peft.PromptTuningConfig, trl.RewardConfig,
                   trl.DPOConfig):
        library |= {field.name for field in dataclasses.fields(config)}
    return sorted(f.name for f in dataclasses.fields(Profile) if "_" in f.name and f.name not in library)


# --- the checks ---------------------------------------------------------------------------------------------


def opening_problems(path):
    """The title first, a short first code cell, at most MAX_CELLS cells."""
    every = nbformat.read(path, as_version=4).cells
    problems = []
    if not every or every[0].cell_type != "markdown" or not every[0].source.startswith("# "):
        problems.append("the first cell is not the Markdown title ('# NN · Title')")
    code = [cell for cell in every if cell.cell_type == "code"]
    if code and len(code[0].source.splitlines()) > MAX_SETUP_LINES:
        problems.append(f"the first code cell has {len(code[0].source.splitlines())} lines (at most {MAX_SETUP_LINES})")
    if len(every) > MAX_CELLS:
        problems.append(f"{len(every)} cells (at most {MAX_CELLS})")
    return problems


def forbidden_words(path, field_names=()):
    """Plumbing in the prose: dates, bench/, tests/, docs/RESULTS, issue numbers, version history, the
    profiles' setting names in backticks; and FORBIDDEN_ANYWHERE in prose or code."""
    problems = []
    for number, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type == "markdown":
            for pattern, what in FORBIDDEN_IN_MARKDOWN.items():
                problems += [f"cell {number}: {what}: {found.group(0)!r}"
                             for found in re.finditer(pattern, cell.source, re.IGNORECASE)]
            for span in re.findall(r"`([^`\n]+)`", cell.source):  # `profile.lora_rank` is code to type: allowed
                if span in field_names:
                    problems.append(f"cell {number}: a profile setting's name as an explanation: `{span}`")
        for word in FORBIDDEN_ANYWHERE:
            if re.search(rf"\b{word}", cell.source, re.IGNORECASE):
                problems.append(f"cell {number}: the word {word!r}")
    return problems


def library_problems(path, names):
    """Each of `names` called in a code cell: LoraConfig(...), not only our wrapper around it."""
    code = "\n".join(cell.source for cell in cells(path, "code"))
    return [f"no code cell calls {name}(...)" for name in names if not re.search(rf"\b{name}\(", code)]


def figure_problems(path):
    """Every image a Markdown cell shows exists, relative to the notebook."""
    problems = []
    for cell in cells(path, "markdown"):
        for link in (a or b for a, b in IMAGE_LINK.findall(cell.source)):
            if not re.match(r"[a-z]+:", link) and not (Path(path).parent / link).is_file():
                problems.append(f"shows {link}, which does not exist")
    return problems


def diagram_problems(path):
    """At least one figure of notebooks/figures/ whose name starts with the notebook's number, shown."""
    shown = [Path(a or b).name for cell in cells(path, "markdown") for a, b in IMAGE_LINK.findall(cell.source)]
    number = Path(path).name[:2]
    own = [name for name in shown if name.startswith(number) and name.endswith(".svg")
           and (Path(path).parent / "figures" / name).is_file()]
    return [] if own else [f"shows no figures/{number}*.svg of its own"]


def drift_problems(path, reference_folder):
    """The reference copy's code cells are the notebook's own."""
    copy = reference_folder / path.name
    if not copy.exists():
        return [f"no reference copy {copy.relative_to(reference_folder.parent.parent)}"]
    ours = [cell.source for cell in cells(path, "code")]
    theirs = [cell.source for cell in cells(copy, "code")]
    if ours == theirs:
        return []
    changed = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    return [f"the reference copy's code differs from the notebook's (code cells {changed or 'added or removed'}): "
            "run `make reference`"]


def time_line_problems(path, reference_dir):
    """The `**Time**:` line of the title cell is what `python -m utils sync-times` writes."""
    title = first_markdown(nbformat.read(path, as_version=4))
    lines = [line for line in (title.source if title else "").split("\n") if line.startswith(TIME_PREFIX)]
    wanted = time_line(path.stem, reference_dir)
    if lines == [wanted]:
        return []
    return [f"its time line is {lines[0] if lines else 'missing'!r}, not {wanted!r}: run `python -m utils sync-times`"]


# --- the course's notebooks and solutions ------------------------------------------------------------------

EVERY = NOTEBOOKS + SOLUTIONS
IDS = [path.stem for path in EVERY]


@pytest.mark.parametrize("path", EVERY, ids=IDS)
def test_the_title_comes_first_and_the_set_up_is_short(path):
    assert opening_problems(path) == []


@pytest.mark.parametrize("path", EVERY, ids=IDS)
def test_the_prose_teaches_and_tells_nothing_of_plumbing(path):
    assert forbidden_words(path, profile_field_names()) == []


@pytest.mark.parametrize("path", EVERY, ids=IDS)
def test_every_image_shown_exists(path):
    assert figure_problems(path) == []


def notebook_on(subject):
    found = [path for path in NOTEBOOKS if topic(path) == subject]
    assert found, f"no notebook notebooks/NN_{subject}.ipynb"
    return found[0]


@pytest.mark.parametrize(("subject", "names"), LIBRARY_IN_SIGHT.items(), ids=list(LIBRARY_IN_SIGHT))
def test_the_notebook_that_teaches_a_method_builds_it_with_the_librarys_own_api(subject, names):
    assert library_problems(notebook_on(subject), names) == []


@pytest.mark.parametrize(("subject", "picture"), DIAGRAMS.items(), ids=list(DIAGRAMS))
def test_the_notebook_shows_its_diagram(subject, picture):
    assert diagram_problems(notebook_on(subject)) == [], f"the picture of {picture}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_the_time_line_is_written_from_the_reference_run(path):
    assert time_line_problems(path, ROOT / "reference") == []


def test_the_reference_run_covers_every_notebook():
    if not (REFERENCE / "run.json").exists():
        assert not list(REFERENCE.glob("*.ipynb")), "reference copies without run.json: run `make reference`"
        pytest.skip("no reference run written yet (reference/offline/run.json): `make reference` writes it")
    ran = json.loads((REFERENCE / "run.json").read_text(encoding="utf-8"))

    assert ran["profile"] == "offline" and ran["precision"] in ("bf16 autocast", "float32")
    assert sorted(ran["notebooks"]) == [path.stem for path in NOTEBOOKS]
    assert sorted(REFERENCE.glob("*.ipynb")) == [REFERENCE / path.name for path in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_the_reference_copy_runs_the_notebooks_code(path):
    if not (REFERENCE / "run.json").exists() and not list(REFERENCE.glob("*.ipynb")):
        pytest.skip("no reference run written yet (reference/offline/run.json): `make reference` writes it")
    assert drift_problems(path, REFERENCE) == []
    outputs = [cell.outputs for cell in cells(REFERENCE / path.name, "code")]
    assert any(outputs), "a reference copy without outputs"


def test_the_reference_copies_stay_small_and_free_of_run_logs():
    copies = sorted(REFERENCE.glob("*.ipynb"))
    if not copies:
        pytest.skip("no reference run written yet (reference/offline/run.json): `make reference` writes it")
    outputs = [output for copy in copies for cell in cells(copy, "code") for output in cell.outputs]

    assert sum(copy.stat().st_size for copy in copies) < MAX_REFERENCE_BYTES
    assert not [output for output in outputs if output.output_type == "stream" and output.name == "stderr"]
    assert not [output for output in outputs if any("widget" in mime for mime in output.get("data", {}))]
    for output in outputs:
        if "image/png" in output.get("data", {}):
            assert Image.open(io.BytesIO(base64.b64decode(output.data["image/png"]))).width <= MAX_IMAGE_WIDTH


# --- what each check catches, on made-up notebooks -----------------------------------------------------------


def notebook(tmp_path, *sources, name="03_lora.ipynb"):
    """A notebook of Markdown ("md: ...") and code cells, written to tmp_path/notebooks/`name`."""
    made = [nbformat.v4.new_markdown_cell(s[4:]) if s.startswith("md: ") else nbformat.v4.new_code_cell(s)
            for s in sources]
    path = tmp_path / "notebooks" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(cells=made), path)
    return path


SET_UP = "\n".join(f"SETTING_{i} = {i}" for i in range(8))


def test_a_good_opening_passes_and_each_fault_is_named(tmp_path):
    good = notebook(tmp_path, "md: # 03 · LoRA\n\nAim.", SET_UP, "run = course.start('03_lora')")
    code_first = notebook(tmp_path, SET_UP, "md: # 03 · LoRA", name="01_a.ipynb")
    long_set_up = notebook(tmp_path, "md: # 03 · LoRA", SET_UP + "\nx = 1", name="01_b.ipynb")
    too_long = notebook(tmp_path, "md: # 03 · LoRA", *["x = 1"] * 40, name="01_c.ipynb")

    assert opening_problems(good) == []
    assert opening_problems(code_first) == ["the first cell is not the Markdown title ('# NN · Title')"]
    assert opening_problems(long_set_up) == ["the first code cell has 9 lines (at most 8)"]
    assert opening_problems(too_long) == ["41 cells (at most 40)"]


def test_plumbing_in_prose_is_caught_and_teaching_prose_is_not(tmp_path):
    fields = ("forgetting_epochs", "lora_rank")
    good = notebook(tmp_path, "md: # 03 · LoRA\n\nThe profile trains for a few passes; `max_new_tokens` caps the "
                    "answer. The rank we print below, `profile.lora_rank`, decides the adapter's size.",
                    "print(profile.lora_rank)")
    bad = notebook(tmp_path, "md: Measured on 2026-12-07 from the bf16 copy (see `bench/compare.py`, "
                   "`tests/test_dpo.py`, docs/RESULTS.md and issue 46). Since TRL 0.29 it is faster.",
                   "md: Set `forgetting_epochs` or `lora_rank` to change it.",
                   "# a one-off helper from this stop\nx = 1", name="01_bad.ipynb")

    assert forbidden_words(good, fields) == []
    found = forbidden_words(bad, fields)
    for what in ("a date", "(the bf16 copy)", "a bench script", "a test file", "a results document", "an issue number",
                 "version history", "`forgetting_epochs`", "`lora_rank`", "'one-off'", "'helper'", "'this stop'"):
        assert any(what in problem for problem in found), what


def test_the_setting_names_checked_are_the_profiles_own_but_not_the_librarys():
    names = profile_field_names()

    assert {"forgetting_epochs", "forgetting_train_examples", "lora_rank", "ppo_target_kl"} <= set(names)
    assert not {"max_new_tokens", "max_steps", "lora_dropout", "model", "seed"} & set(names)


def test_the_library_check_wants_a_call_not_a_mention(tmp_path):
    called = notebook(tmp_path, "md: # 03", "config = LoraConfig(r=8)\nmodel = get_peft_model(model, config)")
    mentioned = notebook(tmp_path, "md: # 03 · LoraConfig(r=8)", "# LoraConfig is inside add_lora\nadd_lora(model)",
                         name="03_b.ipynb")

    assert library_problems(called, ("LoraConfig", "get_peft_model")) == []
    assert library_problems(mentioned, ("LoraConfig",)) == ["no code cell calls LoraConfig(...)"]


def test_figures_must_exist_and_the_diagram_must_be_the_notebooks_own(tmp_path):
    (tmp_path / "notebooks" / "figures").mkdir(parents=True)
    (tmp_path / "notebooks" / "figures" / "03_lora-side-path.svg").write_text("<svg/>")
    (tmp_path / "notebooks" / "figures" / "01_prompting-masks.svg").write_text("<svg/>")
    shows_own = notebook(tmp_path, "md: ![W + BA](figures/03_lora-side-path.svg)")
    shows_other = notebook(tmp_path, "md: <img src=\"figures/01_prompting-masks.svg\" width=600>", name="03_b.ipynb")
    broken = notebook(tmp_path, "md: ![gone](figures/03_gone.svg) ![web](https://example.org/x.svg)", name="03_c.ipynb")

    assert figure_problems(shows_own) == [] and diagram_problems(shows_own) == []
    assert figure_problems(shows_other) == [] and diagram_problems(shows_other) == ["shows no figures/03*.svg of its own"]
    assert figure_problems(broken) == ["shows figures/03_gone.svg, which does not exist"]
    assert diagram_problems(broken) == ["shows no figures/03*.svg of its own"]


def test_a_reference_copy_whose_code_drifted_is_caught(tmp_path):
    path = notebook(tmp_path, "md: # 03", "x = 1", "print(x)")
    reference = tmp_path / "reference" / "offline"
    reference.mkdir(parents=True)
    same = nbformat.read(path, as_version=4)
    same.cells[1].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    nbformat.write(same, reference / path.name)

    assert drift_problems(path, reference) == []
    same.cells[2].source = "print(x + 1)"
    nbformat.write(same, reference / path.name)
    assert drift_problems(path, reference) == ["the reference copy's code differs from the notebook's (code cells [1]): "
                                               "run `make reference`"]
    assert drift_problems(notebook(tmp_path, "md: # 04", name="04_x.ipynb"), reference) == [
        "no reference copy reference/offline/04_x.ipynb"]


def test_a_time_line_written_by_hand_is_caught(tmp_path):
    reference = tmp_path / "reference"
    (reference / "offline").mkdir(parents=True)
    (reference / "offline" / "run.json").write_text(json.dumps({
        "profile": "offline", "machine": "A CPU, 2 cores, 2 threads; avx2", "precision": "float32",
        "notebooks": {"03_lora": {"seconds": 600, "peak_ram_mb": 3000}}}))
    written = notebook(tmp_path, f"md: # 03 · LoRA\n\n{time_line('03_lora', reference)}")
    by_hand = notebook(tmp_path, "md: # 03 · LoRA\n\n**Time**: `offline` 9 minutes (554 s on 2026-12-04)",
                       name="03_lora_b.ipynb")

    assert "`offline` about 10 min and 3 GB of RAM on a 2-core CPU in float32" in time_line("03_lora", reference)
    assert time_line_problems(written, reference) == []
    assert "run `python -m utils sync-times`" in time_line_problems(by_hand, reference)[0]
