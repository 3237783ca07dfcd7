"""`python -m utils check-data PATH`: is this file usable as dialogue/summary training data?

Every problem is reported as one line: `file:line: problem. Fix: ...`. No tracebacks.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from utils.data import SPLITS, DataError, read_numbered_rows


@dataclass
class Report:
    """Problems found in a file, and the statistics of its good rows."""

    path: Path
    problems: list[str] = field(default_factory=list)
    rows: int = 0
    input_lengths: list[int] = field(default_factory=list)
    target_lengths: list[int] = field(default_factory=list)

    def problem(self, line: int | None, what: str, fix: str) -> None:
        where = f"{self.path}:{line}" if line else str(self.path)
        self.problems.append(f"{where}: {what}. Fix: {fix}.")

    @property
    def ok(self) -> bool:
        return not self.problems


def data_files(path: str | Path) -> list[Path]:
    """The files to check: `path` itself, or a folder's train, validation and test files (.jsonl or .csv),
    as COURSE_DATA reads a folder. DataError names a split the folder lacks."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    files = {split: next((path / f"{split}{suffix}" for suffix in (".jsonl", ".csv")
                          if (path / f"{split}{suffix}").exists()), None) for split in SPLITS}
    missing = [split for split, file in files.items() if file is None]
    if missing:
        raise DataError(f"{path}: no {' or '.join(f'{split}.jsonl / {split}.csv' for split in missing)}. Fix: a folder "
                        "holds train, validation and test files; or check one file.")
    return list(files.values())


def check_file(
    path: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    context_tokens: int,
    input_column: str = "dialogue",
    target_column: str = "summary",
) -> Report:
    """Check every row of a JSONL/CSV file; measure lengths in `tokenizer`'s tokens."""
    report = Report(path=Path(path))
    rows, problems = read_numbered_rows(report.path)
    for line, what, fix in problems:
        report.problem(line, what, fix)
    if problems and not rows:
        return report
    if not rows and report.ok:
        report.problem(None, "the file has no rows", "add at least one dialogue/summary pair")
    if report.path.suffix == ".csv" and rows:
        missing = [c for c in (input_column, target_column) if c not in rows[0][1]]
        if missing:
            header = ", ".join(rows[0][1]) or "(none)"
            report.problem(1, f"the header lacks column(s) {', '.join(missing)} (it has {header})",
                           "rename the columns or pass --input-column/--target-column")
            return report
    seen_ids: dict[str, int] = {}
    for number, row in rows:
        good = True
        for column, option in ((input_column, "--input-column"), (target_column, "--target-column")):
            if column not in row:
                report.problem(number, f"missing column {column!r}", f"add it or name the right one with {option}")
                good = False
            elif not isinstance(row[column], str) or not row[column].strip():
                report.problem(number, f"empty {column!r}", "fill it in or remove the row")
                good = False
        row_id = row.get("id")
        if row_id not in (None, ""):
            if str(row_id) in seen_ids:
                report.problem(number, f"duplicate id {row_id!r} (first on line {seen_ids[str(row_id)]})",
                               "give every row its own id")
                good = False
            else:
                seen_ids[str(row_id)] = number
        if not good:
            continue
        source = len(tokenizer(row[input_column], add_special_tokens=False)["input_ids"])
        target = len(tokenizer(row[target_column], add_special_tokens=False)["input_ids"])
        if source + target > context_tokens:
            report.problem(number, f"{source + target} tokens, longer than the model's context of {context_tokens}",
                           "shorten or split the dialogue")
            continue
        report.rows += 1
        report.input_lengths.append(source)
        report.target_lengths.append(target)
    return report


def summary_lines(report: Report, input_column: str, target_column: str) -> list[str]:
    """Row count and token-length statistics of the good rows."""
    lines = [f"{report.path}: {report.rows} rows OK"]
    for column, lengths in ((input_column, report.input_lengths), (target_column, report.target_lengths)):
        if lengths:
            lines.append(
                f"  {column}: tokens min {min(lengths)}, median {statistics.median(lengths):.0f}, "
                f"mean {statistics.mean(lengths):.1f}, max {max(lengths)}"
            )
    return lines
