"""Video through the engine: loaders of clips, extraction (packed in the all mode), the
bucketed variable-length distance matrix, and training steps on clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from duatm.cli import main
from duatm.config import ConfigError, DuATMConfig, load_config
from duatm.data.clips import evaluation_clip_sampler
from duatm.data.datasets import MARS
from duatm.data.records import TrackletRecord
from duatm.data.synthped_video import write_video_synthped
from duatm.data.transforms import build_test_transform
from duatm.data.video_dataset import VideoDataset, collate_clips
from duatm.engine.checkpoint import LAST_CHECKPOINT
from duatm.engine.evaluator import (
    ExtractedSequences,
    distance_matrix,
    evaluate,
    extract,
    length_buckets,
)
from duatm.engine.trainer import Trainer
from duatm.models.duatm import DuATM

H, W = 32, 16  # densenet_tiny with drop_last_pool runs on 32 x 16 frames


def write_tracklet(folder: Path, num_frames: int, seed: int) -> tuple[str, ...]:
    """Frames of random colour blocks (PNG, lossless)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(num_frames):
        path = folder / f"F{k:03d}.png"
        pixels = rng.integers(0, 256, (H // 4, W // 4, 3), dtype=np.uint8)
        Image.fromarray(pixels.repeat(4, 0).repeat(4, 1)).save(path)
        paths.append(str(path))
    return tuple(paths)


@pytest.fixture(scope="module")
def tracklets(tmp_path_factory: pytest.TempPathFactory) -> list[TrackletRecord]:
    root = tmp_path_factory.mktemp("tracklets")
    lengths = [5, 1, 4, 12, 3, 6, 2, 7]  # several length buckets, a one-frame tracklet
    return [
        TrackletRecord(write_tracklet(root / f"t{k}", n, k), pid=k // 2, camid=k % 2)
        for k, n in enumerate(lengths)
    ]


@pytest.fixture(scope="module")
def video_model() -> DuATM:
    torch.manual_seed(0)
    model = DuATM("densenet_tiny", 8, num_classes=4, kind="video", drop_last_pool=True).eval()
    for name, buffer in model.named_buffers():  # eval-mode BN that is not the identity
        if name.endswith("running_var"):
            buffer.uniform_(0.5, 1.5)
    return model


def test_all_mode_extraction_packs_every_frame_of_every_tracklet(tracklets, video_model):
    dataset = VideoDataset(
        tracklets, build_test_transform(H, W), evaluation_clip_sampler("all", 64)
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate_clips)
    for flip in (False, True):
        got = extract(video_model, loader, torch.device("cpu"), flip=flip, progress=False)
        assert got.lengths is not None
        assert got.lengths.tolist() == [len(t.paths) for t in tracklets]
        assert got.sequences.shape == (sum(got.lengths.tolist()), 8)
        offsets = np.cumsum([0, *got.lengths.tolist()])
        for k in range(len(tracklets)):
            alone = video_model.extract_sequences(dataset[k]["clip"][None], flip=flip)[0]
            torch.testing.assert_close(got.sequences[offsets[k] : offsets[k + 1]], alone)
        assert got.pids.tolist() == [t.pid for t in tracklets]


@pytest.mark.parametrize("mode", ["dual", "inter", "avgpool"])
def test_all_mode_distance_matrix_equals_each_pair_unpadded(tracklets, mode):
    torch.manual_seed(1)
    model = DuATM("densenet_tiny", 8, num_classes=4, kind="video", mode=mode).eval()
    lengths = torch.tensor([len(t.paths) for t in tracklets])
    sequences = [torch.nn.functional.normalize(torch.randn(int(n), 8), dim=-1) for n in lengths]
    packed = ExtractedSequences(
        torch.cat(sequences), torch.zeros(len(lengths)), torch.zeros(len(lengths)), lengths
    )
    query = ExtractedSequences(
        torch.cat(sequences[:3]), torch.zeros(3), torch.zeros(3), lengths[:3]
    )
    got = distance_matrix(model.matcher, query, packed, tile_mb=1)
    with torch.no_grad():
        for i in range(3):
            for j in range(len(lengths)):
                expected = model.matcher(sequences[i][None], sequences[j][None])[0]
                # Self-pairs cancel to float32 rounding noise before the square root.
                atol = 2e-3 if i == j else 1e-5
                torch.testing.assert_close(got[i, j], expected, atol=atol, rtol=0)


def test_length_buckets_cover_every_item_once_with_bounded_padding():
    lengths = torch.tensor([1, 64, 33, 32, 5, 920, 17, 2, 470, 64])
    sequences = torch.randn(int(lengths.sum()), 4)
    buckets = length_buckets(
        ExtractedSequences(sequences, torch.zeros(10), torch.zeros(10), lengths)
    )
    seen = torch.cat([index for index, _, _ in buckets]).sort().values
    assert seen.tolist() == list(range(10))
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    for index, padded, bucket_lengths in buckets:
        assert padded.shape[1] == int(bucket_lengths.max()) <= 2 * int(bucket_lengths.min())
        for row, item in enumerate(index.tolist()):
            n = int(lengths[item])
            torch.testing.assert_close(
                padded[row, :n], sequences[offsets[item] : offsets[item + 1]]
            )
            assert torch.all(padded[row, n:] == 0)


# ----------------------------------------------------------------- training and the CLI on video
VIDEO_TINY = [
    "model.kind=video",
    "model.backbone=densenet_tiny",
    "model.pretrained=null",
    "model.dim=16",
    "model.drop_last_pool=true",
    "data.dataset=mars",
    "data.height=32",
    "data.width=16",
    "data.num_identities=2",
    "data.num_instances=2",
    "data.num_workers=0",
    "data.pad=2",
    "data.clip_len=4",
    "data.test_clip_len=6",
    "data.test_batch_size=5",
    "schedule.epochs=2",
    "schedule.freeze_backbone_epochs=1",
    "schedule.lr_decay_epoch=1",
    "schedule.iters_per_epoch=2",
    "eval.every=0",
    "eval.max_rank=5",
    "log_every=1",
    "device=cpu",
]


@pytest.fixture(scope="module")
def video_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video_synthped(
        tmp_path_factory.mktemp("vsynth") / "data",
        num_ids=6,
        num_cameras=2,
        height=32,
        width=16,
        min_frames=2,
        max_frames=9,
        num_distractors=1,
        num_junk=0,
    )


@pytest.mark.slow
def test_video_training_resumes_exactly(video_root: Path, tmp_path: Path) -> None:
    dataset = MARS(video_root, verbose=False)

    def config(out: str) -> DuATMConfig:
        return load_config(
            None, [*VIDEO_TINY, f"data.root={video_root}", f"out_dir={tmp_path / out}"]
        )

    whole = Trainer(config("whole"), dataset=dataset, progress=False)
    whole_metrics = whole.fit()
    assert whole_metrics is not None
    first = Trainer(config("split"), dataset=dataset, progress=False)
    assert first.fit(stop_after=1) is None
    resumed = Trainer(
        config("split"),
        dataset=dataset,
        resume_from=tmp_path / "split" / LAST_CHECKPOINT,
        progress=False,
    )
    resumed_metrics = resumed.fit()
    assert resumed_metrics is not None
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert resumed_metrics.mAP == whole_metrics.mAP


@pytest.mark.slow
def test_cli_trains_and_evaluates_a_video_checkpoint_with_flip_and_all_frames(
    video_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["--data-root", str(video_root), "--out", str(out), "--no-progress"]
    assert main(["train", "--config", "mars", *args, "--set", *VIDEO_TINY]) == 0
    trained = json.loads((out / "results.json").read_text())
    checkpoint = out / LAST_CHECKPOINT
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--no-progress"]) == 0
    evaluated = json.loads(checkpoint.with_suffix(".results.json").read_text())
    assert evaluated["mAP"] == pytest.approx(trained["mAP"], abs=1e-12)
    every_frame = tmp_path / "all.json"
    evaluate = ["evaluate", "--checkpoint", str(checkpoint), "--no-progress", "--flip"]
    assert main([*evaluate, "--results", str(every_frame), "--set", "data.test_clip_mode=all"]) == 0
    results = json.loads(every_frame.read_text())
    assert results["flip"] is True and 0 <= results["mAP"] <= 1
    # Tracklets of every frame differ in length; the diagnostics are still there.
    diagnosed = results["diagnostics"]
    assert 0 < diagnosed["inter_entropy"] <= diagnosed["uniform_entropy"] + 1e-6
    assert -1 <= diagnosed["rank_corr_meanvec"] <= 1
    capsys.readouterr()
    # An image dataset for a video checkpoint: one line naming the key, exit status 2.
    assert main([*evaluate, "--set", "data.dataset=market1501"]) == 2
    assert 'model.kind must be "image" for dataset market1501' in capsys.readouterr().err


def test_all_mode_with_streamed_or_sharded_evaluation_is_refused_clearly(
    tracklets, video_model, tmp_path
):
    dataset = VideoDataset(
        tracklets, build_test_transform(H, W), evaluation_clip_sampler("all", 64)
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_clips)
    with pytest.raises(ConfigError, match=r'test_clip_mode "all".*one process'):
        evaluate(video_model, loader, loader, torch.device("cpu"), stream_to=tmp_path)


@pytest.mark.slow
def test_video_demo_compares_duatm_with_temporal_average_pooling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = [o for o in VIDEO_TINY if not o.startswith(("schedule.", "eval.", "data.dataset"))]
    overrides = [*tiny, "schedule.epochs=1", "schedule.iters_per_epoch=2", "eval.every=1"]
    args = ["demo", "--video", "--out", str(tmp_path), "--ids", "6", "--seeds", "0"]
    assert main([*args, "--no-progress", "--set", *overrides]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert [(r["key"], [run["seed"] for run in r["runs"]]) for r in saved["rows"]] == [
        ("dual", [0]),
        ("avgpool", [0]),
    ]
    assert saved["table"] in printed and "AvePool" in saved["table"]
    for mode in ("dual", "avgpool"):
        run = OmegaConf.load(tmp_path / f"{mode}-seed0" / "config.yaml")
        assert (run.model.kind, run.model.mode, run.data.dataset) == ("video", mode, "mars")
        assert run.data.test_clip_mode == "all"  # the demo matches whole tracklets
    assert (tmp_path / "synthped_video" / "info" / "query_IDX.mat").is_file()
