"""The reference run: `python -m utils reference` copies a finished run's executed notebooks, cleaned and small,
into reference/<profile>/ with run.json; `python -m utils sync-times` writes each notebook's **Time**: line from it."""

import base64
import hashlib
import io
import json
import subprocess

import nbformat
import pytest
from PIL import Image

from utils.apps.cli import main
from utils.apps.reference import MAX_IMAGE_WIDTH, ReferenceRunError, cleaned_output, write_reference
from utils.apps.times import rounded_duration, rounded_ram, sync_time_line, time_line
from utils.plumbing.files import PROJECT_ROOT

MACHINE = "Intel(R) Xeon(R) Platinum, 2 cores, 2 threads; avx2, avx512f, avx512_bf16, amx_bf16"


def png(width, height):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def notebook_and_run(tmp_path, status="done"):
    """A course notebook in tmp_path/notebooks and a run of it in tmp_path/runs/offline, as the runner leaves them."""
    title = nbformat.v4.new_markdown_cell("# 01 · Example\n\nAim.\n\n**Time**: written from the reference run.")
    picture = nbformat.v4.new_markdown_cell("![the masks](figures/01_example-masks.svg)")
    code = nbformat.v4.new_code_cell("print('hello')")
    notebook = nbformat.v4.new_notebook(cells=[title, picture, code])
    path = tmp_path / "notebooks" / "01_example.ipynb"
    path.parent.mkdir()
    nbformat.write(notebook, path)

    executed = nbformat.v4.new_notebook(cells=[title, picture, nbformat.v4.new_code_cell("print('hello')")])
    executed.cells[2].execution_count = 1
    executed.cells[2].metadata["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00Z"}
    executed.cells[2].outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="Some weights were not initialized...\n"),
        nbformat.v4.new_output("stream", name="stdout", text="training  10%|#  | 1/10\rtraining 100%|##| 10/10\nhello\n"),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"},
                                                     "text/plain": "HBox(children=(FloatProgress(value=0.0),))"}),
        nbformat.v4.new_output("display_data", data={"image/png": png(2400, 1200), "text/plain": "<Figure>"}),
    ]
    run = tmp_path / "runs" / "offline"
    (run / "notebooks").mkdir(parents=True)
    nbformat.write(executed, run / "notebooks" / path.name)
    (run / "status.json").write_text(json.dumps({"01_example": {
        "status": status, "seconds": 287.4, "peak_ram_mb": 2345, "precision": "bf16 autocast", "machine": MACHINE}}))
    return path, run


def test_a_reference_copy_has_the_runs_outputs_cleaned_and_its_figures_linked_from_the_reference_folder(tmp_path):
    path, run = notebook_and_run(tmp_path)

    write_reference(run, "offline", [path], reference_dir=tmp_path / "reference")

    copied = nbformat.read(tmp_path / "reference" / "offline" / path.name, as_version=4)
    title, picture, code = copied.cells
    assert code.source == "print('hello')" and code.execution_count == 1 and "execution" not in code.metadata
    printed, figure = code.outputs  # stderr and the progress widget are gone
    assert printed.text == "hello\n"  # the progress bar's lines too
    width, height = Image.open(io.BytesIO(base64.b64decode(figure.data["image/png"]))).size
    assert (width, height) == (MAX_IMAGE_WIDTH, MAX_IMAGE_WIDTH // 2)
    assert picture.source == "![the masks](../../notebooks/figures/01_example-masks.svg)"
    assert "**Time**: `offline` about 5 min and 2.5 GB of RAM on a 2-core CPU with bf16 (the reference run)" in title.source


def test_run_json_says_what_ran_where_and_how_long_each_notebook_took(tmp_path):
    path, run = notebook_and_run(tmp_path)

    write_reference(run, "offline", [path], reference_dir=tmp_path / "reference")

    summary = json.loads((tmp_path / "reference" / "offline" / "run.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.strip()
    lock = hashlib.sha256((PROJECT_ROOT / "requirements" / "lock.txt").read_bytes()).hexdigest()[:12]
    assert summary == {"profile": "offline", "commit": head, "lock": lock, "machine": MACHINE,
                       "precision": "bf16 autocast", "notebooks": {"01_example": {"seconds": 287.4, "peak_ram_mb": 2345}}}


@pytest.mark.parametrize("problem", ["failed", "missing", "changed"])
def test_a_run_with_a_failed_missing_or_changed_notebook_is_refused_and_nothing_is_written(tmp_path, problem):
    path, run = notebook_and_run(tmp_path, status="failed" if problem == "failed" else "done")
    if problem == "missing":
        (run / "notebooks" / path.name).unlink()
    if problem == "changed":
        notebook = nbformat.read(path, as_version=4)
        notebook.cells[2].source = "print('changed')"
        nbformat.write(notebook, path)

    with pytest.raises(ReferenceRunError, match=f"01_example.* {problem} "):
        write_reference(run, "offline", [path], reference_dir=tmp_path / "reference")

    assert not (tmp_path / "reference").exists()


def test_the_reference_command_refuses_a_run_that_is_not_there_in_one_line(capsys):
    assert main(["reference"]) == 2

    printed = capsys.readouterr()
    assert printed.err.startswith("error: no run in ") and printed.err.count("\n") == 1 and printed.out == ""


def test_progress_widgets_and_stderr_are_dropped_and_plain_prints_kept():
    assert cleaned_output(nbformat.v4.new_output("stream", name="stderr", text="warning\n")) is None
    kept = cleaned_output(nbformat.v4.new_output("stream", name="stdout", text="loss 1.2\n"))
    assert kept.text == "loss 1.2\n"
    assert cleaned_output(nbformat.v4.new_output("display_data", data={"text/plain": " 45%|####5 | 9/20"})) is None
    counting = "Generating test split: 0 examples [00:00, ? examples/s]"
    assert cleaned_output(nbformat.v4.new_output("display_data", data={"text/plain": counting})) is None
    trainer = {"text/html": "<progress value='8' max='8'></progress> [8/8 00:20, Epoch 1/1]", "text/plain": "<IPython>"}
    assert cleaned_output(nbformat.v4.new_output("display_data", data=trainer)) is None
    table = {"text/html": "<table><tr><td>0.5</td></tr></table>", "text/plain": "   loss\n0  0.5"}
    assert cleaned_output(nbformat.v4.new_output("execute_result", data=table, execution_count=3)).data == table


@pytest.mark.parametrize(("seconds", "words"), [(20, "under a minute"), (100, "about 2 min"), (287, "about 5 min"),
                                                (1300, "about 20 min"), (5000, "about 1.5 h")])
def test_times_are_rounded_as_a_learner_plans_with_them(seconds, words):
    assert rounded_duration(seconds) == words


def test_peak_ram_is_rounded_to_half_gigabytes():
    assert [rounded_ram(mb) for mb in (100, 2345, 7900)] == ["0.5 GB", "2.5 GB", "7.5 GB"]


def test_without_a_reference_run_every_time_is_not_measured_yet(tmp_path):
    assert time_line("01_example", tmp_path) == ("**Time**: `tiny` about a minute (random weights, for tests) · "
                                                 "`offline`, `colab`, `gpu`: not measured yet")


def test_sync_times_rewrites_the_time_line_from_run_json_once(tmp_path):
    path, run = notebook_and_run(tmp_path)
    write_reference(run, "offline", [path], reference_dir=tmp_path / "reference")

    assert sync_time_line(path, tmp_path / "reference") is True
    assert sync_time_line(path, tmp_path / "reference") is False

    title = nbformat.read(path, as_version=4).cells[0].source
    assert title.endswith("**Time**: `offline` about 5 min and 2.5 GB of RAM on a 2-core CPU with bf16 (the reference "
                          "run) · `tiny` about a minute (random weights, for tests) · `colab`, `gpu`: not measured yet")
    assert title.startswith("# 01 · Example\n\nAim.")
