"""Where `make setup` takes torch from: the CPU build on Linux x86-64 machines without an NVIDIA GPU.

PyPI's torch for Linux x86-64 is the CUDA build, gigabytes of CUDA libraries a CPU never uses.
On such a machine without an NVIDIA GPU (no `nvidia-smi`), torch, at the lock's version, comes
from PyTorch's CPU wheel index when that index answers within a few seconds, and from the
default index otherwise (a mirror that serves a CPU wheel, say). Everywhere else (an NVIDIA GPU,
macOS, Windows, aarch64) nothing happens here: torch comes with the rest of the lock, the build
PyPI has for that machine.

Run by the Makefile before the lock is installed, with the standard library only:
`python -m utils.apps.torch_index requirements/lock.txt`. It prints which source it used.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
REACHABLE_WITHIN_SECONDS = 5


@dataclass(frozen=True)
class Machine:
    """What decides the torch build: the operating system, the processor and an NVIDIA GPU."""

    system: str  # platform.system(): "Linux", "Darwin", "Windows"
    processor: str  # platform.machine(): "x86_64", "aarch64", "arm64"
    nvidia_gpu: bool


@dataclass(frozen=True)
class TorchInstall:
    """The pip arguments that install torch before the lock (none: torch comes with the lock) and why."""

    pip_arguments: tuple[str, ...]
    reason: str


def this_machine() -> Machine:
    """The machine this runs on; an NVIDIA GPU is assumed where `nvidia-smi` is on the PATH."""
    return Machine(platform.system(), platform.machine(), shutil.which("nvidia-smi") is not None)


def cpu_index_reachable(url: str = CPU_INDEX, seconds: float = REACHABLE_WITHIN_SECONDS) -> bool:
    """True when PyTorch's CPU index lists torch within `seconds`."""
    try:
        with urllib.request.urlopen(f"{url}/torch/", timeout=seconds) as response:
            return response.status == 200
    except (OSError, ValueError):  # no network, DNS, TLS, timeout, HTTP error
        return False


def locked_torch(lock: Path) -> str:
    """The lock's pin of torch, e.g. "torch==2.13.0"."""
    pins = [line.split("#")[0].strip() for line in lock.read_text().splitlines() if line.startswith("torch==")]
    if len(pins) != 1:
        raise ValueError(f"{lock} pins torch {len(pins)} times; expected once (torch==<version>)")
    return pins[0]


def choose_torch_install(machine: Machine, pin: str, index_reachable: Callable[[], bool]) -> TorchInstall:
    """What to install for `machine`; asks `index_reachable` only where the CPU build is wanted."""
    if (machine.system, machine.processor) != ("Linux", "x86_64"):
        return TorchInstall((), f"{machine.system} {machine.processor}: torch comes with the lock")
    if machine.nvidia_gpu:
        return TorchInstall((), "NVIDIA GPU found: the CUDA build of torch comes with the lock")
    if index_reachable():
        # Only torch from PyTorch's index: its dependencies come with the lock, from the default index.
        return TorchInstall(("--index-url", CPU_INDEX, "--no-deps", pin),
                            f"Linux x86-64 without an NVIDIA GPU: CPU build {pin} from {CPU_INDEX}")
    return TorchInstall((pin,), f"Linux x86-64 without an NVIDIA GPU: {pin} from the default index "
                                f"({CPU_INDEX} could not be reached)")


def main(argv: list[str]) -> int:
    """Install torch as chosen for this machine (nothing where it comes with the lock), saying which."""
    lock = Path(argv[0] if argv else "requirements/lock.txt")
    choice = choose_torch_install(this_machine(), locked_torch(lock), cpu_index_reachable)
    print(f"torch: {choice.reason}", flush=True)
    if not choice.pip_arguments:
        return 0
    command = [sys.executable, "-m", "pip", "install", "-q", "-c", str(lock), *choice.pip_arguments]
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
