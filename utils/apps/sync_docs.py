"""`python -m utils sync-docs`: the generated tables of README.md and docs/*.md.

A generated block sits between `<!-- generated: NAME -->` and `<!-- end generated -->`; the
command rewrites what is between them from docs/expected_results.toml (the recorded figures) and
reference/offline/run.json (the reference run's seconds and peak memory per notebook, written by
`python -m utils reference`; "not measured yet" without it). tests/test_docs.py fails when a block
differs from what the command would write. The blocks:

- expected-results: every recorded figure but the intervals, float32 and bf16 autocast side by side,
  and their sources;
- effects: each change with its paired 95% interval, in each precision;
- expected-headlines: one or two figures per notebook, the ones a learner compares with;
- notebooks: the notebook table (time, what to do first, the headline figure);
- colab: a Colab badge per notebook (the format `python -m utils sync-colab` keeps up to date);
- notebook-times: seconds and peak memory per notebook in the reference run, with its machine and commit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nbformat

from utils.apps.colab import colab_badge
from utils.apps.expected_results import (
    CHECKED_PRECISION,
    PRECISIONS,
    Expected,
    Figure,
    is_interval_bound,
    load_expected,
)
from utils.plumbing.files import PROJECT_ROOT, write_text_atomic

RUN_JSON = PROJECT_ROOT / "reference" / "offline" / "run.json"
BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end generated -->)", re.S)
NOT_MEASURED = ("Not measured yet: this table is written from reference/offline/run.json, which "
                "`python -m utils reference` writes at the end of `make reference`.")
LEARNER_PRECISION = "bf16 autocast"  # what a default run trains in on a CPU with bf16 (and on a GPU)


@dataclass(frozen=True)
class Headline:
    """A figure to look at after a notebook: one value, or a `before` value and the value after."""

    label: str
    after: tuple[str, str, str]  # (method, variant, figure)
    before: tuple[str, str, str] | None = None


HEADLINES = {
    "01": [Headline("ROUGE-1, zero-shot → few-shot", ("few_shot", "", "rouge1"), ("zero_shot", "", "rouge1"))],
    "02": [Headline("ROUGE-1, base → full fine-tuning", ("full", "", "rouge1"), ("base", "", "rouge1")),
           Headline("short answers right, before → after the pushed full run",
                    ("full", "forgetting", "second_task_after"), ("full", "forgetting", "second_task_before"))],
    "03": [Headline("ROUGE-1 with LoRA", ("lora", "", "rouge1")),
           Headline("short answers right after LoRA's forgetting run", ("lora", "forgetting", "second_task_after"))],
    "04": [Headline("ROUGE-1 with prompt tuning", ("prompt_tuning", "", "rouge1"))],
    "05": [Headline("ROUGE-1 with QLoRA", ("qlora", "", "rouge1"))],
    "06": [Headline("sampled toxicity, before → after PPO", ("ppo", "", "toxicity_after_mean"),
                    ("ppo", "", "toxicity_before_mean"))],
    "07": [Headline("held-out pairs ranked right, untrained → trained", ("reward_model", "", "test_accuracy"),
                    ("reward_model", "", "untrained_accuracy"))],
    "08": [Headline("sampled toxicity, before → after DPO", ("dpo", "", "toxicity_after_mean"),
                    ("dpo", "", "toxicity_before_mean"))],
    "09": [Headline("summaries that copy no sentence, before → after GRPO", ("grpo", "", "pass_copies_no_sentence_after"),
                    ("grpo", "", "pass_copies_no_sentence_before")),
           Headline("sampled toxicity, before → after GRPO", ("grpo", "", "toxicity_after_mean"),
                    ("grpo", "", "toxicity_before_mean"))],
}


def notebook_paths(root: Path = PROJECT_ROOT) -> list[Path]:
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def load_run(path: Path = RUN_JSON) -> dict | None:
    """The reference run's run.json, or None before one was written."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def notebook_header(path: Path) -> tuple[str, str]:
    """(title, what to do first) from a notebook's title cell: `# NN · Title` and the first sentence of its
    "Before this:" line."""
    notebook = nbformat.read(path, as_version=4)
    cell = next((c for c in notebook.cells if c.cell_type == "markdown" and c.source.startswith("# ")), None)
    if cell is None:
        return path.stem, "—"
    title = cell.source.splitlines()[0][2:].split("·", 1)[-1].strip()
    before = re.search(r"Before this\**:?\**\s*(.+)", cell.source)
    return title, before.group(1).split(". ")[0].strip().strip("*").rstrip(".") if before else "—"


def _value(figure: Figure | None) -> str:
    return "—" if figure is None else f"{figure.recorded:g}"


def _find(figures: list[Figure], notebook: str, key: tuple[str, str, str]) -> Figure | None:
    return next((f for f in figures if (f.notebook, f.method, f.variant, f.name) == (notebook, *key)), None)


def _headline_text(figures: list[Figure], notebook: str, headline: Headline) -> str | None:
    after = _find(figures, notebook, headline.after)
    before = _find(figures, notebook, headline.before) if headline.before else None
    if after is None or (headline.before and before is None):
        return None
    return f"{_value(before)} → {_value(after)}" if before else _value(after)


def headlines_of(expected: Expected, notebook: str) -> list[Headline]:
    """The notebook's headlines that the file records (in any precision), else its first two figures."""
    chosen = [h for h in HEADLINES.get(notebook[:2], [])
              if any(_headline_text(expected.of_precision(p), notebook, h) for p in PRECISIONS)]
    if chosen:
        return chosen
    first = list(dict.fromkeys((f.method, f.variant, f.name) for f in expected.figures if f.notebook == notebook))
    return [Headline(" ".join(filter(None, (m, f"[{v}]" if v else "", n))), (m, v, n)) for m, v, n in first[:2]]


def _sources_lines(expected: Expected, figures: list[Figure]) -> list[str]:
    lines = []
    for source_id in dict.fromkeys(f.source for f in figures):
        source = expected.sources[source_id]
        numbers = list(dict.fromkeys(f.notebook[:2] for f in figures if f.source == source_id))
        lines.append(f"- {source.precision}, notebook{'s' if len(numbers) > 1 else ''} {', '.join(numbers)}: `{source.command}` on {source.date}, commit "
                     f"{source.commit[:8]}, lock {source.lock}, {source.machine}.")
    return lines


def expected_results_block(expected: Expected, run: dict | None, root: Path) -> str:
    """Every recorded figure: float32 (`make check-results`) and bf16 autocast (a default run) side by side."""
    every = {(f.notebook, f.method, f.variant, f.name) for f in expected.figures}
    # A forgetting record keeps its perplexity after training twice, as `perplexity_after` and `perplexity`: one row.
    keys = list(dict.fromkeys((f.notebook, f.method, f.variant, f.name) for f in expected.figures
                              if not is_interval_bound(f.name)
                              and not (f.name == "perplexity" and (f.notebook, f.method, f.variant, "perplexity_after") in every)))
    by_precision = {p: {(f.notebook, f.method, f.variant, f.name): f for f in expected.of_precision(p)}
                    for p in PRECISIONS}

    def figure(precision: str, key: tuple[str, str, str, str]) -> Figure | None:
        found = by_precision[precision].get(key)
        return found if found or key[3] != "perplexity_after" else by_precision[precision].get((*key[:3], "perplexity"))

    lines = ["| notebook, method (variant) | figure | float32 | bf16 autocast | ± |", "|---|---|---|---|---|"]
    for key in keys:
        float32, bf16 = figure(CHECKED_PRECISION, key), figure(LEARNER_PRECISION, key)
        record = f"{key[0][:2]} {key[1]}" + (f" ({key[2]})" if key[2] else "")
        lines.append(f"| {record} | {key[3]} | {_value(float32)} | {_value(bf16)} | {(float32 or bf16).tolerance:g} |")
    lines += ["", "Where each column comes from:", ""]
    lines += _sources_lines(expected, [f for p in PRECISIONS for f in expected.of_precision(p)])
    if not expected.of_precision(LEARNER_PRECISION):
        lines.append('- bf16 autocast: not recorded yet (`python -m utils record-expected --from '
                     'runs/offline/results.json --precision "bf16 autocast"` after a default run).')
    return "\n".join(lines) + "\n"


def expected_headlines_block(expected: Expected, run: dict | None, root: Path) -> str:
    """One or two figures per notebook, in both precisions."""
    lines = ["| notebook | figure | float32 (`make check-results`) | bf16 autocast (a default run) | tolerance |",
             "|---|---|---|---|---|"]
    for notebook in dict.fromkeys(f.notebook for f in expected.figures):
        for headline in headlines_of(expected, notebook):
            texts = [_headline_text(expected.of_precision(p), notebook, headline) or "—" for p in PRECISIONS]
            tolerance = next(f.tolerance for f in expected.figures
                             if (f.notebook, f.method, f.variant, f.name) == (notebook, *headline.after))
            lines.append(f"| {notebook[:2]} | {headline.label} | {texts[0]} | {texts[1]} | {tolerance:g} |")
    return "\n".join(lines) + "\n"


# The change an interval belongs to, by the interval's prefix: (before, after, what); any other prefix
# p reads p_before and p_after.
EFFECT_FIGURES = {
    "": ("toxicity_before_mean", "toxicity_after_mean", "sampled toxicity"),
    "second_task_": ("second_task_before", "second_task_after", "short answers right"),
    "benchmark_": ("benchmark_before", "benchmark_after", "benchmark accuracy"),
}


def effects_block(expected: Expected, run: dict | None, root: Path) -> str:
    """Each recorded change with its paired 95% interval: does the effect stand out of the noise?"""
    lines = ["| notebook, method (variant) | what | precision | before → after | 95% interval of the change |",
             "|---|---|---|---|---|"]
    for precision in PRECISIONS:
        figures = {(f.notebook, f.method, f.variant, f.name): f for f in expected.of_precision(precision)}
        for (notebook, method, variant, name) in list(figures):
            high = (notebook, method, variant, name.removesuffix("ci_low") + "ci_high")
            if not name.endswith("ci_low") or high not in figures:
                continue
            prefix = name.removesuffix("ci_low")
            before, after, what = EFFECT_FIGURES.get(
                prefix, (f"{prefix}before", f"{prefix}after", prefix.rstrip("_").replace("_", " ")))
            record = f"{notebook[:2]} {method}" + (f" ({variant})" if variant else "")
            change = " → ".join(_value(figures.get((notebook, method, variant, n))) for n in (before, after))
            interval = f"[{figures[(notebook, method, variant, name)].recorded:+.4f}, {figures[high].recorded:+.4f}]"
            lines.append(f"| {record} | {what} | {precision} | {change} | {interval} |")
    if len(lines) == 2:
        return ("Not recorded yet: the intervals enter docs/expected_results.toml with "
                "`python -m utils record-expected` from a run's results.json.\n")
    return "\n".join(lines) + "\n"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def notebooks_block(expected: Expected, run: dict | None, root: Path) -> str:
    """The README's notebook table: time in the reference run, what to do first, the headline figure."""
    precision = LEARNER_PRECISION if expected.of_precision(LEARNER_PRECISION) else CHECKED_PRECISION
    timed = (run or {}).get("notebooks", {})
    lines = [f"| notebook | time | before this | what you should see ({precision}) |", "|---|---|---|---|"]
    for path in notebook_paths(root):
        title, before = notebook_header(path)
        seconds = timed.get(path.stem, {}).get("seconds")
        figures = expected.of_precision(precision)
        seen = [f"{h.label} {text}" for h in headlines_of(expected, path.stem)
                if (text := _headline_text(figures, path.stem, h))]
        lines.append(f"| [{path.stem[:2]} · {title}](notebooks/{path.name}) | "
                     f"{_minutes(seconds) if seconds else 'not measured yet'} | {before} | "
                     f"{'; '.join(seen) or 'not recorded yet'} |")
    if timed:
        total = sum(entry.get("seconds") or 0 for entry in timed.values())
        lines += ["", f"All of them: {total / 60:.0f} minutes in the reference run ({run.get('precision', '')}, "
                  f"{run.get('machine', '')})."]
    return "\n".join(lines) + "\n"


def colab_block(expected: Expected, run: dict | None, root: Path) -> str:
    """A row per notebook in the format `python -m utils sync-colab` keeps its badge in."""
    lines = ["| notebook | title | Colab |", "|---|---|---|"]
    for path in notebook_paths(root):
        lines.append(f"| `{path.stem}` | {notebook_header(path)[0]} | {colab_badge(path.name)} |")
    return "\n".join(lines) + "\n"


def notebook_times_block(expected: Expected, run: dict | None, root: Path) -> str:
    """Seconds and peak memory of each notebook in the reference run."""
    if not run:
        return NOT_MEASURED + "\n"
    lines = ["| notebook | seconds | peak memory of its kernel |", "|---|---|---|"]
    total = 0.0
    for name, entry in run.get("notebooks", {}).items():
        seconds, memory = entry.get("seconds"), entry.get("peak_ram_mb")
        total += seconds or 0
        lines.append(f"| {name} | {seconds:,.0f} | {f'{memory / 1024:.1f} GB' if memory else '—'} |")
    lines.append(f"| all | {total:,.0f} ({total / 60:.0f} min) | |")
    lines += ["", f"Reference run: `make reference` (every notebook of the {run.get('profile', 'offline')} profile from an empty runs folder), {run.get('precision', '')}, "
              f"commit {str(run.get('commit', ''))[:8]}, lock {run.get('lock', '')}, on {run.get('machine', '')} "
              "(reference/offline/run.json)."]
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[Expected, dict | None, Path], str]] = {
    "expected-results": expected_results_block,
    "expected-headlines": expected_headlines_block,
    "effects": effects_block,
    "notebooks": notebooks_block,
    "colab": colab_block,
    "notebook-times": notebook_times_block,
}


def synced_text(text: str, expected: Expected, run: dict | None, root: Path = PROJECT_ROOT) -> str:
    """`text` with every generated block rewritten (ValueError for a block name nothing writes)."""
    def rewrite(found: re.Match) -> str:
        opening, name, _, closing = found.groups()
        if name not in RENDERERS:
            raise ValueError(f"No command writes a generated block named {name!r}; known: {', '.join(RENDERERS)}.")
        return opening + RENDERERS[name](expected, run, root) + closing

    return BLOCK.sub(rewrite, text)


def documents(root: Path = PROJECT_ROOT) -> list[Path]:
    """The files that may hold generated blocks: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def sync_docs(check_only: bool = False, root: Path = PROJECT_ROOT, expected: Expected | None = None,
              run: dict | None = None) -> list[str]:
    """Rewrite the generated blocks (or, with `check_only`, only compare); the names of the files that differed."""
    expected = expected if expected is not None else load_expected(root / "docs" / "expected_results.toml")
    run = run if run is not None else load_run(root / "reference" / "offline" / "run.json")
    changed = []
    for path in documents(root):
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        synced = synced_text(text, expected, run, root)
        if synced != text:
            changed.append(str(path.relative_to(root)))
            if not check_only:
                write_text_atomic(path, synced)
    return changed
