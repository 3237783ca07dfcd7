"""docs/expected_results.toml: every recorded figure of the course, with where it came from.

Each figure names one number of a run's results.json (notebook, method, variant, figure), its
value and how far a new run may move it (tolerance), and the source it was measured in: profile,
precision ("float32", as `make check-results` trains, or "bf16 autocast", a default run on a CPU
with bf16), machine, commit, lock hash and command. `python -m utils record-expected` writes
figures from a results.json; `python -m utils check-results` and `python -m utils sync-docs` read them.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tomllib
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path

from utils.plumbing.files import PROJECT_ROOT

EXPECTED_FILE = PROJECT_ROOT / "docs" / "expected_results.toml"
LOCK_FILE = PROJECT_ROOT / "requirements" / "lock.txt"
PRECISIONS = ("float32", "bf16 autocast")
CHECKED_PRECISION = "float32"  # `make check-results` trains in float32 on every machine

# The figures a new record contributes, and how far each may move between two runs of the same code.
# ROUGE reproduces to the fourth decimal on both kinds of CPU; perplexity is read to two decimals,
# BLEU to one; a short-answer or benchmark accuracy of ~136 items moves by a few items; sampled
# toxicity and the reward model's accuracy by about 0.01. A figure already in the file keeps its tolerance.
DEFAULT_TOLERANCES = {
    "rouge1": 0.002, "rougeL": 0.002, "bleu": 0.2, "perplexity": 0.05,
    "perplexity_before": 0.05, "perplexity_after": 0.05,
    "second_task_before": 0.02, "second_task_after": 0.02,
    "benchmark_before": 0.02, "benchmark_after": 0.02,
    "toxicity_before_mean": 0.01, "toxicity_after_mean": 0.01,
    "rouge1_before": 0.002, "rouge1_after": 0.01,
    "test_accuracy": 0.01, "untrained_accuracy": 0.01,
}
# Names by pattern: the paired 95% interval of any change (ci_low, second_task_ci_high, ...: the
# effects table of docs/RESULTS.md), and the share of samples that pass a check before and after (GRPO).
PATTERN_TOLERANCES = {r"(\w+_)?ci_(low|high)": 0.02, r"pass_\w+_(before|after)": 0.02}


def is_interval_bound(name: str) -> bool:
    """ci_low, ci_high and their prefixed forms (second_task_ci_low, ...)."""
    return re.fullmatch(r"(\w+_)?ci_(low|high)", name) is not None

HEADER = """\
# The recorded figures of the course: one source for `python -m utils check-results` (float32
# figures) and the expected-results tables of README.md, docs/RESULTS.md and docs/INSTRUCTORS.md
# (`python -m utils sync-docs`). Written by `python -m utils record-expected --from <results.json>
# --precision <precision>`; a tolerance edited here by hand is kept when the figure is recorded again.
# A [sources.*] table says where its figures were measured: profile, precision, machine, the commit
# and lock (first 12 hex digits of the sha256 of requirements/lock.txt), and the command.
"""


@dataclass(frozen=True)
class Source:
    """Where a set of figures was measured."""

    id: str
    profile: str
    precision: str
    machine: str
    commit: str
    lock: str
    command: str
    date: str
    note: str = ""


@dataclass(frozen=True)
class Figure:
    """One recorded number: where it lives in results.json, its value and how far it may move."""

    notebook: str
    method: str
    variant: str
    name: str
    recorded: float
    tolerance: float
    source: str = ""
    precision: str = CHECKED_PRECISION

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.notebook, self.method, self.variant, self.name

    @property
    def label(self) -> str:
        variant = f" [{self.variant}]" if self.variant else ""
        return f"{self.notebook} {self.method}{variant} {self.name}"


@dataclass
class Expected:
    """The file's content: its sources by id and its figures, in order."""

    sources: dict[str, Source] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)

    def of_precision(self, precision: str) -> list[Figure]:
        return [f for f in self.figures if f.precision == precision]


def parse_expected(text: str) -> Expected:
    """The sources and figures of an expected_results.toml text (ValueError when a figure's source is missing)."""
    data = tomllib.loads(text)
    sources = {key: Source(id=key, **value) for key, value in data.get("sources", {}).items()}
    figures = []
    for entry in data.get("figures", []):
        source = sources.get(entry["source"])
        if source is None:
            raise ValueError(f"Figure {entry} names source {entry['source']!r}, which the file does not define.")
        figures.append(Figure(entry["notebook"], entry["method"], entry.get("variant", ""), entry["figure"],
                              float(entry["value"]), float(entry["tolerance"]), source.id, source.precision))
    return Expected(sources, figures)


def load_expected(path: Path = EXPECTED_FILE) -> Expected:
    """The recorded figures (an empty Expected when the file does not exist)."""
    return parse_expected(path.read_text(encoding="utf-8")) if path.exists() else Expected()


def _toml_value(value) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    return repr(float(value))


def format_expected(expected: Expected) -> str:
    """The TOML text of `expected`: the header, the sources that still have figures, then the figures."""
    used = [expected.sources[key] for key in dict.fromkeys(f.source for f in expected.figures)]
    lines = [HEADER]
    for source in sorted(used, key=lambda s: (s.precision, s.date, s.id)):
        lines.append(f"[sources.{json.dumps(source.id)}]")
        lines += [f"{name} = {_toml_value(value)}" for name, value in asdict(source).items()
                  if name != "id" and (value or name != "note")]
        lines.append("")
    for figure in expected.figures:
        lines += ["[[figures]]", f"notebook = {_toml_value(figure.notebook)}", f"method = {_toml_value(figure.method)}",
                  f"variant = {_toml_value(figure.variant)}", f"figure = {_toml_value(figure.name)}",
                  f"value = {_toml_value(figure.recorded)}", f"tolerance = {_toml_value(figure.tolerance)}",
                  f"source = {_toml_value(figure.source)}", ""]
    return "\n".join(lines)


def lock_hash(path: Path = LOCK_FILE) -> str:
    """The first 12 hex digits of the lock file's sha256, as run.json and the check's runs folder name it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def current_commit(root: Path = PROJECT_ROOT) -> str:
    """The commit checked out (12 hex digits), or "unknown" without git."""
    try:
        found = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return found.stdout.strip() or "unknown"


def machine_of_run(results_file: Path) -> str:
    """The machine the runner wrote into status.json beside results.json (its most common entry), or ""."""
    status_file = results_file.parent / "status.json"
    if not status_file.exists():
        return ""
    status = json.loads(status_file.read_text(encoding="utf-8"))
    machines = Counter(entry.get("machine", "") for entry in status.values() if isinstance(entry, dict))
    machines.pop("", None)
    return machines.most_common(1)[0][0] if machines else ""


def source_id(precision: str, commit: str, taken: dict[str, Source]) -> str:
    """A short id such as "float32-f9841b36" that `taken` does not use yet."""
    base = f"{re.sub(r'[^a-z0-9]+', '-', precision.lower()).strip('-')}-{commit[:8]}"
    candidate, number = base, 2
    while candidate in taken:
        candidate, number = f"{base}-{number}", number + 1
    return candidate


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def tolerance_for(expected: Expected, notebook: str, method: str, variant: str, name: str,
                  tolerances: dict[str, float]) -> float | None:
    """A figure's tolerance: given on the command line, else the same figure's in the file (any precision),
    else the same method's figure of that name in another variant, else DEFAULT_TOLERANCES' or
    PATTERN_TOLERANCES' (None: not a figure)."""
    if name in tolerances:
        return tolerances[name]
    for figure in expected.figures:
        if figure.key == (notebook, method, variant, name):
            return figure.tolerance
    for figure in expected.figures:
        if (figure.notebook, figure.method, figure.name) == (notebook, method, name):
            return figure.tolerance
    if name in DEFAULT_TOLERANCES:
        return DEFAULT_TOLERANCES[name]
    return next((value for pattern, value in PATTERN_TOLERANCES.items() if re.fullmatch(pattern, name)), None)


def record_expected(expected: Expected, records: list[dict], source: Source,
                    notebooks: list[str] | None = None, tolerances: dict[str, float] | None = None
                    ) -> tuple[Expected, list[str]]:
    """`expected` with the figures of `records` recorded under `source`, and a line per change.

    The figures of `source.precision` for every notebook these records cover are replaced: a figure
    the new run no longer records goes. A record's figures are its numeric fields that have a
    tolerance (`tolerance_for`); other fields (times, counts, settings) are not recorded.
    """
    tolerances = tolerances or {}
    chosen = [r for r in records if not notebooks or any(r["notebook"].startswith(n) for n in notebooks)]
    covered = {r["notebook"] for r in chosen}
    before = {f.key: f for f in expected.of_precision(source.precision) if f.notebook in covered}
    sources = dict(expected.sources)
    if source.id in sources and sources[source.id] != source:
        source = replace(source, id=source_id(source.precision, source.commit, sources))
    sources[source.id] = source
    new, unrecorded = [], set()
    for record in chosen:
        variant = record.get("variant", "")
        for name, value in record.items():
            number = _number(value)
            tolerance = tolerance_for(expected, record["notebook"], record["method"], variant, name, tolerances)
            if number is not None and tolerance is not None:
                new.append(Figure(record["notebook"], record["method"], variant, name, round(number, 4),
                                  tolerance, source.id, source.precision))
            elif number is not None:
                unrecorded.add(name)
    lines = []
    for figure in new:
        old = before.pop(figure.key, None)
        if old is None:
            lines.append(f"new     {figure.label}: {figure.recorded:g} (tolerance {figure.tolerance:g})")
        elif abs(old.recorded - figure.recorded) > old.tolerance:
            lines.append(f"moved   {figure.label}: {old.recorded:g} -> {figure.recorded:g} (tolerance {old.tolerance:g})")
    lines += [f"gone    {old.label}: {old.recorded:g} (not in these records)" for old in before.values()]
    if unrecorded:
        lines.append(f"not recorded (no tolerance; --tolerance NAME=VALUE records one): {', '.join(sorted(unrecorded))}")
    kept = [f for f in expected.figures if not (f.precision == source.precision and f.notebook in covered)]
    figures = sorted([*kept, *new], key=lambda f: (f.notebook, PRECISIONS.index(f.precision)
                                                   if f.precision in PRECISIONS else len(PRECISIONS)))
    lines.append(f"{len(new)} {source.precision} figure(s) of {len(covered)} notebook(s) recorded as source {source.id}")
    return Expected(sources, figures), lines


def make_source(precision: str, profile: str, machine: str, commit: str, lock: str, command: str,
                when: str | None = None, note: str = "", taken: dict[str, Source] | None = None) -> Source:
    """A Source with a fresh id (the precision and commit)."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; one of: {', '.join(PRECISIONS)}.")
    return Source(source_id(precision, commit, {}), profile, precision, machine, commit, lock, command,
                  when or date.today().isoformat(), note)


def record_file(results_file: Path, precision: str, notebooks: list[str] | None = None,
                tolerances: dict[str, float] | None = None, commit: str | None = None, machine: str | None = None,
                lock: str | None = None, command: str | None = None, when: str | None = None, note: str = "",
                expected_file: Path = EXPECTED_FILE) -> list[str]:
    """`python -m utils record-expected`: record a results.json's figures into `expected_file`; a line per change.

    Unless given, the commit is the one checked out, the lock the installed lock's hash, the machine
    the one status.json beside results.json names, and the command `make check-results` for float32
    figures, `make run` for bf16 autocast ones.
    """
    records = json.loads(Path(results_file).read_text(encoding="utf-8"))
    profiles = {r.get("profile", "") for r in records} - {""}
    if len(profiles) > 1:
        raise ValueError(f"{results_file} mixes profiles {sorted(profiles)}; record one profile at a time.")
    expected = load_expected(expected_file)
    source = make_source(precision, profiles.pop() if profiles else "offline",
                         machine or machine_of_run(Path(results_file)) or "unknown", commit or current_commit(),
                         lock or lock_hash(),
                         command or ("make check-results" if precision == CHECKED_PRECISION else "make run"),
                         when, note)
    source = next((s for s in expected.sources.values() if replace(s, id=source.id) == source), source)
    updated, lines = record_expected(expected, records, source, notebooks, tolerances)
    expected_file.write_text(format_expected(updated), encoding="utf-8")
    return lines
