"""The documentation: generated tables as `python -m utils sync-docs` writes them, sizes a reader can take
in, and no word about how the course was made."""

import re

import pytest

from utils.apps.expected_results import load_expected, parse_expected
from utils.apps.sync_docs import NOT_MEASURED, documents, load_run, notebook_header, sync_docs, synced_text
from utils.plumbing.files import PROJECT_ROOT

EXPECTED = """
[sources.fp32]
profile = "offline"
precision = "float32"
machine = "a 2-core CPU"
commit = "abc123456789"
lock = "0123456789ab"
command = "make check-results"
date = "2026-12-07"

[sources.bf16]
profile = "offline"
precision = "bf16 autocast"
machine = "a 2-core CPU"
commit = "abc123456789"
lock = "0123456789ab"
command = "make run"
date = "2026-12-07"

[[figures]]
notebook = "06_rlhf_ppo"
method = "ppo"
variant = ""
figure = "toxicity_before_mean"
value = 0.1547
tolerance = 0.01
source = "fp32"

[[figures]]
notebook = "06_rlhf_ppo"
method = "ppo"
variant = ""
figure = "toxicity_after_mean"
value = 0.1144
tolerance = 0.01
source = "fp32"

[[figures]]
notebook = "06_rlhf_ppo"
method = "ppo"
variant = ""
figure = "toxicity_after_mean"
value = 0.1211
tolerance = 0.01
source = "bf16"

[[figures]]
notebook = "09_grpo"
method = "grpo"
variant = ""
figure = "reward_after"
value = 0.8
tolerance = 0.02
source = "bf16"
"""
DOC = """# Results

Before.

<!-- generated: expected-headlines -->
stale
<!-- end generated -->

<!-- generated: notebook-times -->
<!-- end generated -->
After.
"""


def test_a_generated_block_is_rewritten_and_the_text_around_it_kept():
    synced = synced_text(DOC, parse_expected(EXPECTED), None)

    assert synced.startswith("# Results\n\nBefore.\n\n<!-- generated: expected-headlines -->\n| notebook | figure |")
    assert "| 06 | sampled toxicity, before → after PPO | 0.1547 → 0.1144 | — | 0.01 |" in synced
    assert "| 09 | grpo reward_after | — | 0.8 | 0.02 |" in synced  # a notebook without a headline: its figures
    assert "stale" not in synced and synced.endswith("<!-- end generated -->\nAfter.\n")
    assert NOT_MEASURED in synced
    assert synced_text(synced, parse_expected(EXPECTED), None) == synced


def test_the_times_come_from_the_reference_run():
    run = {"profile": "offline", "commit": "abc123456789", "lock": "0123456789ab", "machine": "a 2-core CPU",
           "precision": "bf16 autocast", "notebooks": {"01_prompting": {"seconds": 109.0, "peak_ram_mb": 2345},
                                                       "02_full_fine_tuning": {"seconds": 282.0, "peak_ram_mb": 4100}}}

    synced = synced_text(DOC, parse_expected(EXPECTED), run)

    assert "| 01_prompting | 109 | 2.3 GB |" in synced
    assert "| all | 391 (7 min) | |" in synced
    assert "bf16 autocast, commit abc12345, lock 0123456789ab, on a 2-core CPU" in synced


def test_each_change_is_shown_with_its_interval():
    expected = parse_expected(EXPECTED + """
[[figures]]
notebook = "06_rlhf_ppo"
method = "ppo"
variant = ""
figure = "ci_low"
value = -0.0891
tolerance = 0.02
source = "fp32"

[[figures]]
notebook = "06_rlhf_ppo"
method = "ppo"
variant = ""
figure = "ci_high"
value = 0.0085
tolerance = 0.02
source = "fp32"
""")

    synced = synced_text("<!-- generated: effects -->\n<!-- end generated -->\n", expected, None)

    assert "| 06 ppo | sampled toxicity | float32 | 0.1547 → 0.1144 | [-0.0891, +0.0085] |" in synced
    assert "Not recorded yet" in synced_text("<!-- generated: effects -->\n<!-- end generated -->\n",
                                             parse_expected(EXPECTED), None)


def test_a_block_nothing_writes_is_an_error():
    with pytest.raises(ValueError, match="no-such-table"):
        synced_text("<!-- generated: no-such-table -->\n<!-- end generated -->\n", parse_expected(EXPECTED), None)


def test_every_generated_block_is_as_sync_docs_writes_it():
    assert sync_docs(check_only=True) == [], "run `python -m utils sync-docs`"


def test_the_readme_and_the_docs_hold_the_generated_tables():
    texts = {path.name: path.read_text(encoding="utf-8") for path in documents()}

    assert "<!-- generated: expected-results -->" in texts["RESULTS.md"]
    assert "<!-- generated: notebook-times -->" in texts["RESULTS.md"]
    assert "<!-- generated: expected-headlines -->" in texts["INSTRUCTORS.md"]
    assert "<!-- generated: notebooks -->" in texts["README.md"]
    assert load_expected().figures and (load_run() is None or load_run()["notebooks"])


def test_every_notebook_has_a_title_for_the_tables():
    for path in sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        title, _ = notebook_header(path)
        assert title != path.stem, f"{path.name} has no '# NN · Title' cell"


@pytest.mark.parametrize(("name", "limit"), [("docs/RESULTS.md", 15_000), ("docs/BENCHMARKS.md", 10_000),
                                             ("docs/INSTRUCTORS.md", 10_000)])
def test_the_reference_documents_stay_short(name, limit):
    assert len((PROJECT_ROOT / name).read_bytes()) <= limit


def test_the_readme_fits_150_lines():
    assert len((PROJECT_ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150


def test_no_document_says_how_the_course_was_made():
    made = re.compile(r"issue [0-9]|this stop|the stop|in this session|one-off", re.IGNORECASE)
    paths = [*documents(), *(PROJECT_ROOT / "notebooks").glob("*.ipynb"), *(PROJECT_ROOT / "solutions").rglob("*")]
    hits = [f"{path.relative_to(PROJECT_ROOT)}: {found.group(0)}" for path in paths if path.is_file()
            for found in made.finditer(path.read_text(encoding="utf-8", errors="ignore"))]

    assert hits == []
