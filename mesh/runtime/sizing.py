"""How much memory there is, and how much a load took.

What is measured, honestly:

- CPU: the growth of this process's resident set (``/proc/self/statm``) across
  ``backend.load``. It includes what the framework allocated for the model
  (deserialised weights, prepacked kernels, session buffers) but also anything
  else the process happened to allocate meanwhile, and it reads 0 when the
  allocator reuses freed pages. So it is used only when no other load overlapped
  (otherwise growth cannot be attributed), and it is never trusted alone: the
  charge is ``max(predicted, measured, backend-reported weight bytes)``.
- CUDA: the larger of torch's ``memory_allocated`` growth (torch models) and the
  drop of the device's free memory (``mem_get_info``: sees ONNX Runtime's CUDA
  arena too), again only when no other load overlapped.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


_statm_fd: int | None = None


def rss_bytes() -> int:
    """Current resident set size of this process (0 where /proc is missing).

    Read twice per load: the file stays open and is re-read from offset 0 (the
    kernel regenerates it on each read), a tenth of the cost of open + read + close."""
    global _statm_fd
    try:
        if _statm_fd is None:
            _statm_fd = os.open("/proc/self/statm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return int(os.pread(_statm_fd, 128, 0).split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def host_memory_bytes() -> int:
    """Physical memory, or the container's cgroup limit when lower."""
    total = os.sysconf("SC_PHYS_PAGES") * _PAGE
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return int(total)


def cuda_index(device: str) -> int:
    return int(device.partition(":")[2] or 0)


def check_device(device: str) -> None:
    """RuntimeError unless ``device`` exists (CUDA devices are measured through torch)."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device} requested but torch sees no CUDA device (install the CUDA build of torch "
            "2.13.0 and onnxruntime-gpu, or use --device cpu)"
        )
    if cuda_index(device) >= torch.cuda.device_count():
        raise RuntimeError(f"device {device} requested but this machine has {torch.cuda.device_count()} CUDA devices")


def device_memory_bytes(device: str) -> int:
    import torch

    check_device(device)
    return int(torch.cuda.get_device_properties(cuda_index(device)).total_memory)


def derive_capacity(device: str, reserve: int) -> int:
    """Capacity when none is configured: device (or host) memory minus ``reserve``."""
    total = device_memory_bytes(device) if device.startswith("cuda") else host_memory_bytes()
    capacity = total - reserve
    if capacity <= 0:
        raise ValueError(f"{device} has {total} bytes, less than the reserve of {reserve}: set --capacity")
    return capacity


def predict_size(file_bytes: int, factor: float, overhead: int) -> int:
    """The conservative size of a model before it is loaded."""
    return int(file_bytes * factor) + overhead


class LoadMeter:
    """Measures memory growth across loads; thread-safe (loads run in threads)."""

    def __init__(self, device: str) -> None:
        self._device = device
        self._lock = threading.Lock()
        self._running = 0
        #: Set when a load overlapped another since this one started.
        self._overlapped: dict[int, bool] = {}

    def _probe(self) -> tuple[int, int]:
        if not self._device.startswith("cuda"):
            return rss_bytes(), 0
        import torch

        idx = cuda_index(self._device)
        torch.cuda.synchronize(idx)
        free, _ = torch.cuda.mem_get_info(idx)
        return int(torch.cuda.memory_allocated(idx)), -int(free)

    def measure(self, load: Callable[[], Any]) -> tuple[Any, int]:
        """Runs ``load()``; returns its result and the attributable growth (0 if unknown)."""
        token = threading.get_ident()
        with self._lock:
            self._running += 1
            for k in self._overlapped:
                self._overlapped[k] = True
            self._overlapped[token] = self._running > 1
        try:
            before = self._probe()
            result = load()
            after = self._probe()
        finally:
            with self._lock:
                self._running -= 1
                overlapped = self._overlapped.pop(token, True)
        if overlapped:
            return result, 0
        return result, max(0, after[0] - before[0], after[1] - before[1])
