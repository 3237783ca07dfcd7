"""Kill training mid-run and run the same command again: it continues from the last checkpoint and
ends exactly where a run never interrupted ends. Kill anything else half-way: nothing is left corrupted.

The kill tests run tests/scripts/train_method.py (eight steps, a checkpoint every two) as a real
process, SIGKILL it once its first checkpoint is complete, and run it again. The run they compare
with trains in this process, in another runs folder, while the first process starts (about 20 s
of imports on a loaded 2-core machine). One thread in both: the same arithmetic, bit for bit.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch
import transformers

import utils.apps.runner
from utils.models import ensure_tiny_model
from utils.plumbing.results import record_result
from utils.plumbing.run_state import FINISHED
from utils.profiles import TINY_T5, get_profile
from utils.training import train

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import train_method  # the script the kill tests run, imported here for the reference run

SLOW_STEP_SECONDS = 1.0  # in the process that gets killed: time to kill it before its second checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")


def start_training(method, runs, slow=0.0, profile="tiny"):
    env = {**os.environ, "COURSE_PROFILE": profile, "COURSE_RUNS_DIR": str(runs), "SLOW_STEP_SECONDS": str(slow)}
    return subprocess.Popen([sys.executable, str(SCRIPTS / "train_method.py"), method], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process, timeout=300):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output, json.loads(output.strip().splitlines()[-1])


def kill_when(process, ready, kill=None, timeout=300):
    """SIGKILL `process` (or call `kill`) as soon as `ready()` is true; fail if it ended on its own first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the process ended before it could be killed:\n" + process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.05)
    (kill or (lambda: process.send_signal(signal.SIGKILL)))()
    process.communicate()
    assert process.returncode == -signal.SIGKILL


def complete_checkpoints(folder):
    """Steps of the checkpoints the Trainer finished writing (trainer_state.json is its last file)."""
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").exists())


def ppo_checkpoint_step(folder):
    """The step of PPO's newest complete checkpoint (state.json is its last file), 0 for none."""
    states = [json.loads(state.read_text())["step"] for state in folder.glob("checkpoint-*/state.json")]
    return max(states, default=0)


def train_here(method, profile_name="tiny"):
    """What the script does, in this process (in $COURSE_RUNS_DIR: by default this test's own runs folder)."""
    profile = get_profile(profile_name)
    transformers.set_seed(profile.seed)
    if method == "ppo":
        outcome = train_method.train_ppo_policy(profile)
    else:
        outcome = train_method.train_supervised(profile, method, evaluate=False)
    return json.loads(json.dumps(outcome))  # as the script prints it


# --- training of every method: kill it, run it again --------------------------------------------


# Every method once, on the encoder-decoder; LoRA on the decoder-only model (one resume mechanism for all).
# `make test` kills LoRA; the other methods are `long` (`make test-long`, CI).
@pytest.mark.parametrize("method, profile", [pytest.param("full", "tiny", marks=pytest.mark.long),
                                             pytest.param("prompt_tuning", "tiny", marks=pytest.mark.long),
                                             pytest.param("qlora", "tiny", marks=pytest.mark.long),
                                             ("lora", "tiny-causal")])
def test_killed_training_resumes_from_its_last_checkpoint_and_ends_as_an_uninterrupted_run(
        method, profile, tmp_path):
    runs = tmp_path / "killed"
    folder = runs / profile / "checkpoints" / method
    process = start_training(method, runs, slow=SLOW_STEP_SECONDS, profile=profile)
    expected = train_here(method, profile)  # never interrupted, trained while the other process starts

    kill_when(process, lambda: complete_checkpoints(folder))
    left = complete_checkpoints(folder)
    assert left and max(left) < train_method.STEPS and not (folder / FINISHED).exists()

    output, resumed = finish(start_training(method, runs, profile=profile))

    assert f"Resuming from {folder / f'checkpoint-{max(left)}'}" in output
    assert resumed["reused"] is False
    assert resumed["train_losses"] == expected["train_losses"]
    assert resumed["eval_losses"] == expected["eval_losses"]
    assert resumed["weights"] == expected["weights"]
    assert (folder / FINISHED).exists()


@pytest.mark.long
@pytest.mark.parametrize("profile", ["tiny", "tiny-causal"])  # an encoder-decoder and a decoder-only policy
def test_killed_ppo_resumes_from_its_last_checkpoint_and_ends_as_an_uninterrupted_run(profile, tmp_path):
    runs = tmp_path / "killed"
    folder = runs / profile / "ppo"
    process = start_training("ppo", runs, slow=SLOW_STEP_SECONDS, profile=profile)
    expected = train_here("ppo", profile)

    kill_when(process, lambda: ppo_checkpoint_step(folder) > 0)
    step = ppo_checkpoint_step(folder)
    assert 0 < step < train_method.STEPS

    output, resumed = finish(start_training("ppo", runs, profile=profile))

    assert f"Resuming from step {step}" in output
    assert resumed["resumed_from"] == step and resumed["reused"] is False
    assert resumed["history"] == expected["history"]
    assert resumed["weights"] == expected["weights"]


# --- training: what a kill can leave behind -------------------------------------------------------


class Killed(BaseException):
    """Stands for the end of the process (BaseException, like KeyboardInterrupt: nothing catches it)."""


def stop_training_at(monkeypatch, step):
    """Make the Trainer stop dead when it starts step `step` (1-based), as a killed process would."""
    real_step = transformers.Trainer.training_step

    def training_step(self, *args, **kwargs):
        if self.state.global_step + 1 == step:
            raise Killed
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", training_step)
    return lambda: monkeypatch.setattr(transformers.Trainer, "training_step", real_step)


def test_a_checkpoint_killed_while_being_written_is_deleted_and_training_resumes_from_the_one_before(
        monkeypatch, tmp_path, capsys):
    expected = train_here("lora")
    monkeypatch.setenv("COURSE_RUNS_DIR", str(tmp_path / "killed"))
    folder = tmp_path / "killed" / "tiny" / "checkpoints" / "lora"
    resume = stop_training_at(monkeypatch, 5)
    with pytest.raises(Killed):
        train_here("lora")
    resume()
    assert complete_checkpoints(folder) == [4]
    half_written = folder / "checkpoint-6"  # killed after its weights, before trainer_state.json
    half_written.mkdir()
    (half_written / "adapter_model.safetensors").write_bytes(b"\x00" * 100)

    resumed = train_here("lora")

    output = capsys.readouterr().out
    assert f"Deleting {half_written}" in output and f"Resuming from {folder / 'checkpoint-4'}" in output
    assert resumed["weights"] == expected["weights"]
    assert resumed["train_losses"] == expected["train_losses"]


def small_tiny_training(model, profile, name="shared-name"):
    from utils.data import load_profile_data, tokenize_for_training
    from utils.models import load_tokenizer

    tokenizer = load_tokenizer(profile)
    data = load_profile_data(profile)
    train_set = tokenize_for_training(data["train"].select(range(8)), tokenizer, profile)
    eval_set = tokenize_for_training(data["validation"].select(range(4)), tokenizer, profile)
    return train(model, tokenizer, profile, name, train_set, eval_set, 1e-3, max_steps=4, save_steps=2, eval_steps=2)


def wider_t5(profile):
    """Another T5 for the same tokenizer: the same class, wider layers."""
    from transformers import T5Config, T5ForConditionalGeneration

    from utils.models import load_tokenizer

    tokenizer = load_tokenizer(profile)
    torch.manual_seed(1)
    return T5ForConditionalGeneration(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id))


def same_shape_t5_from_another_folder(profile, folder):
    """Another T5 with exactly the tiny one's shapes (other weights), loaded from its own folder."""
    from transformers import T5ForConditionalGeneration

    from utils.models import load_model

    torch.manual_seed(1)
    T5ForConditionalGeneration(load_model(profile).config).save_pretrained(folder)
    return T5ForConditionalGeneration.from_pretrained(folder, use_safetensors=True)


def test_a_finished_training_of_another_model_under_the_same_name_is_not_reused(capsys):
    from utils.models import load_model

    profile = get_profile("tiny")
    small_tiny_training(load_model(profile), profile)

    run = small_tiny_training(wider_t5(profile), profile)

    assert run.reused is False
    assert "holds a finished training of other settings: kept it as" in capsys.readouterr().out


def test_an_interrupted_training_of_another_model_under_the_same_name_is_not_resumed(monkeypatch, capsys,
                                                                                       isolated_runs, tmp_path):
    from utils.models import load_model

    profile = get_profile("tiny")
    resume = stop_training_at(monkeypatch, 3)
    with pytest.raises(Killed):
        small_tiny_training(load_model(profile), profile)
    resume()
    assert complete_checkpoints(isolated_runs / "tiny" / "checkpoints" / "shared-name") == [2]

    run = small_tiny_training(same_shape_t5_from_another_folder(profile, tmp_path / "other-t5"), profile)

    output = capsys.readouterr().out
    assert "starting afresh" in output and "Resuming" not in output
    assert [step for step, _ in run.losses()[0]] == [1, 2, 3, 4]


def test_a_lora_of_another_rank_under_the_same_name_is_not_reused(capsys):
    from utils.adapters import add_lora
    from utils.models import load_model

    profile = get_profile("tiny")
    small_tiny_training(add_lora(load_model(profile), rank=2), profile)

    run = small_tiny_training(add_lora(load_model(profile), rank=4), profile)

    assert run.reused is False and "holds a finished training of other settings" in capsys.readouterr().out


# --- the model cache and results.json --------------------------------------------------------------


def test_a_model_build_killed_half_way_leaves_no_model_folder_and_the_next_build_works(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    env = {**os.environ, "COURSE_CACHE_DIR": str(cache)}
    code = ("import contextlib, time\n"
            "import utils.models\n"
            "real = utils.models.atomic_directory\n"
            "@contextlib.contextmanager\n"
            "def slow(target):\n"  # everything written, not yet renamed: time to kill it there
            "    with real(target) as staging:\n"
            "        yield staging\n"
            "        time.sleep(120)\n"
            "utils.models.atomic_directory = slow\n"
            "utils.models.ensure_tiny_model(utils.models.TINY_T5)\n")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    kill_when(process, lambda: any((p / "config.json").exists() for p in cache.glob(".*partial*")))

    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == []  # no model folder at all
    monkeypatch.setenv("COURSE_CACHE_DIR", str(cache))
    folder = ensure_tiny_model(TINY_T5)
    assert (folder / "config.json").exists() and (folder / "tokenizer.json").exists()


def test_results_json_parses_after_every_kill_in_the_middle_of_writing_it(isolated_runs):
    """A process rewrites results.json (about 2 MB) as fast as it can; kill it at twenty moments."""
    code = ("import itertools\n"
            "from utils.plumbing.results import record_result\n"
            "for i in itertools.count():\n"
            "    record_result('tiny', f'nb{i % 50:02d}', 'full', 'tiny:t5', note='x' * 40000, step=i)\n"
            "    print(i, flush=True)\n")
    path = isolated_runs / "tiny" / "results.json"
    record_result("tiny", "nb00", "full", "tiny:t5", step=-1)
    for attempt in range(20):
        process = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=os.environ,
                                   stdout=subprocess.PIPE, text=True)
        for _ in range(2 + attempt % 7):  # a different number of rewrites before each kill
            process.stdout.readline()
        time.sleep(0.003 * attempt)
        process.send_signal(signal.SIGKILL)
        process.communicate()

        records = json.loads(path.read_text(encoding="utf-8"))  # never half a file

        assert records and all(r["method"] == "full" for r in records)


# --- make run: a rerun runs only the notebooks that did not finish ---------------------------------


def fake_notebook(folder, name, source):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, folder / name)


LOG_RUN = "import os\nopen(os.environ['FAKE_LOG'], 'a').write('{name}\\n')\n"
WAIT_FOR_FLAG = ("import os, time\n"
                 "while not os.path.exists(os.environ['FAKE_FLAG']):\n"
                 "    {action}\n")


@pytest.fixture
def two_notebooks(tmp_path, monkeypatch):
    """01_first logs that it ran; 02_second logs, then needs the flag file (else fails, or waits)."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    log, flag = tmp_path / "ran.log", tmp_path / "flag"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_FLAG", str(flag))
    monkeypatch.setattr(utils.apps.runner, "NOTEBOOKS_DIR", folder)

    def make(second_action):
        fake_notebook(folder, "01_first.ipynb", LOG_RUN.format(name="01"))
        fake_notebook(folder, "02_second.ipynb", LOG_RUN.format(name="02") + WAIT_FOR_FLAG.format(action=second_action))
        return lambda: log.read_text().split() if log.exists() else [], flag

    return make


def test_a_rerun_after_a_failed_notebook_runs_only_that_notebook(two_notebooks):
    ran, flag = two_notebooks("raise RuntimeError('the flag is missing')")
    profile = get_profile("tiny")
    assert utils.apps.runner.run_course(profile) is False
    assert ran() == ["01", "02"]
    flag.touch()

    assert utils.apps.runner.run_course(profile) is True

    assert ran() == ["01", "02", "02"]


def test_a_rerun_after_the_runner_was_killed_runs_only_the_unfinished_notebooks(two_notebooks, isolated_runs,
                                                                                  tmp_path):
    ran, flag = two_notebooks("time.sleep(0.1)")  # 02 waits for the flag: it is running when killed
    code = ("import sys, utils.apps.runner\n"
            "from pathlib import Path\n"
            "from utils.profiles import get_profile\n"
            "utils.apps.runner.NOTEBOOKS_DIR = Path(sys.argv[1])\n"
            "utils.apps.runner.run_course(get_profile('tiny'))\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "notebooks")], cwd=PROJECT_ROOT,
                               env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # its kernels too: the whole group is killed

    def kill_all():
        os.killpg(process.pid, signal.SIGKILL)

    try:
        kill_when(process, lambda: ran() == ["01", "02"], kill=kill_all)
    finally:
        with contextlib.suppress(ProcessLookupError):
            kill_all()
    status = json.loads((isolated_runs / "tiny" / "status.json").read_text())
    assert list(status) == ["01_first"] and status["01_first"]["status"] == "done"
    flag.touch()

    assert utils.apps.runner.run_course(get_profile("tiny")) is True

    assert ran() == ["01", "02", "02"]


def test_redo_runs_every_notebook_again(two_notebooks):
    ran, flag = two_notebooks("raise RuntimeError('the flag is missing')")
    flag.touch()
    profile = get_profile("tiny")
    utils.apps.runner.run_course(profile)

    utils.apps.runner.run_course(profile, redo=True)

    assert ran() == ["01", "02", "01", "02"]


def test_a_finished_notebook_that_was_edited_runs_again(two_notebooks, tmp_path):
    ran, flag = two_notebooks("raise RuntimeError('the flag is missing')")
    flag.touch()
    profile = get_profile("tiny")
    utils.apps.runner.run_course(profile)
    fake_notebook(tmp_path / "notebooks", "01_first.ipynb", LOG_RUN.format(name="01-edited"))

    utils.apps.runner.run_course(profile)

    assert ran() == ["01", "02", "01-edited"]
