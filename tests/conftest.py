"""Fixtures shared by the API, index and search tests: a tiny SynthPed and tiny checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from duatm.config import config_to_dict, load_config
from duatm.data.synthped import write_synthped
from duatm.engine.builders import build_model
from duatm.engine.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

# A 16-d tiny DenseNet at 32x16 (S = 2 x 1 with drop_last_pool): milliseconds per image.
TINY_MODEL = [
    "model.backbone=densenet_tiny",
    "model.pretrained=null",
    "model.dim=16",
    "model.drop_last_pool=true",
    "data.height=32",
    "data.width=16",
    "data.num_workers=0",
    "data.test_batch_size=7",
    "device=cpu",
]


def write_tiny_checkpoint(
    path: Path, data_root: Path, *, seed: int = 0, overrides: tuple[str, ...] = ()
) -> Path:
    """A checkpoint with random weights (seeded), as the trainer would write one.

    The BatchNorm running statistics are randomised too, so that eval mode differs from the
    identity and two seeds give two different models."""
    cfg = load_config(None, [*TINY_MODEL, f"data.root={data_root}", *overrides])
    torch.manual_seed(seed)
    model = build_model(cfg, num_classes=6, load_pretrained=False)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.normal_(0.0, 0.1)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 1.5)
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": config_to_dict(cfg),
        "num_classes": 6,
        "epoch": 3,
        "model": model.state_dict(),
    }
    save_checkpoint(path, state)
    return path


@pytest.fixture(scope="session")
def tiny_synthped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SynthPed with 8 identities at 32x16 (Market-1501 layout)."""
    root = tmp_path_factory.mktemp("tiny_synthped")
    return write_synthped(root / "data", num_ids=8, num_cameras=2, height=32, width=16)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_synthped: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt", tiny_synthped)


@pytest.fixture(scope="session")
def other_checkpoint(tiny_synthped: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture as ``tiny_checkpoint`` with other weights."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "other.pt", tiny_synthped, seed=1)


@pytest.fixture(scope="session")
def checkpoint_of_mode(tiny_synthped: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny checkpoint for each matcher mode, made on first use."""
    folder = tmp_path_factory.mktemp("modes")

    def make(mode: str) -> Path:
        path = folder / f"{mode}.pt"
        if not path.exists():
            write_tiny_checkpoint(path, tiny_synthped, overrides=(f"model.mode={mode}",))
        return path

    return make


# A training run of seconds on tiny_synthped: two 2-iteration epochs by default.
TINY_TRAIN = [
    *TINY_MODEL,
    "data.num_identities=3",
    "data.num_instances=2",
    "data.pad=2",
    "schedule.epochs=2",
    "schedule.freeze_backbone_epochs=0",
    "schedule.iters_per_epoch=2",
    "eval.every=1",
    "eval.max_rank=5",
    "log_every=1",
    "data.val_identities=0",  # the synthped config holds 10 out; these trees have 4 to train on
]


@pytest.fixture(scope="session")
def train_argv(tiny_synthped: Path) -> Callable[..., list[str]]:
    """``duatm train`` arguments of a tiny run into ``out``, with ``extra`` overrides."""

    def argv(out: Path, *extra: str, options: Sequence[str] = ()) -> list[str]:
        return [
            "train",
            "--config",
            "synthped",
            "--data-root",
            str(tiny_synthped),
            "--out",
            str(out),
            "--no-progress",
            *options,
            "--set",
            *TINY_TRAIN,
            *extra,
        ]

    return argv
