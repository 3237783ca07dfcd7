"""`make check-results`: the figures docs/RESULTS.md records for the offline profile, against a fresh run.

docs/RESULTS.md holds one table under the heading "Recorded figures": notebook, method, variant,
figure, recorded value and tolerance. Each row names one number in runs/offline/results.json.
After the notebooks ran again (under a new lock, say), every row is compared; a figure that moved
by more than its tolerance, or went missing, fails the check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from utils.plumbing.files import PROJECT_ROOT

RESULTS_DOC = PROJECT_ROOT / "docs" / "RESULTS.md"
HEADING = "## Recorded figures"
COLUMNS = ["notebook", "method", "variant", "figure", "recorded", "tolerance"]


@dataclass(frozen=True)
class Figure:
    """One recorded number: where it lives in results.json, its value and how far it may move."""

    notebook: str
    method: str
    variant: str
    name: str
    recorded: float
    tolerance: float

    @property
    def label(self) -> str:
        variant = f" [{self.variant}]" if self.variant else ""
        return f"{self.notebook} {self.method}{variant} {self.name}"


@dataclass(frozen=True)
class Comparison:
    figure: Figure
    measured: float | None

    @property
    def ok(self) -> bool:
        return self.measured is not None and abs(self.measured - self.figure.recorded) <= self.figure.tolerance

    def line(self) -> str:
        if self.measured is None:
            return f"MISSING {self.figure.label}: recorded {self.figure.recorded:g}, not in this run's results.json"
        verdict = "ok     " if self.ok else "MOVED  "
        moved = round(self.measured - self.figure.recorded, 4) + 0.0  # no "-0.0000"
        return (f"{verdict}{self.figure.label}: recorded {self.figure.recorded:g}, measured {self.measured:.4f} "
                f"(moved {moved:+.4f}, tolerance {self.figure.tolerance:g})")


def recorded_figures(text: str) -> list[Figure]:
    """The rows of the "Recorded figures" table of a RESULTS.md text (ValueError when the table is missing)."""
    if HEADING not in text:
        raise ValueError(f"No '{HEADING}' section in the results document.")
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")] if rows else []
    if header != COLUMNS:
        raise ValueError(f"The '{HEADING}' table must have the columns {' | '.join(COLUMNS)}; found {header}.")
    figures = []
    for row in rows[2:]:
        cells = [cell.strip().strip("`") for cell in row.strip().strip("|").split("|")]
        notebook, method, variant, name, recorded, tolerance = cells
        figures.append(Figure(notebook, method, variant, name, float(recorded), float(tolerance)))
    return figures


def measured_value(records: list[dict], figure: Figure) -> float | None:
    """The figure's number in a results.json list of records, or None."""
    for record in records:
        if (record.get("notebook") == figure.notebook and record.get("method") == figure.method
                and record.get("variant", "") == figure.variant):
            value = record.get(figure.name)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return None


def compare(figures: list[Figure], records: list[dict], notebooks: list[str] | None = None) -> list[Comparison]:
    """A comparison per figure (of the notebooks whose name starts with one of `notebooks`, when given)."""
    chosen = [f for f in figures if not notebooks or any(f.notebook.startswith(n) for n in notebooks)]
    return [Comparison(f, measured_value(records, f)) for f in chosen]


def check(records: list[dict], notebooks: list[str] | None = None, document: Path = RESULTS_DOC) -> tuple[bool, list[str]]:
    """(all within tolerance, one line per figure) for a run's records against the document."""
    comparisons = compare(recorded_figures(document.read_text(encoding="utf-8")), records, notebooks)
    if not comparisons:
        return False, [f"No recorded figures for notebooks {notebooks} in {document.name}."]
    lines = [c.line() for c in comparisons]
    moved = sum(not c.ok for c in comparisons)
    lines.append(f"{len(comparisons) - moved} of {len(comparisons)} figures as recorded" +
                 (f"; {moved} moved or missing" if moved else ""))
    return moved == 0, lines

