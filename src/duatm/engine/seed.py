"""Seeding every random generator a run uses, in the main process and in DataLoader workers.

Why: augmentation draws from python `random` and numpy as well as torch; a run is repeatable only
when all three are seeded, and no two workers (of any process) may replay the same stream.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

# cuBLAS needs a fixed workspace to be deterministic on CUDA >= 10.2 (PyTorch reproducibility notes).
_CUBLAS_WORKSPACE = ":4096:8"


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices) and set the determinism mode both ways.

    `deterministic=True` asks torch for deterministic kernels (a warning where none exists) and
    turns cuDNN autotuning off; `False` allows any kernel and turns autotuning on, which pays off
    because every batch has the same image size.
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def pin_cpu_threads(threads: int | None) -> None:
    """Make torch use ``threads`` intra-op threads on the CPU (``None`` leaves its default).

    Why: a CPU reduction is split across threads, so its rounding depends on their number, and
    over a training run those last bits grow into a different model. The default is one thread
    per core, so without a pinned count a run's numbers change from machine to machine.
    """
    if threads is not None:
        torch.set_num_threads(threads)


def worker_init_fn(worker_id: int, rank: int = 0) -> None:
    """DataLoader `worker_init_fn`: reseed python, numpy and torch from the worker's torch seed.

    torch seeds worker `w` with base_seed + w, base_seed drawn from the loader's generator, so
    the processes of a distributed run whose loaders share a seed would augment identically.
    Mixing in the process `rank` (bind it: `functools.partial(worker_init_fn, rank=rank)`) keeps
    them apart, and the streams stay a pure function of the loader seed, so runs repeat.
    """
    del worker_id  # already part of torch.initial_seed() inside a worker
    words = np.random.SeedSequence([torch.initial_seed(), rank]).generate_state(4)
    random.seed(int.from_bytes(words.tobytes(), "little"))
    np.random.seed(words)
    torch.manual_seed(int(words[0]) << 32 | int(words[1]))


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> int:
    """Reseed python, numpy and torch from (seed, epoch, rank); returns the torch seed used.

    Why: the trainer calls this at the start of every epoch, so an epoch's augmentation and loss
    sampling depend only on the run seed and the epoch number, not on what ran before it (an
    evaluation, a restart). A resumed run therefore replays exactly what the uninterrupted one did.
    Each rank of a distributed run draws its own streams; rank 0's are the one-process ones.
    """
    entropy = [seed, epoch] if rank == 0 else [seed, epoch, rank]
    words = np.random.SeedSequence(entropy).generate_state(4)
    random.seed(int.from_bytes(words.tobytes(), "little"))
    np.random.seed(words)
    torch_seed = int(words[0]) << 32 | int(words[1])
    torch.manual_seed(torch_seed)
    return torch_seed
