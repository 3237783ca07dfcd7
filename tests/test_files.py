"""Folders and files are written so that an interruption never leaves half of them behind."""

import json

import pytest

from utils.plumbing.files import (
    PROJECT_ROOT,
    atomic_directory,
    cache_dir,
    runs_dir,
    write_json_atomic,
    write_text_atomic,
)


class Interrupted(Exception):
    """Stands for anything that stops a block half-way (an error, Ctrl-C, a full disk)."""


def leftovers(folder):
    """Names of everything in `folder`, hidden partial folders and temporary files included."""
    return sorted(p.name for p in folder.iterdir())


def test_atomic_directory_appears_only_when_the_block_finishes(tmp_path):
    target = tmp_path / "model"

    with atomic_directory(target) as staging:
        (staging / "weights.txt").write_text("123")
        assert not target.exists()  # nothing at the target while the block runs
        assert staging.parent == target.parent  # same filesystem: the final rename is atomic

    assert (target / "weights.txt").read_text() == "123"
    assert leftovers(tmp_path) == ["model"]


def test_an_exception_in_the_block_leaves_no_target_and_no_partial_folder(tmp_path):
    target = tmp_path / "model"

    with pytest.raises(Interrupted):
        with atomic_directory(target) as staging:
            (staging / "config.json").write_text("{}")
            raise Interrupted

    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_an_exception_in_the_block_leaves_an_existing_target_untouched(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.txt").write_text("old")

    with pytest.raises(Interrupted):
        with atomic_directory(target) as staging:
            (staging / "weights.txt").write_text("new, half written")
            raise Interrupted

    assert (target / "weights.txt").read_text() == "old"
    assert leftovers(tmp_path) == ["model"]


def test_a_finished_block_replaces_an_existing_target(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.txt").write_text("old")

    with atomic_directory(target) as staging:
        (staging / "weights.txt").write_text("new")

    assert leftovers(target) == ["weights.txt"]


def test_atomic_directory_creates_missing_parents(tmp_path):
    target = tmp_path / "a" / "b" / "model"

    with atomic_directory(target) as staging:
        (staging / "x").write_text("x")

    assert (target / "x").exists()


def test_write_json_atomic_round_trips_and_leaves_no_temporary_file(tmp_path):
    value = {"rouge1": 0.25, "methods": ["full", "lora"], "note": "héllo", "missing": None}
    path = tmp_path / "sub" / "results.json"

    write_json_atomic(path, value)

    assert json.loads(path.read_text(encoding="utf-8")) == value
    assert leftovers(path.parent) == ["results.json"]


def test_write_json_atomic_replaces_the_previous_content(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, [1, 2, 3])

    write_json_atomic(path, [4])

    assert json.loads(path.read_text()) == [4]


def test_a_value_that_is_not_json_leaves_the_old_file_as_it_was(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"ok": True})

    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})

    assert json.loads(path.read_text()) == {"ok": True}
    assert leftovers(tmp_path) == ["results.json"]


def test_cache_dir_honours_course_cache_dir_and_creates_it(tmp_path, monkeypatch):
    wanted = tmp_path / "my-cache"
    monkeypatch.setenv("COURSE_CACHE_DIR", str(wanted))

    assert cache_dir() == wanted
    assert wanted.is_dir()


def test_cache_dir_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("COURSE_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))

    assert cache_dir() == tmp_path / ".cache" / "finetuning-course"


def test_runs_dir_is_per_profile_under_course_runs_dir(isolated_runs):
    assert runs_dir("tiny") == isolated_runs / "tiny"
    assert (isolated_runs / "tiny").is_dir()


def test_a_relative_runs_dir_is_taken_from_the_project_folder_whatever_the_working_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_RUNS_DIR", "runs/check-test")
    monkeypatch.chdir(tmp_path)  # the notebooks' kernels run in notebooks/, the commands in the project folder

    folder = runs_dir("offline")

    assert folder == PROJECT_ROOT / "runs" / "check-test" / "offline"
    folder.rmdir()
    folder.parent.rmdir()


def test_rewriting_a_file_atomically_keeps_its_permissions(tmp_path):
    shared, private = tmp_path / "README.md", tmp_path / "secret.txt"
    for path, mode in ((shared, 0o644), (private, 0o600)):
        path.write_text("before")
        path.chmod(mode)

        write_text_atomic(path, "after")

        assert path.read_text() == "after"
        assert path.stat().st_mode & 0o777 == mode


def test_a_new_file_written_atomically_is_as_readable_as_any_new_file(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "new.txt", "text")
    finally:
        os.umask(umask)

    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o644
