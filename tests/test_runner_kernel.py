"""`make run`'s kernel: the python3 kernel of this environment, started without ipykernel's TCP warning."""

import sys

import nbformat
import pytest

from utils.apps.runner import kernel_manager_config, run_notebook
from utils.profiles import get_profile

TCP_WARNING = "without encryption"


@pytest.fixture
def one_cell_notebook(tmp_path):
    path = tmp_path / "00_check.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.prefix)")]), path)
    return path


def test_the_runner_asks_for_encrypted_kernel_messages():
    assert kernel_manager_config().KernelManager.transport_encryption == "auto"


def test_a_notebook_runs_in_this_environment_and_the_kernel_prints_no_tcp_warning(one_cell_notebook, monkeypatch,
                                                                                   capfd, isolated_runs):
    monkeypatch.setenv("COURSE_PROFILE", "tiny")  # run_notebook sets it for the kernel; restored afterwards

    ok, _, error = run_notebook(one_cell_notebook, get_profile("tiny"), timeout_seconds=60)

    assert ok, error
    executed = nbformat.read(isolated_runs / "tiny" / "notebooks" / one_cell_notebook.name, as_version=4)
    assert executed.cells[0].outputs[0].text.strip() == sys.prefix
    printed = capfd.readouterr()  # the kernel's own stderr too: it inherits this process's file descriptors
    assert TCP_WARNING not in printed.out + printed.err
