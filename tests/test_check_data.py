"""`python -m utils check-data FILE`: a usable file gets statistics, a bad one one line per problem, exit code 2.

Starting `python -m utils` costs about 8 s of imports (torch, transformers) on a 2-core machine,
so the command runs as a real subprocess for the good file, for a file holding every kind of
row problem at once, and for a bad profile; each single problem is checked through the same
entry point, `utils.apps.cli.main`, in this process (same code, same output, same exit code).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.apps.cli import USER_ERROR, main

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HELLO = "#Person1#: Hello, how are you?\n#Person2#: Fine, thanks."
TOO_LONG = " ".join(["#Person1#: We talk and talk about nothing at all."] * 300)  # about 3000 words


def check_data_command(*arguments, profile="tiny"):
    """Run `python -m utils check-data ...` as a user would; COURSE_CACHE_DIR and the rest unchanged."""
    env = {**os.environ, "COURSE_PROFILE": profile}
    return subprocess.run(
        [sys.executable, "-m", "utils", "check-data", *map(str, arguments)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def check_data(monkeypatch, capsys):
    """The same command through utils.apps.cli.main in this process: (exit code, output lines)."""
    monkeypatch.setenv("COURSE_PROFILE", "tiny")

    def run(*arguments):
        code = main(["check-data", *map(str, arguments)])
        captured = capsys.readouterr()
        return code, (captured.out + captured.err).splitlines()

    return run


def write_jsonl(path, rows):
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def problem_lines(lines, path):
    return [line for line in lines if line.startswith(str(path))]


# --- as a subprocess ------------------------------------------------------------------------


def test_a_good_file_passes_with_row_count_and_token_statistics(tmp_path):
    path = write_jsonl(tmp_path / "good.jsonl", [
        {"id": "a", "dialogue": HELLO, "summary": "#Person1# and #Person2# greet each other."},
        {"id": "b", "dialogue": HELLO + "\n#Person1#: Good.", "summary": "They greet."},
        {"dialogue": "#Person1#: Bye.\n#Person2#: Bye.", "summary": "They say goodbye."},
    ])

    result = check_data_command(path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{path}: 3 rows OK" in result.stdout
    assert "dialogue: tokens min" in result.stdout and "summary: tokens min" in result.stdout
    assert "median" in result.stdout and "max" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_a_bad_file_gets_one_line_per_problem_naming_file_and_line_and_exit_code_2(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"id": "a", "dialogue": HELLO, "summary": "They greet."},  # 1: fine
        '{"id": "b", "dialogue": "#Person1#: Hi." "summary": "Hi."}\n',  # 2: invalid JSON
        {"id": "c", "dialogue": HELLO},  # 3: no summary
        {"id": "d", "dialogue": HELLO, "summary": "  "},  # 4: empty summary
        {"id": "a", "dialogue": HELLO, "summary": "Again."},  # 5: duplicate id
        {"id": "f", "dialogue": TOO_LONG, "summary": "They talk."},  # 6: longer than the context
    ])

    result = check_data_command(path)
    output = result.stdout + result.stderr

    assert result.returncode == 2
    assert "Traceback" not in output
    problems = problem_lines(output.splitlines(), path)
    assert [line.split(": ")[0] for line in problems] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6)]
    assert "invalid JSON" in problems[0]
    assert "missing column 'summary'" in problems[1]
    assert "empty 'summary'" in problems[2]
    assert "duplicate id 'a' (first on line 1)" in problems[3]
    assert "longer than the model's context" in problems[4]
    assert all("Fix:" in line for line in problems)
    assert "5 problem(s) found" in output


def test_an_unknown_profile_exits_2_listing_the_valid_profiles_without_a_traceback(tmp_path):
    result = check_data_command(tmp_path / "x.jsonl", profile="nonsense")
    output = result.stdout + result.stderr

    assert result.returncode == 2
    assert "Traceback" not in output
    assert "nonsense" in output
    for name in ("tiny", "tiny-causal", "offline", "colab", "gpu"):
        assert name in output
    assert len(output.strip().splitlines()) == 1


# --- one problem at a time, through the same entry point ----------------------------------


@pytest.mark.parametrize(
    "name, content, where, what",
    [
        ("invalid.jsonl", [{"dialogue": HELLO, "summary": "Hi."}, "{not json}\n"], ":2", "invalid JSON"),
        ("not_object.jsonl", ['["a list"]\n'], ":1", "not a JSON object"),
        ("no_summary.jsonl", [{"dialogue": HELLO}], ":1", "missing column 'summary'"),
        ("no_dialogue.jsonl", [{"conversation": HELLO, "summary": "Hi."}], ":1", "missing column 'dialogue'"),
        ("empty_summary.jsonl", [{"dialogue": HELLO, "summary": ""}], ":1", "empty 'summary'"),
        ("duplicate.jsonl", [{"id": 7, "dialogue": HELLO, "summary": "Hi."}, "\n",
                             {"id": "7", "dialogue": HELLO, "summary": "Hi."}], ":3", "duplicate id"),
        ("too_long.jsonl", [{"dialogue": TOO_LONG, "summary": "They talk."}], ":1", "longer than the model's context"),
        ("empty.jsonl", ["\n"], "", "the file has no rows"),
        ("notes.txt", ["dialogue and summary\n"], "", "unsupported file type '.txt'"),
    ],
)
def test_each_problem_gets_its_own_line_and_exit_code_2(check_data, tmp_path, name, content, where, what):
    path = write_jsonl(tmp_path / name, content)

    code, lines = check_data(path)

    assert code == USER_ERROR == 2
    (problem,) = problem_lines(lines, path)
    assert problem.startswith(f"{path}{where}: ")
    assert what in problem
    assert "Fix:" in problem


def test_a_missing_file_is_one_problem(check_data, tmp_path):
    path = tmp_path / "nowhere.jsonl"

    code, lines = check_data(path)

    assert code == 2
    assert problem_lines(lines, path) == [f"{path}: no such file. Fix: check the path."]


def test_a_csv_without_the_needed_columns_names_what_it_has(check_data, tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(f'text,label\n"{HELLO}",They greet.\n', encoding="utf-8")

    code, lines = check_data(path)

    assert code == 2
    (problem,) = problem_lines(lines, path)
    assert problem.startswith(f"{path}:1: ")
    assert "dialogue, summary" in problem and "(it has text, label)" in problem
    assert "--input-column/--target-column" in problem


def test_a_csv_with_other_column_names_passes_with_input_and_target_column(check_data, tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(f'text,label\n"{HELLO}",They greet.\n"#Person1#: Bye.",They part.\n', encoding="utf-8")

    code, lines = check_data(path, "--input-column", "text", "--target-column", "label")

    assert code == 0
    assert f"{path}: 2 rows OK" in lines
    assert any(line.strip().startswith("text: tokens min") for line in lines)
    assert any(line.strip().startswith("label: tokens min") for line in lines)


def test_a_csv_row_with_an_empty_target_names_its_line(check_data, tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(f'dialogue,summary\n"{HELLO}",They greet.\n#Person1#: Bye.,\n', encoding="utf-8")

    code, lines = check_data(path)

    assert code == 2
    (problem,) = problem_lines(lines, path)
    assert problem.startswith(f"{path}:4: ")  # the quoted dialogue spans lines 2-3
    assert "empty 'summary'" in problem


def test_a_folder_is_checked_as_course_data_reads_it_each_split_file(check_data, tmp_path):
    good = {"dialogue": HELLO, "summary": "They greet."}
    for split in ("train", "validation"):
        write_jsonl(tmp_path / f"{split}.jsonl", [good, good])
    write_jsonl(tmp_path / "test.jsonl", [good, {"dialogue": HELLO}])

    code, lines = check_data(tmp_path)

    assert code == USER_ERROR and problem_lines(lines, tmp_path / "test.jsonl:2")
    (tmp_path / "test.jsonl").unlink()
    code, lines = check_data(tmp_path)
    assert code == USER_ERROR and any("no test.jsonl / test.csv" in line for line in lines)
    write_jsonl(tmp_path / "test.jsonl", [good])
    code, lines = check_data(tmp_path)
    assert code == 0 and f"{tmp_path / 'train.jsonl'}: 2 rows OK" in lines and f"{tmp_path / 'test.jsonl'}: 1 rows OK" in lines
