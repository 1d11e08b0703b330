"""Timing and memory helpers shared by the benchmark scripts.

Contenders run in turn, round after round, and each keeps its best time: load from other
processes (or a CPU that changes speed) then hits every contender alike, which a block of
repeats per contender does not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch


def device_sync(device: torch.device) -> Callable[[], None]:
    """A function that waits for ``device``'s queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def interleaved_best(
    contenders: dict[str, Callable[[], object]], rounds: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Best wall seconds of each contender, run in turn for ``rounds`` rounds after a warm-up."""
    best = dict.fromkeys(contenders, float("inf"))
    for round_ in range(rounds + 1):  # round 0 warms up and is not counted
        for name, fn in contenders.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_ > 0:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


class ResidentMemory:
    """Peak resident memory of a CPU call, from the kernel's high-water mark (Linux).

    Free heap pages go back to the system first (glibc `malloc_trim`), so that what the call
    allocates must become resident anew, then the high-water mark is reset to the current RSS
    (`/proc/self/clear_refs`, "5"), and after the call it is read back (`VmHWM`).
    """

    def __init__(self) -> None:
        name = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(name) if name else None
        self.available = self._libc is not None and Path("/proc/self/clear_refs").exists()

    @staticmethod
    def _status_kib(field: str) -> int:
        text = Path("/proc/self/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
        assert match is not None, field
        return int(match.group(1))

    def peak_growth(self, fn: Callable[[], object]) -> int:
        gc.collect()
        assert self._libc is not None
        self._libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        before = self._status_kib("VmRSS")
        fn()
        return (self._status_kib("VmHWM") - before) * 1024
