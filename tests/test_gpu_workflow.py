"""The GPU workflow as designed: nbval over every notebook in the `gpu` profile (or `colab`), started by
hand or by a version tag, keeping the executed copies and nbval's report as artifacts."""

import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "gpu-notebooks.yml"


def workflow() -> dict:
    text = yaml.safe_load(WORKFLOW.read_text())
    return {"on" if key is True else key: value for key, value in text.items()}  # YAML 1.1 reads `on` as True


def test_it_starts_by_hand_in_gpu_or_colab_or_on_a_version_tag():
    triggers = workflow()["on"]

    profile = triggers["workflow_dispatch"]["inputs"]["profile"]
    assert profile["default"] == "gpu" and set(profile["options"]) == {"gpu", "colab"}
    assert triggers["push"]["tags"] == ["v*"]
    assert workflow()["jobs"]["notebooks"]["env"]["COURSE_PROFILE"] == "${{ inputs.profile || 'gpu' }}"


def test_it_runs_nbval_over_every_notebook_and_keeps_copies_and_report():
    steps = workflow()["jobs"]["notebooks"]["steps"]
    nbval = next(step for step in steps if "--nbval-lax" in step.get("run", ""))

    assert nbval["working-directory"] == "notebooks" and nbval["run"].endswith("[0-9][0-9]_*.ipynb")
    assert "--nbval-current-env" in nbval["run"] and "-p nbval_copies" in nbval["run"]
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()"  # a failed notebook's copy is what one wants to read
    for kept in ("nbval-notebooks/", "nbval-report.xml", "REPORT.md"):
        assert kept in upload["with"]["path"]


def test_the_copies_plugin_writes_each_notebook_with_its_outputs(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hello')"),
                                               nbformat.v4.new_code_cell("6 * 7")])
    nbformat.write(notebook, tmp_path / "01_check.ipynb")

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
         "-p", "nbval_copies", "--nbval-copies-dir", str(tmp_path / "copies"), "01_check.ipynb"],
        cwd=tmp_path, env={"PYTHONPATH": str(ROOT / "tests" / "scripts"), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300, check=False)

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    copy = nbformat.read(tmp_path / "copies" / "01_check.ipynb", as_version=4)
    nbformat.validate(copy)
    assert copy.cells[0].outputs[0]["text"] == "hello\n"
    assert copy.cells[1].outputs[0]["data"]["text/plain"] == "42"
