"""Safety of what the course loads and keeps: safetensors only, no remote code, torch.load with
weights_only=True, no Hugging Face token anywhere in the repository, notebooks stored without outputs,
and weights, caches and runs kept out of git."""

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TOKEN = re.compile(r"hf_[A-Za-z0-9]{30,}")
NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))


def repository_files():
    """Every file git tracks or would track (untracked but not ignored), as paths."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout
    return [PROJECT_ROOT / name for name in listed.split("\0") if name and (PROJECT_ROOT / name).is_file()]


def python_sources(*folders, notebooks=True):
    """(name, source) of every .py file under `folders` and (with `notebooks`) of every notebook's code cells."""
    sources = [(str(p.relative_to(PROJECT_ROOT)), p.read_text(encoding="utf-8"))
               for folder in folders for p in sorted((PROJECT_ROOT / folder).rglob("*.py"))]
    for notebook in NOTEBOOKS if notebooks else []:
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        # IPython magics and shell lines are not Python: blank them out before parsing.
        code = [re.sub(r"(?m)^\s*[%!].*$", "", cell) for cell in code]
        sources.append((notebook.name, "\n\n".join(code)))
    return sources


def calls(source, attribute):
    """Every call `something.<attribute>(...)` in `source`, with the text of `something`."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute:
            yield ast.unparse(node.func.value), {k.arg: k.value for k in node.keywords if k.arg}, node.lineno


def is_true(node):
    return isinstance(node, ast.Constant) and node.value is True


def tokens_in(paths):
    """`file: hf_xyz...` for every string in `paths` that looks like a Hugging Face token (shown cut short)."""
    found = []
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="ignore")
        found += [f"{path}: {match[:6]}..." for match in TOKEN.findall(text)]
    return found


# --- notebooks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_stored_without_outputs_or_execution_counts(notebook):
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]

    code = [c for c in cells if c["cell_type"] == "code"]

    assert code
    assert [c.get("id") for c in code if c["outputs"]] == []
    assert [c.get("id") for c in code if c["execution_count"] is not None] == []


def test_no_code_logs_in_or_passes_a_token():
    """A token comes from the environment (HF_TOKEN) or Colab's secrets, which huggingface_hub reads by itself."""
    checked = 0
    for name, source in python_sources("utils", "bench", "tests"):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call):
                checked += 1
                called = ast.unparse(node.func)
                assert not called.endswith("login"), f"{name}:{node.lineno}: {called}()"
                passed = {k.arg for k in node.keywords} & {"token", "use_auth_token"}
                assert called == "dict" or not passed, f"{name}:{node.lineno}: {called}({passed}=...)"
    assert checked > 1000


# --- tokens -----------------------------------------------------------------------------------------


def test_no_hugging_face_token_anywhere_in_the_repository():
    """Notebooks, utils, tests, docs, data, bench and the top-level files: everything git would commit."""
    files = repository_files()
    folders = {p.relative_to(PROJECT_ROOT).parts[0] for p in files}

    assert {"notebooks", "utils", "tests", "docs", "data", "bench"} <= folders
    assert tokens_in(files) == []


def test_the_token_scan_finds_a_planted_token(tmp_path):
    planted = tmp_path / "notes.md"
    planted.write_text("log in with " + "hf_" + "Ab3" * 12 + " please", encoding="utf-8")

    assert tokens_in([planted]) == [f"{planted}: hf_Ab3..."]


# --- loading weights ----------------------------------------------------------------------------------


def test_every_torch_load_passes_weights_only_true():
    found = []
    for name, source in python_sources("utils", "bench", "tests"):
        for receiver, keywords, line in calls(source, "load"):
            if receiver == "torch":
                found.append(name)
                assert is_true(keywords.get("weights_only")), f"{name}:{line}: torch.load without weights_only=True"
    assert found, "no torch.load found: the scan itself is broken"


def test_nothing_trusts_remote_code():
    for path in repository_files():
        if path.suffix in (".py", ".ipynb", ".md"):
            assert not re.search(r"trust_remote_code\s*=\s*True", path.read_text(encoding="utf-8")), path


def test_every_model_loaded_in_utils_comes_from_safetensors():
    """Model weights (not tokenizers, configs or the GGUF the offline model is converted from) load with use_safetensors=True."""
    models = 0
    for name, source in python_sources("utils", notebooks=False):
        for receiver, keywords, line in calls(source, "from_pretrained"):
            if "Tokenizer" in receiver or "Config" in receiver or "gguf_file" in keywords:
                continue
            models += 1
            assert is_true(keywords.get("use_safetensors")), f"{name}:{line}: {receiver}.from_pretrained"
            assert "trust_remote_code" not in keywords or not is_true(keywords["trust_remote_code"])
    assert models >= 3, "the scan found too few model loads: is it still looking at the right calls?"


# --- git ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "runs/tiny/results.json", "runs/offline/checkpoints/full/checkpoint-8/model.safetensors",
    ".venv/bin/python", ".cache/finetuning-course/x", "notebooks/.ipynb_checkpoints/01-checkpoint.ipynb",
    "model.safetensors", "notebooks/lora-adapter/adapter_model.safetensors", "bench/out/pytorch_model.bin",
    "SmolLM2-135M-Instruct.Q4_1.gguf", "utils/__pycache__/models.cpython-311.pyc",
])
def test_git_ignores_runs_environments_caches_and_weights(path):
    result = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=PROJECT_ROOT, check=False)

    assert result.returncode == 0, f"{path} is not ignored by .gitignore"


def test_git_tracks_the_code_and_the_course_data():
    for path in ("utils/models.py", "notebooks/01_prompting.ipynb", "data/dialogsum_sample/train.jsonl"):
        assert subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=PROJECT_ROOT, check=False).returncode == 1


def test_no_weights_are_committed():
    assert [p for p in repository_files() if p.suffix in (".safetensors", ".bin", ".gguf", ".pt", ".pth")] == []
