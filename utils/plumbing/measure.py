"""Measure what training costs: wall time and peak memory (process RSS on CPU, CUDA peak on GPU)."""

from __future__ import annotations

import threading
import time

import psutil
import torch


class PeakMemory:
    """Context manager recording peak memory in MB while its block runs.

    On CUDA: torch's peak allocated memory. On CPU: the process's resident set size,
    sampled every 20 ms by a background thread (the peak of the whole process, model included).
    """

    def __init__(self, device: torch.device | str = "cpu", interval_seconds: float = 0.02):
        self.device = torch.device(device)
        self.interval = interval_seconds
        self.peak_mb = 0.0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, process.memory_info().rss / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._started = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, psutil.Process().memory_info().rss / 2**20)
        self.seconds = time.perf_counter() - self._started


def full_finetuning_memory_mb(model: torch.nn.Module) -> dict[str, float]:
    """What full fine-tuning with AdamW must hold besides activations, from the parameter count.

    Weights and gradients take one number per parameter each, AdamW two more (its moment
    estimates), all in the parameters' dtype. Activations depend on batch and length:
    compare the sum with a measured peak to see their share.
    """
    parameters = sum(p.numel() for p in model.parameters())
    bytes_each = next(model.parameters()).element_size()
    megabytes = parameters * bytes_each / 2**20
    return {"weights": megabytes, "gradients": megabytes, "optimizer states": 2 * megabytes}


def matrix_product_gflops(seconds: float = 1.0, size: int = 512) -> float:
    """How fast this machine multiplies right now: float32 `size` x `size` products for about `seconds`, in GFLOP/s.

    A sustained rate, not a best case. Shared machines speed up and slow down, by up to two times
    between runs here; measured before and after a notebook, it says how fast the machine was meanwhile.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # the first product pays for allocations
    products, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        a @ b
        products += 1
    return 2 * size**3 * products / elapsed / 1e9
