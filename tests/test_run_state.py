"""The one mechanism behind resumable runs: a fingerprinted folder, complete checkpoints, reuse.

The trainings that use it (supervised, reward model, PPO) are killed and resumed for real in
tests/test_interruption.py; these tests show the mechanism on plain folders.
"""

import json
import random

import numpy as np
import torch
from safetensors.torch import save_file

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


def test_an_unfinished_folder_of_another_configuration_is_never_resumed(tmp_path, capsys):
    old = RunFolder(tmp_path / "lora", "old-settings")
    old.claim()
    write_checkpoint(old, 4)

    new = RunFolder(tmp_path / "lora", "new-settings", "LoRA training")
    new.claim()
    assert "holds an unfinished LoRA training of other settings; starting afresh" in capsys.readouterr().out
    assert new.last_checkpoint("state.json") is None and new.finished() is None
    assert json.loads((tmp_path / "lora" / STARTED).read_text())["fingerprint"] == "new-settings"


def test_a_finished_run_of_other_settings_is_kept_aside_and_comes_back_with_its_settings(tmp_path, capsys):
    old = RunFolder(tmp_path / "full", "old-settings", "training")
    old.claim()
    write_checkpoint(old, 4)
    old.finish({"train_seconds": 3600.0})  # hours of training

    new = RunFolder(tmp_path / "full", "new-settings", "training")
    new.claim()
    kept = tmp_path / "full.kept-old-settings"
    assert f"holds a finished training of other settings: kept it as {kept}" in capsys.readouterr().out
    assert json.loads((kept / FINISHED).read_text()) == {"train_seconds": 3600.0}
    assert (kept / "checkpoint-4" / "weights.bin").exists()
    assert new.finished() is None and new.last_checkpoint("state.json") is None
    write_checkpoint(new, 2)
    new.finish({"train_seconds": 1.0})

    again = RunFolder(tmp_path / "full", "old-settings", "training")  # the first settings once more
    again.claim()
    assert again.finished() == {"train_seconds": 3600.0}  # reused, not trained again
    assert json.loads((tmp_path / "full.kept-new-settings" / FINISHED).read_text()) == {"train_seconds": 1.0}


def test_a_truncated_checkpoint_is_set_aside_and_the_run_goes_on_from_the_one_before(tmp_path, capsys):
    run = RunFolder(tmp_path / "lora", "abc")
    run.claim()
    for step in (2, 4):
        folder = run.checkpoint_folder(step)
        folder.mkdir()
        save_file({"w": torch.ones(64)}, str(folder / "model.safetensors"))
        (folder / "state.json").write_text(json.dumps({"step": step}))
    weights = run.checkpoint_folder(4) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a full disk cut the copy short

    assert run.last_checkpoint("state.json") == run.checkpoint_folder(2)
    assert (tmp_path / "lora" / "damaged-checkpoint-4" / "model.safetensors").exists()  # renamed, not deleted
    assert "checkpoint-4 is damaged" in capsys.readouterr().out
    assert run.last_checkpoint("state.json") == run.checkpoint_folder(2)  # and the next run agrees


def test_a_run_whose_only_checkpoint_is_damaged_starts_afresh(tmp_path):
    run = RunFolder(tmp_path / "ppo", "abc")
    run.claim()
    write_checkpoint(run, 3)
    (run.checkpoint_folder(3) / "optimizer.json").write_text('{"step": ')  # cut off mid-write
    assert run.resume_point(6, "state.json") == (None, None, None)
    assert (tmp_path / "ppo" / "damaged-checkpoint-3").is_dir()


def test_a_damaged_training_json_sets_the_folder_aside_and_starts_afresh(tmp_path, capsys):
    run = RunFolder(tmp_path / "full", "abc")
    run.claim()
    write_checkpoint(run, 4)
    (tmp_path / "full" / STARTED).write_text("{\"finger")

    RunFolder(tmp_path / "full", "abc").claim()
    assert "is damaged" in capsys.readouterr().out
    assert (tmp_path / "damaged-full" / "checkpoint-4").is_dir()
    assert json.loads((tmp_path / "full" / STARTED).read_text())["fingerprint"] == "abc"


def test_a_truncated_final_model_or_record_makes_the_run_go_on_from_its_last_checkpoint(tmp_path, capsys):
    run = RunFolder(tmp_path / "full", "abc")
    run.claim()
    write_checkpoint(run, 8)
    (tmp_path / "full" / "final").mkdir()
    save_file({"w": torch.ones(64)}, str(tmp_path / "full" / "final" / "model.safetensors"))
    run.finish({"train_seconds": 9.0})
    final = tmp_path / "full" / "final" / "model.safetensors"
    final.write_bytes(final.read_bytes()[:20])

    again = RunFolder(tmp_path / "full", "abc")
    again.claim()
    assert again.finished() is None and again.last_checkpoint("state.json") == again.checkpoint_folder(8)
    assert (tmp_path / "full" / "damaged-final").is_dir() and (tmp_path / "full" / "damaged-finished.json").exists()
    assert "goes on from its last good checkpoint" in capsys.readouterr().out

    again.finish({"train_seconds": 9.0})
    (tmp_path / "full" / FINISHED).write_text("{")  # a corrupt record
    RunFolder(tmp_path / "full", "abc").claim()
    assert again.finished() is None and (tmp_path / "full" / "damaged-finished.json-2").exists()


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

    step_checkpoint(run, 6)
    run.finish({"steps": 6})
    assert run.resume_point(3, "state.json") == (None, None, None)  # fewer steps than the folder holds
    kept = tmp_path / "run.kept-abc-6-steps"
    assert f"holds a longer finished PPO run (6 steps): kept it as {kept}" in capsys.readouterr().out
    assert json.loads((kept / FINISHED).read_text()) == {"steps": 6}  # kept, not deleted
    assert not run.checkpoint_folder(6).exists() and (run.path / STARTED).exists()
