"""Timing helpers shared by the benchmark scripts.

Contenders run in turn, round after round, and each keeps its best time: load from other
processes (or a CPU that changes speed) then hits every contender alike, which a block of
repeats per contender does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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
