"""Memory, time and size measurements shared by training, eval and `sparsetune bench`.

Memory: CUDA `max_memory_allocated` after a reset; on CPU the process's peak resident set size.
Time: wall clock with a CUDA synchronise around the timed region, medians after warm-up.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

import torch

_MB = 1024 * 1024


def _is_cuda(device: Any) -> bool:
    return device is not None and str(device).startswith("cuda")


def _sync(device: Any) -> None:
    if _is_cuda(device):
        torch.cuda.synchronize(device)


def peak_memory_mb(device: Any = "cpu") -> float:
    """Peak memory in MB since the last `reset_peak_memory` (CPU: since process start where the OS
    cannot reset it). CUDA: tensors allocated by torch; CPU: the whole process's peak RSS."""
    if _is_cuda(device):
        return torch.cuda.max_memory_allocated(device) / _MB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is kilobytes on Linux, bytes on macOS
    return peak / _MB if sys.platform == "darwin" else peak / 1024


def reset_peak_memory(device: Any = "cpu") -> None:
    """Start a new peak-memory window. CPU (Linux): resets the process high-water mark to the current
    RSS through /proc/self/clear_refs; elsewhere the CPU peak keeps counting from process start."""
    if _is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def current_rss_mb() -> float:
    """Resident set size of this process now, in MB."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / _MB
    except (OSError, ValueError, IndexError):
        return peak_memory_mb("cpu")  # best available approximation off Linux


def current_memory_mb(device: Any = "cpu") -> float:
    """Memory in use now, on the scale `peak_memory_mb` reports (CUDA: allocated; CPU: RSS): the level a
    peak is measured above, e.g. the loaded model before its first training step."""
    if _is_cuda(device):
        return torch.cuda.memory_allocated(device) / _MB
    return current_rss_mb()


class StepTimer:
    """Collects per-step wall times; CUDA work is synchronised before and after each step.

    Use `with timer.step(): ...` or `timer.start()` / `timer.stop()` around each step.
    """

    def __init__(self, device: Any = None) -> None:
        self.device = device
        self.times: list[float] = []
        self._t0: Optional[float] = None

    def start(self) -> None:
        _sync(self.device)
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        if self._t0 is None:
            raise RuntimeError("StepTimer.stop() called without start()")
        _sync(self.device)
        elapsed = time.perf_counter() - self._t0
        self._t0 = None
        self.times.append(elapsed)
        return elapsed

    @contextmanager
    def step(self) -> Iterator[None]:
        self.start()
        try:
            yield
        finally:
            self.stop()

    @property
    def last(self) -> float:
        return self.times[-1] if self.times else float("nan")

    def measured(self, skip_warmup: int = 0) -> list[float]:
        """Times after the first `skip_warmup` steps (all of them if there are no more)."""
        rest = self.times[skip_warmup:]
        return rest if rest else list(self.times)

    def median(self, skip_warmup: int = 0) -> float:
        data = self.measured(skip_warmup)
        return statistics.median(data) if data else float("nan")

    def mean(self, skip_warmup: int = 0) -> float:
        data = self.measured(skip_warmup)
        return statistics.fmean(data) if data else float("nan")

    def __len__(self) -> int:
        return len(self.times)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tensor shared by several modules (tied embeddings, even
    when re-wrapped as separate Parameter objects over the same storage) counts once."""
    seen: dict[tuple, bool] = {}
    sizes: dict[tuple, int] = {}
    for p in model.parameters(recurse=True):
        key = _storage_key(p)
        seen[key] = seen.get(key, False) or bool(p.requires_grad)
        sizes[key] = p.numel()
    total = sum(sizes.values())
    trainable = sum(n for k, n in sizes.items() if seen[k])
    return trainable, total


def _storage_key(p: Any) -> tuple:
    try:
        ptr = p.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        ptr = 0
    if ptr == 0:  # meta / fake tensors have no storage: fall back to object identity
        return ("id", id(p))
    return (p.device.type, ptr, p.storage_offset(), tuple(p.shape), tuple(p.stride()))


def latency(fn: Callable[[], Any], warmup: int = 2, iters: int = 10, device: Any = None) -> dict[str, float]:
    """Seconds per call of `fn`: {"median", "mean", "p90"} over `iters` calls after `warmup` calls."""
    if iters < 1:
        raise ValueError("latency needs iters >= 1")
    for _ in range(max(0, warmup)):
        fn()
    timer = StepTimer(device)
    for _ in range(iters):
        with timer.step():
            fn()
    data = sorted(timer.times)
    p90 = data[max(0, math.ceil(0.9 * len(data)) - 1)]  # nearest-rank percentile
    return {"median": statistics.median(data), "mean": statistics.fmean(data), "p90": p90}
