"""Where `make setup` takes torch from, decided for every kind of machine without downloading anything."""

import subprocess
import sys
from pathlib import Path

import pytest

import utils.apps.torch_index as torch_index
from utils.apps.torch_index import CPU_INDEX, Machine, choose_torch_install, locked_torch

ROOT = Path(__file__).resolve().parent.parent
PIN = "torch==2.13.0"
LINUX_CPU = Machine("Linux", "x86_64", nvidia_gpu=False)


class Reachability:
    """Stands in for the network check: answers `reachable`, and counts how often it was asked."""

    def __init__(self, reachable: bool):
        self.reachable, self.asked = reachable, 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.reachable


def test_linux_x86_64_without_a_gpu_takes_the_cpu_build_from_pytorchs_index_when_it_answers():
    choice = choose_torch_install(LINUX_CPU, PIN, Reachability(True))

    assert choice.pip_arguments == ("--index-url", CPU_INDEX, "--no-deps", PIN)
    assert CPU_INDEX in choice.reason


def test_linux_x86_64_without_a_gpu_falls_back_to_the_default_index_when_pytorchs_does_not_answer():
    choice = choose_torch_install(LINUX_CPU, PIN, Reachability(False))

    assert choice.pip_arguments == (PIN,)
    assert "default index" in choice.reason and "could not be reached" in choice.reason


@pytest.mark.parametrize("machine", [
    Machine("Linux", "x86_64", nvidia_gpu=True),
    Machine("Darwin", "arm64", nvidia_gpu=False),
    Machine("Darwin", "x86_64", nvidia_gpu=False),
    Machine("Linux", "aarch64", nvidia_gpu=False),
    Machine("Linux", "aarch64", nvidia_gpu=True),
    Machine("Windows", "AMD64", nvidia_gpu=False),
], ids=lambda m: f"{m.system}-{m.processor}-{'gpu' if m.nvidia_gpu else 'cpu'}")
def test_elsewhere_torch_comes_with_the_lock_and_the_network_is_not_asked(machine):
    reachability = Reachability(True)

    choice = choose_torch_install(machine, PIN, reachability)

    assert choice.pip_arguments == ()
    assert "comes with the lock" in choice.reason
    assert reachability.asked == 0


def test_the_pin_is_the_locks_own():
    lock = (ROOT / "requirements" / "lock.txt").read_text().splitlines()

    assert locked_torch(ROOT / "requirements" / "lock.txt") in lock


def test_a_lock_without_torch_is_an_error_that_says_so(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("numpy==2.0.0\n")

    with pytest.raises(ValueError, match="pins torch 0 times"):
        locked_torch(lock)


def test_main_installs_the_choice_with_the_lock_as_constraints_and_says_which(monkeypatch, capsys):
    commands = []
    monkeypatch.setattr(torch_index, "this_machine", lambda: LINUX_CPU)
    monkeypatch.setattr(torch_index, "cpu_index_reachable", lambda: False)
    monkeypatch.setattr(subprocess, "run", lambda command, **_: commands.append(command) or
                        subprocess.CompletedProcess(command, 0))
    lock = ROOT / "requirements" / "lock.txt"

    assert torch_index.main([str(lock)]) == 0

    assert commands == [[sys.executable, "-m", "pip", "install", "-q", "-c", str(lock), locked_torch(lock)]]
    assert capsys.readouterr().out.startswith("torch: Linux x86-64 without an NVIDIA GPU")


def test_main_installs_nothing_where_torch_comes_with_the_lock(monkeypatch, capsys):
    monkeypatch.setattr(torch_index, "this_machine", lambda: Machine("Darwin", "arm64", nvidia_gpu=False))
    monkeypatch.setattr(subprocess, "run", lambda *_, **__: pytest.fail("pip must not run"))

    assert torch_index.main([str(ROOT / "requirements" / "lock.txt")]) == 0

    assert "Darwin arm64: torch comes with the lock" in capsys.readouterr().out


def test_an_unreachable_address_is_reported_as_unreachable_quickly():
    assert torch_index.cpu_index_reachable("http://127.0.0.1:9", seconds=2) is False


def test_the_makefile_installs_torch_through_this_module_before_the_lock():
    makefile = (ROOT / "Makefile").read_text()

    assert makefile.index("-m utils.apps.torch_index $(LOCK)") < makefile.index('-c $(LOCK) -e ".[dev]"')
