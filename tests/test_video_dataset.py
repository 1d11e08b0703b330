"""Clip sampling, the tracklet Dataset, its collate function, and identity batches of tracklets."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from duatm.data.clips import ClipSampler, evaluation_clip_sampler
from duatm.data.records import ImageRecord, TrackletRecord
from duatm.data.samplers import IdentityBatchSampler
from duatm.data.transforms import (
    ImageReadError,
    build_test_transform,
    build_train_transform,
    read_image,
)
from duatm.data.video_dataset import VideoDataset, collate_clips

H, W = 16, 8


def write_tracklet(folder: Path, num_frames: int, tag: int) -> tuple[str, ...]:
    """Frames whose pixels say which tracklet (green) and which frame (red) they are."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(num_frames):
        path = folder / f"F{k:03d}.png"  # PNG: lossless, so pixel values identify frames
        Image.new("RGB", (W, H), (10 * k, 20 * tag, 7)).save(path)
        paths.append(str(path))
    return tuple(paths)


def frame_numbers(clip: torch.Tensor) -> list[int]:
    """Recover which frame of its tracklet every clip frame shows, from the red channel."""
    return [int(frame[0, 0, 0]) // 10 for frame in clip]


@pytest.fixture
def tracklets(tmp_path: Path) -> list[TrackletRecord]:
    lengths = {0: 20, 1: 5, 2: 1, 3: 9}
    return [
        TrackletRecord(write_tracklet(tmp_path / f"t{tag}", n, tag), pid=tag // 2, camid=tag % 2)
        for tag, n in lengths.items()
    ]


# --- ClipSampler ---------------------------------------------------------------------------


def test_first_and_middle_take_consecutive_frames() -> None:
    assert ClipSampler(4, "first")(10) == [0, 1, 2, 3]
    assert ClipSampler(4, "middle")(10) == [3, 4, 5, 6]
    assert ClipSampler(4, "middle")(11) == [3, 4, 5, 6]
    assert ClipSampler(10, "first")(10) == list(range(10))


def test_short_tracklets_are_read_circularly() -> None:
    assert ClipSampler(7, "first")(3) == [0, 1, 2, 0, 1, 2, 0]
    assert ClipSampler(7, "middle")(3) == [0, 1, 2, 0, 1, 2, 0]
    assert ClipSampler(4, "first")(1) == [0, 0, 0, 0]


def test_all_mode_gives_every_frame_in_order() -> None:
    sampler = evaluation_clip_sampler("all", 64)
    assert sampler(1) == [0]
    assert sampler(100) == list(range(100))
    assert not sampler.is_random
    assert evaluation_clip_sampler("clip", 64)(100) == list(range(64))


def test_random_start_covers_every_valid_start_uniformly() -> None:
    torch.manual_seed(0)
    sampler = ClipSampler(4, "random")
    starts = Counter()
    for _ in range(3000):
        clip = sampler(10)
        assert clip == list(range(clip[0], clip[0] + 4))  # consecutive, inside the tracklet
        starts[clip[0]] += 1
    assert sorted(starts) == list(range(7))  # starts 0..6 keep 4 frames inside 10
    assert min(starts.values()) > 3000 / 7 * 0.8


def test_random_start_on_a_short_tracklet_loops_from_any_frame() -> None:
    torch.manual_seed(0)
    sampler = ClipSampler(8, "random")
    starts = set()
    for _ in range(200):
        clip = sampler(3)
        starts.add(clip[0])
        assert clip == [(clip[0] + k) % 3 for k in range(8)]
    assert starts == {0, 1, 2}
    assert ClipSampler(8, "random")(1) == [0] * 8


def test_random_start_follows_the_torch_seed() -> None:
    sampler = ClipSampler(5, "random")
    torch.manual_seed(3)
    first = [sampler(50) for _ in range(10)]
    torch.manual_seed(3)
    assert [sampler(50) for _ in range(10)] == first


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ClipSampler(0), "clip length must be >= 1"),
        (lambda: ClipSampler(4, "last"), "clip start must be one of random, first, middle"),
        (lambda: ClipSampler(4)(0), "at least one frame"),
        (lambda: evaluation_clip_sampler("dense", 4), "test clip mode must be one of clip, all"),
        (lambda: evaluation_clip_sampler("clip", 4, "random"), "cannot start at random"),
    ],
)
def test_sampler_rejects_bad_arguments(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# --- VideoDataset --------------------------------------------------------------------------


def test_items_hold_the_sampled_frames_decoded_like_single_images(tracklets) -> None:
    transform = build_test_transform(H, W)
    dataset = VideoDataset(tracklets, transform, ClipSampler(6, "first"))
    assert len(dataset) == 4
    assert dataset.pids == [0, 0, 1, 1]
    assert dataset.camids == [0, 1, 0, 1]
    assert dataset.lengths == [20, 5, 1, 9]
    for index, record in enumerate(tracklets):
        item = dataset[index]
        assert set(item) == {"clip", "length", "pid", "camid", "index"}
        clip = item["clip"]
        assert clip.dtype == torch.uint8
        assert clip.shape == (6, 3, H, W)
        assert (item["length"], item["pid"], item["camid"], item["index"]) == (
            6,
            record.pid,
            record.camid,
            index,
        )
        expected = ClipSampler(6, "first")(len(record.paths))
        assert frame_numbers(clip) == expected
        for frame, k in zip(clip, expected, strict=True):
            single = transform(read_image(record.paths[k]))
            assert torch.equal(frame, single)


def test_all_mode_items_have_their_tracklet_length(tracklets) -> None:
    dataset = VideoDataset(
        tracklets, build_test_transform(H, W), evaluation_clip_sampler("all", 64)
    )
    for index, record in enumerate(tracklets):
        item = dataset[index]
        assert item["length"] == len(record.paths) == item["clip"].shape[0]
        assert frame_numbers(item["clip"]) == list(range(len(record.paths)))


def test_one_augmentation_for_every_frame_of_a_clip(tmp_path: Path) -> None:
    # Identical frames stay identical through the random crop, flip and erasing: the clip got
    # one set of parameters. Different draws across items show the augmentation is random.
    folder = tmp_path / "same"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    paths = []
    for k in range(5):
        Image.fromarray(pixels).save(folder / f"{k}.png")
        paths.append(str(folder / f"{k}.png"))
    transform = build_train_transform(H, W, pad=3, flip_prob=0.5, random_erasing=0.5)
    dataset = VideoDataset(
        [TrackletRecord(tuple(paths), 0, 0)], transform, ClipSampler(5, "random")
    )
    torch.manual_seed(0)
    clips = [dataset[0]["clip"] for _ in range(20)]
    for clip in clips:
        assert all(torch.equal(clip[0], frame) for frame in clip[1:])
    assert len({clip.numpy().tobytes() for clip in clips}) > 5


@pytest.mark.parametrize("sampler", [ClipSampler(6, "first"), evaluation_clip_sampler("all", 64)])
def test_cache_gives_the_same_clips_as_decoding(tracklets, sampler: ClipSampler) -> None:
    transform = build_test_transform(H, W)
    decoded = VideoDataset(tracklets, transform, sampler)
    cached = VideoDataset(tracklets, transform, sampler, cache=True)
    assert cached.frames is not None
    assert cached.frames.shape == (35, 3, H, W)
    for index in range(len(tracklets)):
        assert torch.equal(cached[index]["clip"], decoded[index]["clip"])


def test_cache_with_random_clips_matches_decoding_under_the_same_seed(tracklets) -> None:
    transform = build_train_transform(H, W, pad=2)
    decoded = VideoDataset(tracklets, transform, ClipSampler(6, "random"))
    cached = VideoDataset(tracklets, transform, ClipSampler(6, "random"), cache=True)
    for index in range(len(tracklets)):
        torch.manual_seed(index)
        a = decoded[index]["clip"]
        torch.manual_seed(index)
        assert torch.equal(cached[index]["clip"], a)


def test_broken_frame_raises_naming_it_or_is_skipped(tracklets, tmp_path: Path, caplog) -> None:
    broken = tmp_path / "t0" / "F003.png"
    broken.write_bytes(b"not a png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "F000.png").write_bytes(b"")
    records = [*tracklets, TrackletRecord((str(empty / "F000.png"),), pid=7, camid=0)]
    transform = build_test_transform(H, W)
    with pytest.raises(ImageReadError, match=r"F003\.png"):
        VideoDataset(records, transform, ClipSampler(20, "first"))[0]
    with pytest.raises(ImageReadError, match=r"F003\.png"):
        VideoDataset(records, transform, ClipSampler(20, "first"), cache=True)
    with caplog.at_level(logging.WARNING):
        dataset = VideoDataset(
            records, transform, ClipSampler(20, "first"), skip_broken=True, cache=True
        )
    assert "skipped 2 unreadable frame(s) of 36, dropping 1 tracklet(s)" in caplog.text
    assert [s.path for s in dataset.skipped] == [str(broken), str(empty / "F000.png")]
    assert dataset.lengths == [19, 5, 1, 9]
    assert dataset.pids == [0, 0, 1, 1]
    assert frame_numbers(dataset[0]["clip"]) == [0, 1, 2, *range(4, 20), 0]


def test_rejects_image_records_and_empty_tracklets() -> None:
    transform = build_test_transform(H, W)
    with pytest.raises(TypeError, match="item 0 is ImageRecord"):
        VideoDataset([ImageRecord("a.jpg", 0, 0)], transform, ClipSampler(4))  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"tracklet 0 \(pid 3\) has no frames"):
        VideoDataset([TrackletRecord((), 3, 0)], transform, ClipSampler(4))


# --- collate_clips -------------------------------------------------------------------------


def test_collate_pads_variable_lengths_with_zeros(tracklets) -> None:
    dataset = VideoDataset(
        tracklets, build_test_transform(H, W), evaluation_clip_sampler("all", 64)
    )
    items = [dataset[i] for i in range(len(dataset))]
    batch = collate_clips(items)
    assert batch["clip"].shape == (4, 20, 3, H, W)
    assert batch["clip"].dtype == torch.uint8
    assert batch["length"].tolist() == [20, 5, 1, 9]
    assert batch["length"].dtype == torch.int64
    assert batch["pid"].tolist() == [0, 0, 1, 1]
    assert batch["camid"].tolist() == [0, 1, 0, 1]
    assert batch["index"].tolist() == [0, 1, 2, 3]
    for b, item in enumerate(items):
        n = item["length"]
        assert torch.equal(batch["clip"][b, :n], item["clip"])
        assert not batch["clip"][b, n:].any()


def test_collate_of_fixed_length_clips_is_a_stack(tracklets) -> None:
    dataset = VideoDataset(tracklets, build_test_transform(H, W), ClipSampler(6))
    items = [dataset[i] for i in range(len(dataset))]
    batch = collate_clips(items)
    assert torch.equal(batch["clip"], torch.stack([item["clip"] for item in items]))
    assert batch["length"].tolist() == [6] * 4


def test_collate_rejects_inconsistent_lengths_and_empty_batches(tracklets) -> None:
    item = VideoDataset(tracklets, build_test_transform(H, W), ClipSampler(6))[0]
    with pytest.raises(ValueError, match="item 0: clip has 6 frames, length says 5"):
        collate_clips([{**item, "length": 5}])
    with pytest.raises(ValueError, match="at least one item"):
        collate_clips([])


# --- identity batches of tracklets ---------------------------------------------------------


def test_identity_batches_of_tracklets_repeat_exactly_for_the_same_seed(tmp_path: Path) -> None:
    # P x V batches over tracklet pids; the sampler order and the clip starts depend only on the
    # seeds, as the trainer's exact resume needs (it reseeds both per epoch).
    records = [
        TrackletRecord(write_tracklet(tmp_path / f"p{pid}_{t}", 12 + 3 * t, pid), pid, t % 2)
        for pid in range(5)
        for t in range(pid % 3 + 1)  # 1, 2 or 3 tracklets per identity
    ]
    dataset = VideoDataset(records, build_train_transform(H, W, pad=2), ClipSampler(4, "random"))
    sampler = IdentityBatchSampler(dataset.pids, num_identities=3, num_instances=3, seed=1)

    def epoch(e: int, num_workers: int) -> list[dict[str, torch.Tensor]]:
        sampler.set_epoch(e)
        torch.manual_seed(100 + e)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_clips,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(100 + e),
        )
        return list(loader)

    first = epoch(2, 0)
    assert len(first) == 2
    for batch in first:
        assert batch["clip"].shape == (9, 4, 3, H, W)
        assert sorted(Counter(batch["pid"].tolist()).values()) == [3, 3, 3]
    again = epoch(2, 0)
    other = epoch(3, 0)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["clip"], b["clip"])
        assert torch.equal(a["index"], b["index"])
    assert any(not torch.equal(a["clip"], b["clip"]) for a, b in zip(first, other, strict=True))
    # In worker processes the clips come from the workers' seeds, drawn from the loader's.
    in_workers = epoch(2, 2)
    for a, b in zip(in_workers, epoch(2, 2), strict=True):
        assert torch.equal(a["clip"], b["clip"])
