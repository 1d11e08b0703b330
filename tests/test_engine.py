"""End to end on a tiny SynthPed: training, evaluation, checkpoints, exact resume, the CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from duatm.cli import main
from duatm.config import ConfigError, DuATMConfig, load_config
from duatm.data.datasets import Market1501
from duatm.data.image_dataset import ImageDataset
from duatm.data.records import ImageRecord
from duatm.data.synthped import write_synthped
from duatm.data.transforms import build_test_transform
from duatm.engine.builders import resolve_device
from duatm.engine.checkpoint import LAST_CHECKPOINT, load_checkpoint
from duatm.engine.commands import run_guarded
from duatm.engine.demo import DEMO_JSON, demo_report, run_demo
from duatm.engine.diagnostics import REPORTED_DIAGNOSTICS
from duatm.engine.evaluator import query_gallery_index
from duatm.engine.metrics_log import METRICS_JSONL, read_metrics
from duatm.engine.trainer import Trainer, TrainingDiverged, backbone_frozen, learning_rate
from duatm.losses import DuATMLoss, LossOutput
from duatm.metrics import rank_metrics

# Small enough for seconds per run: 12 identities (6 train), 32x16 input, a 16-d tiny DenseNet.
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
    "data.test_batch_size=64",
    "schedule.epochs=3",
    "schedule.freeze_backbone_epochs=1",
    "schedule.lr_decay_epoch=2",
    "schedule.iters_per_epoch=3",
    "eval.every=2",
    "eval.max_rank=10",
    "log_every=1",
    "device=cpu",
    "data.val_identities=0",  # the synthped config holds 10 out; these trees have 4 to train on
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthped")
    return write_synthped(root / "data", num_ids=12, num_cameras=3, height=32, width=16)


@pytest.fixture(scope="module")
def dataset(data_root: Path) -> Market1501:
    return Market1501(data_root, verbose=False)


def tiny_config(data_root: Path, out: Path, *extra: str) -> DuATMConfig:
    return load_config(None, [*TINY, f"data.root={data_root}", f"out_dir={out}", *extra])


def state_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_schedule_follows_the_config() -> None:
    cfg = load_config(None, ["schedule.freeze_backbone_epochs=2", "schedule.lr_decay_epoch=3"])
    assert [backbone_frozen(cfg, e) for e in range(4)] == [True, True, False, False]
    assert [learning_rate(cfg, e) for e in range(4)] == pytest.approx([0.01, 0.01, 0.01, 0.001])


def test_resumed_run_ends_with_the_same_weights(
    data_root: Path, dataset: Market1501, tmp_path: Path
) -> None:
    whole = Trainer(tiny_config(data_root, tmp_path / "whole"), dataset=dataset, progress=False)
    whole_metrics = whole.fit()
    assert whole_metrics is not None

    cfg = tiny_config(data_root, tmp_path / "split")
    first = Trainer(cfg, dataset=dataset, progress=False)
    assert first.fit(stop_after=2) is None
    saved = load_checkpoint(tmp_path / "split" / LAST_CHECKPOINT)
    assert saved["epoch"] == 2 and saved["sampler"] == {"seed": 0, "epoch": 1}
    after_two = tmp_path / "after_two.pt"
    shutil.copy(tmp_path / "split" / LAST_CHECKPOINT, after_two)
    step_after_two = first.step
    # Epoch 3 runs and is logged, then is lost: the run resumes from the epoch-2 checkpoint.
    first.fit()

    # Continuing from the epoch-2 copy replaces the folder's later last.pt: asked for explicitly.
    resumed = Trainer(cfg, dataset=dataset, resume_from=after_two, overwrite=True, progress=False)
    assert resumed.epoch == 2 and resumed.step == step_after_two
    resumed_metrics = resumed.fit()
    assert resumed_metrics is not None

    expected, got = state_of(whole), state_of(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert resumed_metrics.mAP == whole_metrics.mAP
    assert (resumed_metrics.cmc == whole_metrics.cmc).all()

    # The lost epoch's records were dropped on resume: the log is the uninterrupted run's.
    def history(run: Path) -> list[tuple]:
        return [
            (r["kind"], r["step"], r["epoch"], r.get("total"), r.get("mAP"))
            for r in read_metrics(run / METRICS_JSONL)
        ]

    assert history(tmp_path / "split") == history(tmp_path / "whole")


def test_training_writes_the_run_folder(
    data_root: Path, dataset: Market1501, tmp_path: Path
) -> None:
    cfg = tiny_config(
        data_root,
        tmp_path,
        "schedule.epochs=4",
        "schedule.freeze_backbone_epochs=0",
    )
    trainer = Trainer(cfg, dataset=dataset, progress=False)
    trainer.fit()
    for name in ("config.yaml", "last.pt", "metrics.jsonl", "metrics.csv", "curves.png"):
        assert (tmp_path / name).is_file(), name
    # No validation split: nothing may select a "best" checkpoint (never on the test set).
    assert not (tmp_path / "best.pt").exists()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]  # 1-based, like the eval records
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 4 * 3  # log_every=1: one record per iteration
    assert {"total", "triplet", "decorrelation", "cross_entropy", "lr"} <= train[0].keys()
    assert [r["lr"] for r in train[::3]] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [2, 4]  # every 2 epochs, and after the last
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mAP"] == pytest.approx(evals[-1]["mAP"])
    assert 0.0 <= results["mAP"] <= 1.0 and len(results["cmc"]) == 10
    assert results["selected_on"] is None and "selected" not in results
    # Per-query values for paired comparisons: their mean is the mAP.
    aps = [ap for ap in results["query_ap"] if ap is not None]
    assert len(aps) == results["num_valid_queries"]
    assert sum(aps) / len(aps) == pytest.approx(results["mAP"])
    # The diagnostics are in every evaluation record and in the results.
    assert results["diagnostics"] == {name: evals[-1][name] for name in REPORTED_DIAGNOSTICS}
    length = trainer.model.eval()(torch.zeros(1, 3, 32, 16)).shape[1]
    assert results["diagnostics"]["uniform_entropy"] == pytest.approx(math.log(length))


def test_validation_split_selects_best_and_the_test_set_is_evaluated_once(
    data_root: Path, dataset: Market1501, tmp_path: Path
) -> None:
    cfg = tiny_config(data_root, tmp_path, "schedule.epochs=4", "data.val_identities=2")
    trainer = Trainer(cfg, dataset=dataset, progress=False)
    assert trainer.num_classes == dataset.num_train_pids - 2
    held_out = {r.path for r in trainer.validation.query + trainer.validation.gallery}
    assert held_out and not held_out & {r.path for r in trainer.train_records}
    trainer.fit()
    records = read_metrics(tmp_path / METRICS_JSONL)
    assert [r["epoch"] for r in records if r["kind"] == "val"] == [2, 4]
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [4]  # test: once, at the end
    val = {r["epoch"]: r["mAP"] for r in records if r["kind"] == "val"}
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["best"]["mAP"] == max(val.values())
    assert val[best["epoch"]] == max(val.values())
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["selected_on"] == "validation mAP"
    assert results["validation"]["mAP"] == pytest.approx(val[4])
    assert results["selected"]["epoch"] == best["epoch"]
    # The selected checkpoint's test numbers, evaluated independently here.
    elsewhere = tiny_config(data_root, tmp_path / "elsewhere", "data.val_identities=2")
    best_model = Trainer(
        elsewhere, dataset=dataset, resume_from=tmp_path / "best.pt", progress=False
    )
    metrics, _ = best_model.evaluate_test()
    assert results["selected"]["test"]["mAP"] == pytest.approx(metrics.mAP)


def test_frozen_backbone_does_not_change(
    data_root: Path, dataset: Market1501, tmp_path: Path
) -> None:
    trainer = Trainer(tiny_config(data_root, tmp_path), dataset=dataset, progress=False)
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    head_before = trainer.model.extractor.embed.weight.clone()
    trainer.fit(stop_after=1)  # epoch 0 is frozen
    after = trainer.model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats included
    assert not torch.equal(head_before, trainer.model.extractor.embed.weight)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    data_root: Path, dataset: Market1501, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = Trainer(tiny_config(data_root, tmp_path), dataset=dataset, progress=False)
    trainer.fit(stop_after=1)
    good = (tmp_path / LAST_CHECKPOINT).read_bytes()

    def nan_loss(self: DuATMLoss, *args: object) -> LossOutput:
        nan = torch.tensor(float("nan"), requires_grad=True)
        return LossOutput(nan, nan, nan, nan)

    monkeypatch.setattr(DuATMLoss, "forward", nan_loss)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, iteration 1.*after"):
        trainer.fit()
    assert (tmp_path / LAST_CHECKPOINT).read_bytes() == good
    assert load_checkpoint(tmp_path / LAST_CHECKPOINT)["epoch"] == 1


def test_nan_weights_after_a_finite_loss_stop_before_evaluating_or_saving(
    data_root: Path, dataset: Market1501, tmp_path: Path
) -> None:
    trainer = Trainer(tiny_config(data_root, tmp_path), dataset=dataset, progress=False)
    trainer.fit(stop_after=1)
    good = (tmp_path / LAST_CHECKPOINT).read_bytes()
    real_step = trainer.optimizer.step
    steps = []

    def poisoning_step(*args: object, **kwargs: object) -> object:
        result = real_step(*args, **kwargs)
        steps.append(1)
        if len(steps) == trainer.iterations_per_epoch:  # the epoch's last step; losses were finite
            with torch.no_grad():
                trainer.model.classifier.bias.fill_(float("inf"))
        return result

    trainer.optimizer.step = poisoning_step  # type: ignore[method-assign]
    with pytest.raises(
        TrainingDiverged,
        match=r"weights became non-finite during epoch 2 .*classifier.bias.*after epoch 1",
    ):
        trainer.fit()
    assert (tmp_path / LAST_CHECKPOINT).read_bytes() == good


def test_cli_train_evaluate_and_resume(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["--data-root", str(data_root), "--out", str(out), "--no-progress", "--set", *TINY]
    assert main(["train", "--config", "synthped", *args, "schedule.epochs=2"]) == 0
    assert "final evaluation" in capsys.readouterr().out
    trained = json.loads((out / "results.json").read_text())

    checkpoint = out / LAST_CHECKPOINT
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "R1" in printed and "mAP" in printed
    evaluated = json.loads(checkpoint.with_suffix(".results.json").read_text())
    assert evaluated["mAP"] == pytest.approx(trained["mAP"], abs=1e-12)
    assert evaluated["cmc"] == pytest.approx(trained["cmc"], abs=1e-12)

    # More epochs on the same run folder: resumes after epoch 2 instead of starting over.
    assert main(["train", "--config", "synthped", *args, "schedule.epochs=3", "--resume"]) == 0
    captured = capsys.readouterr()
    assert "schedule.epochs: 2 -> 3" in captured.out
    assert load_checkpoint(checkpoint)["epoch"] == 3


def test_cli_reports_bad_checkpoints_clearly(
    data_root: Path, dataset: Market1501, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Trainer(tiny_config(data_root, tmp_path), dataset=dataset, progress=False).fit(stop_after=1)
    checkpoint = tmp_path / LAST_CHECKPOINT

    other = ["evaluate", "--checkpoint", str(checkpoint), "--no-progress", "--set"]
    assert main([*other, "model.dim=8"]) == 2
    err = capsys.readouterr().err
    assert "do not fit this DuATM" in err and "extractor.embed.weight" in err

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    assert main(["evaluate", "--checkpoint", str(truncated), "--no-progress"]) == 2
    assert "truncated or not a duatm checkpoint" in capsys.readouterr().err

    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_flip_augmentation_is_mirror_symmetric(
    data_root: Path, dataset: Market1501, tmp_path: Path
) -> None:
    trainer = Trainer(tiny_config(data_root, tmp_path), dataset=dataset, progress=False)
    model = trainer.model.eval()
    images = torch.randn(2, 3, 32, 16)
    seqs = model.extract_sequences(images, flip=True)
    mirrored = model.extract_sequences(images.flip(-1), flip=True)
    width = model.backbone(images).shape[-1]
    # Position (r, c) of an image is position (r, width - 1 - c) of its mirror image.
    unflipped = mirrored.unflatten(1, (-1, width)).flip(2).flatten(1, 2)
    torch.testing.assert_close(seqs, unflipped)
    assert torch.allclose(seqs.norm(dim=-1), torch.ones(2, seqs.shape[1]))
    assert not torch.allclose(seqs, model.extract_sequences(images))


def test_demo_trains_both_models_per_seed_and_reuses_finished_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = [o for o in TINY if not o.startswith("schedule.freeze")]
    overrides = [*tiny, "schedule.epochs=1", "schedule.lr_decay_epoch=1", "eval.every=1"]
    results = run_demo(tmp_path, overrides=overrides, seeds=(3, 4), num_ids=8, progress=False)
    assert {key: [r.seed for r in runs] for key, runs in results.items()} == {
        "dual": [3, 4],
        "avgpool": [3, 4],
    }
    saved = json.loads((tmp_path / DEMO_JSON).read_text())
    for row in saved["rows"]:
        for run in row["runs"]:
            run_dir = tmp_path / f"{row['key']}-seed{run['seed']}"
            on_disk = json.loads((run_dir / "results.json").read_text())
            assert (run["R1"], run["mAP"]) == (on_disk["R1"], on_disk["mAP"])
            assert OmegaConf.load(run_dir / "config.yaml").seed == run["seed"]
    # The seeds train differently.
    dual = results["dual"]
    assert dual[0].mAP != dual[1].mAP or dual[0].r1 != dual[1].r1
    assert saved["table"] == demo_report(results)
    # A second call finds every run finished and reports the same numbers without training.
    capsys.readouterr()
    again = run_demo(tmp_path, overrides=overrides, seeds=(3, 4), num_ids=8, progress=False)
    assert {k: [(r.r1, r.mAP) for r in v] for k, v in again.items()} == {
        k: [(r.r1, r.mAP) for r in v] for k, v in results.items()
    }
    assert capsys.readouterr().out.count("resuming from") == 4


def test_query_images_inside_the_gallery_are_found_by_path(tmp_path: Path) -> None:
    files = [tmp_path / f"{name}.jpg" for name in "abc"]
    for file in files:
        file.write_bytes(b"")
    (tmp_path / "link.jpg").symlink_to(files[2])
    gallery = SimpleNamespace(
        records=[ImageRecord(str(f), pid, 0) for f, pid in zip(files, (1, 1, 2), strict=True)]
    )
    query = SimpleNamespace(
        records=[
            ImageRecord(str(tmp_path / "link.jpg"), 2, 0),  # the same file by another name
            ImageRecord(str(tmp_path / "elsewhere.jpg"), 2, 0),
            ImageRecord(str(tmp_path / "sub" / ".." / "a.jpg"), 1, 0),
        ]
    )
    index = query_gallery_index(query, gallery)
    assert index is not None and index.tolist() == [2, -1, 0]
    disjoint = SimpleNamespace(records=[ImageRecord(str(tmp_path / "x.jpg"), 1, 0)])
    assert query_gallery_index(disjoint, gallery) is None
    assert query_gallery_index(SimpleNamespace(), gallery) is None  # no records to compare
    # What it prevents: with same-camera matches kept, a query would find itself first.
    dist = np.array([[0.5, 0.9, 0.0], [0.1, 0.2, 0.3], [0.0, 0.4, 0.8]])
    index_kept = rank_metrics(
        dist, [2, 2, 1], [1, 1, 2], [0, 0, 0], [0, 0, 0], max_rank=3, keep_same_camera=True
    )
    index_removed = rank_metrics(
        dist,
        [2, 2, 1],
        [1, 1, 2],
        [0, 0, 0],
        [0, 0, 0],
        max_rank=3,
        keep_same_camera=True,
        query_gallery_index=index,
    )
    # Kept: queries 0 and 2 find themselves first (R1 2/3). Removed: query 0 has no other
    # match and is skipped, query 1 misses, query 2 finds gallery 1 first (R1 1/2).
    assert index_kept.cmc[0] == pytest.approx(2 / 3)
    assert index_removed.cmc[0] == pytest.approx(1 / 2)


def test_errors_from_loader_workers_are_reported_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    images = ImageDataset([ImageRecord(str(broken), 0, 0)], build_test_transform(8, 4))

    def body() -> int:
        for _ in DataLoader(images, batch_size=1, num_workers=1):
            pass
        return 0

    assert run_guarded("evaluate", body) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"duatm evaluate: error: cannot read image {broken}: ")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="device='cuda': CUDA is not available"):
        resolve_device("cuda")


def test_demo_refuses_other_synthped_in_its_folder(tmp_path: Path) -> None:
    write_synthped(tmp_path / "synthped", num_ids=6, num_cameras=2, height=32, width=16)
    with pytest.raises(FileExistsError, match="remove it or choose another --out"):
        run_demo(tmp_path, num_ids=8, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_with_mixed_precision_runs_and_evaluates(
    data_root: Path, dataset: Market1501, tmp_path: Path
) -> None:
    cfg = tiny_config(data_root, tmp_path, "device=cuda", "amp=true")
    trainer = Trainer(cfg, dataset=dataset, progress=False)
    assert trainer.amp
    metrics = trainer.fit()
    assert metrics is not None and 0.0 <= metrics.mAP <= 1.0
    assert all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())
