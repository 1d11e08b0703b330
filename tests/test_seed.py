"""duatm.engine.seed: repeatable runs and distinct, repeatable DataLoader worker streams."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from conftest import write_tiny_checkpoint
from duatm.cli import main
from duatm.config import ConfigError, load_config
from duatm.engine.seed import pin_cpu_threads, seed_everything, worker_init_fn


@pytest.fixture(autouse=True)
def keep_global_torch_modes() -> Iterator[None]:
    """seed_everything and pin_cpu_threads change process-wide settings; put them back."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.get_num_threads(),
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
    torch.set_num_threads(saved[4])


def draws() -> tuple[list[float], list[float], list[float]]:
    return (
        [random.random() for _ in range(3)],
        np.random.rand(3).tolist(),
        torch.rand(3).tolist(),
    )


def test_same_seed_same_draws_in_every_library() -> None:
    seed_everything(123)
    first = draws()
    seed_everything(123)
    assert draws() == first
    seed_everything(124)
    assert all(a != b for a, b in zip(draws(), first, strict=True))


def test_seed_matches_each_library_seeded_directly() -> None:
    seed_everything(7)
    got = draws()
    reference = random.Random(7)
    assert got[0] == [reference.random() for _ in range(3)]
    assert got[1] == np.random.RandomState(7).rand(3).tolist()
    assert got[2] == torch.rand(3, generator=torch.Generator().manual_seed(7)).tolist()


def test_deterministic_flag_is_set_both_ways() -> None:
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    seed_everything(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_out_of_range_seed_is_rejected(seed: int) -> None:
    with pytest.raises(ValueError, match="seed must be"):
        seed_everything(seed)


def test_worker_init_fn_is_a_function_of_the_torch_seed_and_rank() -> None:
    def worker_draws(torch_seed: int, rank: int) -> tuple[list[float], list[float], list[float]]:
        torch.manual_seed(torch_seed)
        worker_init_fn(0, rank=rank)
        return draws()

    reference = worker_draws(2**40 + 5, 0)  # torch seeds may exceed numpy's 32-bit range
    assert worker_draws(2**40 + 5, 0) == reference
    for other in (worker_draws(2**40 + 6, 0), worker_draws(2**40 + 5, 1)):
        assert all(a != b for a, b in zip(other, reference, strict=True))


class Draws(Dataset):
    """Each item reports the draws of each library in whichever worker loads it."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[float, float, float]:
        return float(np.random.rand()), random.random(), float(torch.rand(()))


def load_all(seed: int, rank: int = 0) -> list[tuple[float, ...]]:
    loader = DataLoader(
        Draws(),
        batch_size=1,
        num_workers=2,
        worker_init_fn=functools.partial(worker_init_fn, rank=rank),
        generator=torch.Generator().manual_seed(seed),
    )
    return [tuple(float(x) for x in item) for item in loader]


def test_loader_workers_differ_from_each_other_and_across_ranks_yet_repeat() -> None:
    run = load_all(0)
    assert load_all(0) == run
    # With 2 workers, items 0 and 1 are the first draws of worker 0 and worker 1.
    assert all(a != b for a, b in zip(run[0], run[1], strict=True))
    # Two processes of a distributed run, same loader seed: torch alone would give equal draws.
    assert all(a != b for a, b in zip(load_all(0, rank=1)[0], run[0], strict=True))
    assert load_all(1) != run


def test_pin_cpu_threads_sets_torch_threads_and_none_keeps_them() -> None:
    pin_cpu_threads(1)
    assert torch.get_num_threads() == 1
    pin_cpu_threads(None)
    assert torch.get_num_threads() == 1
    pin_cpu_threads(3)
    assert torch.get_num_threads() == 3


def test_cpu_threads_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="cpu_threads"):
        load_config(None, ["cpu_threads=0"])


def test_evaluate_pins_the_checkpoint_configs_threads(tiny_synthped: Path, tmp_path: Path) -> None:
    """`duatm evaluate` runs with the thread count saved in the run's config; --set overrides."""
    checkpoint = write_tiny_checkpoint(
        tmp_path / "pinned.pt", tiny_synthped, overrides=("cpu_threads=1",)
    )
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--no-progress"]
    torch.set_num_threads(2)
    assert main([*argv, "--results", str(tmp_path / "saved.json")]) == 0
    assert torch.get_num_threads() == 1
    assert main([*argv, "--results", str(tmp_path / "set.json"), "--set", "cpu_threads=2"]) == 0
    assert torch.get_num_threads() == 2


def test_training_pins_the_configs_threads(
    train_argv: Callable[..., list[str]], tmp_path: Path
) -> None:
    torch.set_num_threads(2)
    assert main(train_argv(tmp_path / "run", "cpu_threads=1", "schedule.epochs=1")) == 0
    assert torch.get_num_threads() == 1
