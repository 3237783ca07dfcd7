"""`make run`'s kernel: the python3 kernel of this environment, started without ipykernel's TCP warning."""

import sys

import nbformat
import pytest

from utils.apps.runner import kernel_manager_config, machine_summary, run_notebook, slowest_cells
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

    ok, _, error, _ = run_notebook(one_cell_notebook, get_profile("tiny"), timeout_seconds=60)

    assert ok, error
    executed = nbformat.read(isolated_runs / "tiny" / "notebooks" / one_cell_notebook.name, as_version=4)
    assert executed.cells[0].outputs[0].text.strip() == sys.prefix
    printed = capfd.readouterr()  # the kernel's own stderr too: it inherits this process's file descriptors
    assert TCP_WARNING not in printed.out + printed.err


def test_the_runner_reports_which_cells_took_longest_and_on_what_machine(tmp_path, monkeypatch, isolated_runs):
    path = tmp_path / "00_timed.ipynb"
    cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_markdown_cell("text"),
             nbformat.v4.new_code_cell("import time\ntime.sleep(1.5)")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    monkeypatch.setenv("COURSE_PROFILE", "tiny")

    ok, _, error, _ = run_notebook(path, get_profile("tiny"), timeout_seconds=60)
    slowest = slowest_cells(nbformat.read(isolated_runs / "tiny" / "notebooks" / path.name, as_version=4))

    assert ok, error
    assert [cell["cell"] for cell in slowest] == [2, 0]  # the sleeping cell first; markdown is not timed
    assert slowest[0]["seconds"] >= 1.5 and slowest[0]["code"] == "import time"
    assert "cores" in machine_summary() and "threads" in machine_summary()


def test_the_runner_measures_the_kernels_peak_ram_after_its_memory_is_freed_again(tmp_path, monkeypatch,
                                                                                    isolated_runs):
    path = tmp_path / "00_memory.ipynb"
    cells = [nbformat.v4.new_code_cell("block = bytearray(300 * 2**20)\nblock[::4096] = b'x' * len(block[::4096])"),
             nbformat.v4.new_code_cell("del block")]  # 300 MB touched, then freed before the notebook ends
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    monkeypatch.setenv("COURSE_PROFILE", "tiny")

    run = run_notebook(path, get_profile("tiny"), timeout_seconds=60)

    assert run.ok, run.error
    assert 300 < run.peak_ram_mb < 300 + 1000  # the block, plus the kernel's own Python
