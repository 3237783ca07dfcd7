"""`make run`: execute the notebooks headless in one profile, keep executed copies, write the report.

runs/<profile>/status.json keeps, per notebook: done or failed, its wall time (`seconds`), the kernel's
peak resident memory (`peak_ram_mb`, see kernel_peak_ram_mb), the training precision, the machine, and
its slowest cells. `python -m utils reference` turns a complete run into reference/<profile>/.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import nbformat
import psutil
import zmq
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from tqdm.auto import tqdm
from traitlets.config import Config

from utils.models import NATIVE_BF16_CPU_FLAGS, cpu_flags, training_precision
from utils.plumbing.files import PROJECT_ROOT, runs_dir, write_json_atomic, write_text_atomic
from utils.plumbing.measure import matrix_product_gflops
from utils.profiles import Profile

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"


def notebook_paths(selected: list[str] | None = None) -> list[Path]:
    """The course notebooks in order; `selected` keeps those whose name starts with one of its items."""
    paths = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if selected:
        paths = [p for p in paths if any(p.name.startswith(s) for s in selected)]
    return paths


def kernel_manager_config() -> Config:
    """The kernel's settings: its messages encrypted with CurveZMQ wherever pyzmq supports it.

    Over plain TCP, ipykernel warns at every start that anyone on the machine could read the
    traffic ("Kernel is running over TCP without encryption"). jupyter_client gives the kernel keys
    when asked to; the warning then has no cause, and `make run` prints only the course's own lines.
    """
    return Config({"KernelManager": {"transport_encryption": "auto" if zmq.has("curve") else "disabled"}})


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


SPEED_FLAGS = ("avx2", "avx512f", *NATIVE_BF16_CPU_FLAGS)  # the CPU features that decide the course's speed


def machine_summary() -> str:
    """The processor, its cores and threads, and which of SPEED_FLAGS it has: what a notebook's time depends on."""
    import torch

    flags = cpu_flags()
    has = ", ".join(flag for flag in SPEED_FLAGS if flag in flags) or "none of " + ", ".join(SPEED_FLAGS)
    lacks = ", ".join(flag for flag in SPEED_FLAGS if flag not in flags)
    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{_processor_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads; "
            f"{has}{' (no ' + lacks + ')' if lacks and flags else ''}{gpu}")


def _processor_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def slowest_cells(notebook: nbformat.NotebookNode, count: int = 3) -> list[dict]:
    """The `count` code cells that took longest (cell number, seconds, first line), from the kernel's timing."""
    timed = []
    for number, cell in enumerate(notebook.cells):
        execution = cell.get("metadata", {}).get("execution", {})
        started, ended = execution.get("iopub.execute_input"), execution.get("shell.execute_reply")
        if cell.cell_type == "code" and started and ended:
            seconds = (datetime.fromisoformat(ended.replace("Z", "+00:00"))
                       - datetime.fromisoformat(started.replace("Z", "+00:00"))).total_seconds()
            first_line = next((line for line in cell.source.splitlines() if line.strip()), "")
            timed.append({"cell": number, "seconds": round(seconds, 1), "code": first_line[:80]})
    return sorted(timed, key=lambda item: -item["seconds"])[:count]


def kernel_peak_ram_mb(pid: int) -> float:
    """The peak resident memory (RAM) of process `pid` so far, in MB.

    On Linux: the kernel's high-water mark of the process's resident set (VmHWM in /proc/<pid>/status),
    exact over the process's whole life. Elsewhere: its resident set now (psutil), which the runner reads
    after every cell, so a lower bound. Child processes the kernel starts are not counted.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


class NotebookRun(NamedTuple):
    """How one notebook's run went: ok, its wall time, the last line of its error, the kernel's peak RAM."""

    ok: bool
    seconds: float
    error: str
    peak_ram_mb: float


def run_notebook(path: Path, profile: Profile, timeout_seconds: int = 3600) -> NotebookRun:
    """Execute one notebook with COURSE_PROFILE set; save the executed copy."""
    notebook = nbformat.read(path, as_version=4)
    code_cells = sum(cell.cell_type == "code" for cell in notebook.cells)
    bar = tqdm(total=code_cells, desc=path.stem, unit="cell")
    peak_ram_mb = 0.0

    def cell_executed(**_) -> None:
        nonlocal peak_ram_mb
        bar.update(1)
        peak_ram_mb = max(peak_ram_mb, kernel_peak_ram_mb(client.km.provisioner.pid))

    client = NotebookClient(
        notebook,
        timeout=timeout_seconds,
        # Not the notebooks' own kernel (`make lab` registers it): python3 is the Python running this,
        # present in every environment with ipykernel, registered or not.
        kernel_name="python3",
        config=kernel_manager_config(),
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_executed=cell_executed,
    )
    os.environ["COURSE_PROFILE"] = profile.name  # the kernel inherits it (and COURSE_DATA, if set)
    started = time.perf_counter()
    error = ""
    try:
        client.execute()
    except CellExecutionError as failure:
        error = str(failure).strip().splitlines()[-1] if str(failure).strip() else "a cell failed"
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    executed = runs_dir(profile.run_name) / "notebooks" / path.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(executed, nbformat.writes(notebook))
    return NotebookRun(not error, seconds, error, peak_ram_mb)


def executed_notebook(profile: Profile, name: str) -> nbformat.NotebookNode | None:
    """The executed copy `run_notebook` saved of notebook `name` (its file name), or None."""
    path = runs_dir(profile.run_name) / "notebooks" / name
    return nbformat.read(path, as_version=4) if path.exists() else None


def run_course(profile: Profile, selected: list[str] | None = None, redo: bool = False) -> bool:
    """Run the notebooks not yet finished (all of them with `redo`); True when all succeeded."""
    status_path = runs_dir(profile.run_name) / "status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() and not redo else {}
    all_ok = True
    precision = "bf16 autocast" if training_precision(profile)[0] is not None else "float32"  # what training uses
    for path in notebook_paths(selected):
        previous = status.get(path.stem, {})
        if previous.get("status") == "done" and previous.get("source") == _digest(path):
            print(f"{path.stem}: already done in runs/{profile.run_name} (make run REDO=1 to run it again)")
            continue
        print(f"{path.stem}: running in profile {profile.run_name}...", flush=True)
        speed_before = matrix_product_gflops()
        ok, seconds, error, peak_ram_mb = run_notebook(path, profile)
        speed_after = matrix_product_gflops()
        executed = executed_notebook(profile, path.name)
        status[path.stem] = {"status": "done" if ok else "failed", "seconds": round(seconds, 1),
                             "peak_ram_mb": round(peak_ram_mb), "precision": precision, "source": _digest(path),
                             "machine": machine_summary(),
                             "matmul_gflops_before_after": [round(speed_before, 1), round(speed_after, 1)],
                             "slowest_cells": slowest_cells(executed) if executed is not None else []}
        write_json_atomic(status_path, status)
        print(f"{path.stem}: {'done' if ok else 'FAILED: ' + error} in {seconds:.0f} s", flush=True)
        all_ok &= ok
    return all_ok
