"""`make check-results`: the figures docs/expected_results.toml records, against a fresh run.

Each recorded figure names one number in runs/offline/results.json. After the notebooks ran again
(under a new lock, say), every figure of one precision is compared: `make check-results` trains in
float32, so it reads the float32 figures; a learner's default run on a CPU with bf16 compares with
the "bf16 autocast" ones. A figure that moved by more than its tolerance, or went missing, fails the check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from utils.apps.expected_results import CHECKED_PRECISION, EXPECTED_FILE, Figure, load_expected

__all__ = ["Comparison", "Figure", "check", "compare", "measured_value"]


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


def check(records: list[dict], notebooks: list[str] | None = None, expected_file: Path = EXPECTED_FILE,
          precision: str = CHECKED_PRECISION) -> tuple[bool, list[str]]:
    """(all within tolerance, one line per figure) for a run's records against the recorded figures of `precision`."""
    comparisons = compare(load_expected(expected_file).of_precision(precision), records, notebooks)
    if not comparisons:
        return False, [f"No recorded {precision} figures for notebooks {notebooks} in {expected_file.name}."]
    lines = [c.line() for c in comparisons]
    moved = sum(not c.ok for c in comparisons)
    lines.append(f"{len(comparisons) - moved} of {len(comparisons)} {precision} figures as recorded" +
                 (f"; {moved} moved or missing" if moved else ""))
    return moved == 0, lines
