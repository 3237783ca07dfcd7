"""The one mechanism behind resumable runs: a fingerprinted folder, complete checkpoints, reuse.

The trainings that use it (supervised, reward model, PPO) are killed and resumed for real in
tests/test_interruption.py; these tests show the mechanism on plain folders.
"""

import json
import random

import numpy as np
import torch

from utils.plumbing.files import atomic_directory
from utils.plumbing.run_state import FINISHED, STARTED, RunFolder, fingerprint, restore_rng_state, rng_state


def test_the_fingerprint_changes_with_settings_identity_and_data_and_nothing_else():
    base = fingerprint({"lr": 1e-4, "steps": 8}, "model-a", [[1, 2, 3]])
    assert fingerprint({"steps": 8, "lr": 1e-4}, "model-a", [[1, 2, 3]]) == base  # key order does not matter
    assert fingerprint({"lr": 2e-4, "steps": 8}, "model-a", [[1, 2, 3]]) != base
    assert fingerprint({"lr": 1e-4, "steps": 8}, "model-b", [[1, 2, 3]]) != base
    assert fingerprint({"lr": 1e-4, "steps": 8}, "model-a", [[1, 2, 4]]) != base
    assert len(base) == 16


def write_checkpoint(run: RunFolder, step: int, complete: bool = True) -> None:
    folder = run.checkpoint_folder(step)
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_text("weights")
    if complete:
        (folder / "state.json").write_text(json.dumps({"step": step}))


def test_a_new_run_claims_its_folder_and_has_no_checkpoint(tmp_path):
    run = RunFolder(tmp_path / "lora", "abc")
    run.claim()
    assert json.loads((tmp_path / "lora" / STARTED).read_text())["fingerprint"] == "abc"
    assert run.last_checkpoint("state.json") is None and run.finished() is None


def test_the_newest_complete_checkpoint_is_found_by_step_not_by_name(tmp_path):
    run = RunFolder(tmp_path / "lora", "abc")
    run.claim()
    for step in (2, 10, 4):
        write_checkpoint(run, step)
    assert run.last_checkpoint("state.json") == tmp_path / "lora" / "checkpoint-10"  # "10" sorts before "4" as text


def test_a_checkpoint_interrupted_while_being_written_is_deleted(tmp_path, capsys):
    run = RunFolder(tmp_path / "lora", "abc")
    run.claim()
    write_checkpoint(run, 4)
    write_checkpoint(run, 6, complete=False)  # killed after its weights, before its last file
    try:
        with atomic_directory(run.checkpoint_folder(8)) as staging:  # killed while staging
            (staging / "weights.bin").write_text("half")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    (tmp_path / "lora" / ".checkpoint-8.partial-x1").mkdir()  # what a SIGKILL leaves of the staging folder

    assert run.last_checkpoint("state.json") == tmp_path / "lora" / "checkpoint-4"
    assert not run.checkpoint_folder(6).exists()
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == ["checkpoint-4", STARTED]
    assert "Deleting" in capsys.readouterr().out


def test_a_folder_of_another_configuration_is_never_resumed(tmp_path, capsys):
    old = RunFolder(tmp_path / "lora", "old-settings")
    old.claim()
    write_checkpoint(old, 4)
    old.finish({"train_seconds": 1.0})

    new = RunFolder(tmp_path / "lora", "new-settings", "LoRA training")
    new.claim()
    assert "holds a different LoRA training; starting afresh" in capsys.readouterr().out
    assert new.last_checkpoint("state.json") is None and new.finished() is None
    assert json.loads((tmp_path / "lora" / STARTED).read_text())["fingerprint"] == "new-settings"


def test_a_finished_run_is_reused_by_the_same_configuration(tmp_path):
    first = RunFolder(tmp_path / "lora", "abc")
    first.claim()
    write_checkpoint(first, 8)
    first.finish({"train_seconds": 12.5})

    again = RunFolder(tmp_path / "lora", "abc")
    again.claim()
    assert again.finished() == {"train_seconds": 12.5}
    again.reopen()  # to train it for more steps
    assert again.finished() is None and not (tmp_path / "lora" / FINISHED).exists()
    assert again.last_checkpoint("state.json") == tmp_path / "lora" / "checkpoint-8"


def test_only_the_newest_checkpoint_is_kept(tmp_path):
    run = RunFolder(tmp_path / "ppo", "abc")
    run.claim()
    for step in (1, 2, 3):
        write_checkpoint(run, step)
    run.keep_only(run.checkpoint_folder(3))
    assert sorted(p.name for p in (tmp_path / "ppo").glob("checkpoint-*")) == ["checkpoint-3"]


def test_restored_random_state_draws_what_the_uninterrupted_run_drew():
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    saved = json.loads(json.dumps(rng_state()))  # through JSON, as a checkpoint stores it
    expected = (torch.rand(3).tolist(), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand()  # the run goes on, then is killed
    restore_rng_state(saved)
    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == expected


def step_checkpoint(run: RunFolder, step: int) -> None:
    with atomic_directory(run.checkpoint_folder(step)) as staging:
        (staging / "state.json").write_text(json.dumps({"step": step}))


def test_a_step_run_resumes_from_its_last_checkpoint_reuses_a_finished_run_and_drops_a_longer_one(tmp_path, capsys):
    run = RunFolder(tmp_path / "run", "abc", "PPO run")
    run.claim()
    assert run.resume_point(4, "state.json") == (None, None, None)  # nothing yet: start afresh

    step_checkpoint(run, 2)
    last, state, finished = run.resume_point(4, "state.json")
    assert last == run.checkpoint_folder(2) and state == {"step": 2} and finished is None  # resume at step 2

    step_checkpoint(run, 4)
    run.finish({"steps": 4})
    assert run.resume_point(4, "state.json")[2] == {"steps": 4}  # all steps done: reuse
    last, state, finished = run.resume_point(6, "state.json")  # two more steps: resume, no longer finished
    assert state == {"step": 4} and finished is None and run.finished() is None

    assert run.resume_point(3, "state.json") == (None, None, None)  # fewer steps than the folder holds
    assert "holds a longer PPO run (4 steps); starting afresh" in capsys.readouterr().out
    assert not run.checkpoint_folder(4).exists() and (run.path / STARTED).exists()
