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


def current_memory_mb(device: torch.device | str = "cpu") -> float:
    """Memory in use now, in MB: CUDA's allocated memory on a GPU, the process's resident set on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20


def _tensor_megabytes(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)) / 2**20


def _block_scales(parameter: torch.Tensor) -> list[torch.Tensor]:
    """The block scales a 4-bit weight keeps beside its packed values (with double quantization, their own scales too)."""
    state = getattr(parameter, "quant_state", None)
    if state is None:
        return []
    nested = getattr(state, "state2", None)
    return [state.absmax, *([nested.absmax] if nested is not None else [])]


def training_memory_parts(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """What training holds besides activations, in MB, counted from the tensors themselves.

    Frozen weights (buffers and 4-bit layers at their packed size, block scales included),
    trainable weights, one gradient per trainable weight (in its dtype, as backward makes them)
    and the optimizer's states as it holds them after a step (AdamW: two per trainable weight).
    """
    parameters = list(model.parameters())
    frozen = [p for p in parameters if not p.requires_grad]
    trainable = [p for p in parameters if p.requires_grad]
    states = [value for state in optimizer.state.values() for value in state.values()]
    return {
        "frozen_weights_mb": _tensor_megabytes([*frozen, *model.buffers(), *(s for p in frozen for s in _block_scales(p))]),
        "trainable_weights_mb": _tensor_megabytes(trainable),
        "gradients_mb": _tensor_megabytes(trainable),
        "optimizer_states_mb": _tensor_megabytes(states),
    }
