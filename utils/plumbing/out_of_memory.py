"""Out of memory, explained: which step ran out, what it asked for, and the settings that need less.

Training, generation and scoring run inside `explained_out_of_memory(step, profile)`. A CUDA
out-of-memory error, Python's MemoryError or PyTorch's "DefaultCPUAllocator: can't allocate memory"
then becomes one OutOfMemory error whose message is a paragraph a learner can act on. Nothing is
marked finished on the way out: a training's `finished.json` is written only after it ends.
`low_memory_warning` warns before a notebook starts when the machine has less memory free than the
notebook used at its peak in the reference run.
"""

from __future__ import annotations

import contextlib
import json
import re
import traceback
from collections.abc import Iterator
from pathlib import Path

from utils.plumbing.files import PROJECT_ROOT

CPU_ALLOCATOR_FAILURE = "DefaultCPUAllocator: can't allocate memory"


class OutOfMemory(MemoryError):
    """A step of the course ran out of GPU or CPU memory; the message says what lowers its need."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is the machine running out of memory (CUDA's, the CPU's, Apple's MPS)."""
    if isinstance(error, MemoryError):
        return True
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (CPU_ALLOCATOR_FAILURE in text or "out of memory" in text)


def requested(error: BaseException) -> str:
    """What the failed allocation asked for, as the error says it ("2.00 GiB"), or "" when it does not say."""
    text = str(error)
    cuda = re.search(r"Tried to allocate ([\d.]+ [KMGT]iB)", text)
    if cuda:
        return cuda.group(1)
    cpu = re.search(r"you tried to allocate (\d+) bytes", text)
    return f"{int(cpu.group(1)) / 2**30:.2f} GiB" if cpu else ""


def explanation(step: str, error: BaseException, sizes: str = "") -> str:
    """One paragraph: the step, what it asked for, `sizes` (what of the profile decides its memory), and what
    needs less memory."""
    import torch

    on_gpu = isinstance(error, torch.cuda.OutOfMemoryError) or "CUDA" in str(error)
    where = "the GPU" if on_gpu else "the computer's RAM"
    asked = requested(error)
    parts = [f"Out of memory in {where} while {step}" + (f" (one more allocation of {asked} failed)." if asked else ".")]
    if sizes:
        parts.append(sizes)
    parts.append("To need less: shut down other notebooks' kernels and close programs that hold memory; choose "
                 "a smaller profile (COURSE_PROFILE=colab on a smaller GPU, COURSE_PROFILE=offline on a "
                 "laptop); or run at test sizes (COURSE_SMOKE=1).")
    parts.append("Finished trainings and complete checkpoints are kept: run it again and it goes on from there.")
    return " ".join(parts)


@contextlib.contextmanager
def explained_out_of_memory(step: str, sizes: str = "") -> Iterator[None]:
    """Run the block; an out-of-memory error in it becomes OutOfMemory, explained with `sizes` (other errors pass)."""
    message = None
    try:
        yield
    except (MemoryError, RuntimeError) as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if isinstance(error, OutOfMemory) or not is_out_of_memory(error):
            raise
        message = explanation(step, error, sizes)
        traceback.clear_frames(error.__traceback__)  # the failed step's tensors, held by its frames, can go
        error.__traceback__ = None
    if message is not None:
        _release_cached_gpu_memory()
        raise OutOfMemory(message) from None


def _release_cached_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


REFERENCE_RUN = PROJECT_ROOT / "reference" / "offline" / "run.json"  # written by `python -m utils reference`


def reference_peak_ram_mb(notebook: str, profile_name: str, path: Path | None = None) -> float | None:
    """The peak RAM (MB) the reference run measured for `notebook` in its profile, or None when not measured
    (no reference run yet, another profile, a notebook it did not run)."""
    try:
        run = json.loads((path or REFERENCE_RUN).read_text(encoding="utf-8"))
        if run.get("profile") != profile_name:
            return None
        return float(run["notebooks"][notebook]["peak_ram_mb"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def low_memory_warning(notebook: str, profile_name: str, available_mb: float | None = None,
                       path: Path | None = None) -> str | None:
    """A warning when this machine's available memory (psutil) is below what `notebook` used at its peak in
    the reference run, saying what to close or choose; None when it fits or nothing was measured."""
    peak = reference_peak_ram_mb(notebook, profile_name, path)
    if peak is None:
        return None
    if available_mb is None:
        import psutil

        available_mb = psutil.virtual_memory().available / 2**20
    if available_mb >= peak:
        return None
    return (f"Memory  : this notebook used up to {peak / 1024:.1f} GB of RAM in the reference run, and this machine "
            f"has {available_mb / 1024:.1f} GB free now: it may stop half-way. Shut down the kernels of other "
            "notebooks (Kernel > Shut Down Kernel) and close programs you do not need (browser tabs, other "
            "notebooks' servers), or run it at test sizes (COURSE_SMOKE=1) to see it work first.")
