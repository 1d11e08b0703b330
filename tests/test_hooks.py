"""The trainer's hooks: the order of events, hook state in checkpoints, the evaluation schedule
and the selection of best.pt on a named metric."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from duatm.config import load_config
from duatm.data.datasets import Market1501
from duatm.data.synthped import write_synthped
from duatm.engine.checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    load_checkpoint,
    save_checkpoint,
)
from duatm.engine.hooks import Checkpointing, Evaluation, Hook
from duatm.engine.metrics_log import METRICS_JSONL, read_metrics
from duatm.engine.trainer import Trainer
from duatm.metrics import RankMetrics

TINY = [
    "model.backbone=densenet_tiny",
    "model.pretrained=null",
    "model.dim=16",
    "model.drop_last_pool=true",
    "data.height=32",
    "data.width=16",
    "data.num_identities=3",
    "data.num_instances=2",
    "data.num_workers=0",
    "data.pad=2",
    "schedule.epochs=3",
    "schedule.freeze_backbone_epochs=1",
    "schedule.lr_decay_epoch=2",
    "schedule.iters_per_epoch=2",
    "eval.every=0",
    "eval.max_rank=5",
    "log_every=1",
    "device=cpu",
]


class Recorder(Hook):
    """Records every event it sees and counts steps as checkpoint state."""

    state_key = "recorder"

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.steps_seen = 0

    def before_train(self, trainer: Trainer) -> None:
        self.events.append(("before_train", trainer.epoch))

    def before_epoch(self, trainer: Trainer) -> None:
        self.events.append(("before_epoch", trainer.epoch))

    def after_loss(self, trainer: Trainer, terms: Mapping[str, float]) -> None:
        self.events.append(("after_loss", trainer.step))

    def after_step(
        self, trainer: Trainer, batch: Mapping[str, Any], terms: Mapping[str, float]
    ) -> None:
        self.steps_seen += 1
        self.events.append(("after_step", trainer.step))

    def after_epoch(self, trainer: Trainer) -> None:
        self.events.append(("after_epoch", trainer.epoch))

    def after_train(self, trainer: Trainer) -> None:
        self.events.append(("after_train", trainer.epoch))

    def state_dict(self) -> dict[str, int]:
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.steps_seen = state["steps_seen"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Market1501:
    root = tmp_path_factory.mktemp("synthped")
    data = write_synthped(root / "data", num_ids=12, num_cameras=3, height=32, width=16)
    return Market1501(data, verbose=False)


def tiny_trainer(dataset: Market1501, out: Path, *extra: str, **kwargs: Any) -> Trainer:
    cfg = load_config(None, [*TINY, f"data.root={dataset.root}", f"out_dir={out}", *extra])
    return Trainer(cfg, dataset=dataset, progress=False, **kwargs)


def test_hooks_see_events_in_order_and_their_state_survives_a_resume(
    dataset: Market1501, tmp_path: Path
) -> None:
    trainer = tiny_trainer(dataset, tmp_path)
    recorder = Recorder()
    trainer.hooks.append(recorder)
    trainer.fit(stop_after=1)
    assert recorder.events == [
        ("before_train", 0),
        ("before_epoch", 0),
        ("after_loss", 0),  # before the step is counted: nothing has changed yet
        ("after_step", 1),
        ("after_loss", 1),
        ("after_step", 2),
        ("after_epoch", 1),  # the epoch is counted when after_epoch runs
        ("after_train", 1),
    ]
    saved = load_checkpoint(tmp_path / LAST_CHECKPOINT)
    assert saved["recorder"] == {"steps_seen": 2}

    # A hook added after the trainer was built still gets its state back when fit starts.
    resumed = tiny_trainer(dataset, tmp_path, resume_from=tmp_path / LAST_CHECKPOINT)
    again = Recorder()
    resumed.hooks.append(again)
    resumed.fit(stop_after=2)
    assert again.steps_seen == 2 + 2
    assert again.events[0] == ("before_train", 1)


def test_a_hook_state_key_may_not_replace_the_trainers_own(
    dataset: Market1501, tmp_path: Path
) -> None:
    trainer = tiny_trainer(dataset, tmp_path)
    clash = Recorder()
    clash.state_key = "model"
    trainer.hooks.append(clash)
    with pytest.raises(ValueError, match="state_key 'model' is the trainer's own"):
        trainer.state_dict()


def test_evaluation_runs_every_n_epochs_and_after_the_last() -> None:
    hook = Evaluation(lambda trainer: None, every=4, last_epoch=10)  # type: ignore[arg-type,return-value]
    assert [e for e in range(1, 11) if hook.due(e)] == [4, 8, 10]
    only_last = Evaluation(lambda trainer: None, every=0, last_epoch=3)  # type: ignore[arg-type,return-value]
    assert [e for e in range(1, 4) if only_last.due(e)] == [3]


def test_best_checkpoint_is_selected_on_the_named_metric_of_the_named_split(
    dataset: Market1501, tmp_path: Path
) -> None:
    """best.pt follows a second ("validation") split's R1, not the test split's mAP."""
    trainer = tiny_trainer(dataset, tmp_path)  # the test split: evaluated after epoch 3 only
    # R1 of the stand-in validation split: 0.2, 0.5, 0.4 after epochs 1, 2, 3.
    r1_by_epoch = {1: 0.2, 2: 0.5, 3: 0.4}

    def validation_metrics(t: Trainer) -> tuple[RankMetrics, dict[str, float]]:
        r1 = r1_by_epoch[t.epoch]
        return RankMetrics(np.array([r1, 1.0]), 0.1, 0.1, 4), {"extra_diagnostic": 7.0}

    validation = Evaluation(
        validation_metrics, every=1, last_epoch=3, kind="val", title="validation"
    )
    checkpointing = next(h for h in trainer.hooks if isinstance(h, Checkpointing))
    checkpointing.selection, checkpointing.metric = validation, "R1"
    trainer.hooks.insert(trainer.hooks.index(trainer.evaluation) + 1, validation)
    trainer.fit()

    best = load_checkpoint(tmp_path / BEST_CHECKPOINT)
    assert best["epoch"] == 2 and best["best"] == {"R1": 0.5, "epoch": 2}
    assert load_checkpoint(tmp_path / LAST_CHECKPOINT)["best"] == {"R1": 0.5, "epoch": 2}
    records = read_metrics(tmp_path / METRICS_JSONL)
    val = [r for r in records if r["kind"] == "val"]
    assert [(r["epoch"], r["R1"], r["extra_diagnostic"]) for r in val] == [
        (1, 0.2, 7.0),
        (2, 0.5, 7.0),
        (3, 0.4, 7.0),
    ]
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [3]


def test_checkpoints_from_before_distributed_training_resume_as_one_process(
    dataset: Market1501, tmp_path: Path
) -> None:
    tiny_trainer(dataset, tmp_path / "run").fit(stop_after=1)
    state = load_checkpoint(tmp_path / "run" / LAST_CHECKPOINT)
    assert state.pop("world_size") == 1
    save_checkpoint(tmp_path / "old.pt", state)  # as written before the key existed
    resumed = tiny_trainer(dataset, tmp_path / "resumed", resume_from=tmp_path / "old.pt")
    assert (resumed.epoch, resumed.step) == (1, 2)
