"""Video SynthPed: deterministic, read by the MARS parser, and carrying what video DuATM is for
(misaligned walking, interference frames, variable lengths including short tracklets)."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from duatm.data.clips import ClipSampler
from duatm.data.datasets import MARS
from duatm.data.synth_tree import MANIFEST_NAME
from duatm.data.synthped import add_synth_arguments, write_synthped
from duatm.data.synthped_video import write_video_synthped
from duatm.data.transforms import build_train_transform
from duatm.data.video_dataset import VideoDataset, collate_clips

TINY = {
    "num_ids": 4,
    "num_cameras": 2,
    "height": 32,
    "width": 16,
    "tracklets_per_camera": 2,
    "min_frames": 3,
    "max_frames": 20,
    "num_distractors": 2,
    "num_junk": 1,
}


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST_NAME).read_text())


def frames_of(root: Path, tracklet: dict) -> list[np.ndarray]:
    home = "bbox_train" if tracklet["split"] == "train" else "bbox_test"
    folder = root / home / tracklet["name"][:4]
    return [
        np.asarray(Image.open(folder / f"{tracklet['name']}F{k:03d}.jpg"), dtype=np.int16)
        for k in range(1, tracklet["frames"] + 1)
    ]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video_synthped(tmp_path_factory.mktemp("v") / "synth", workers=1, **TINY)


def test_same_arguments_give_byte_identical_files_whatever_the_workers(tree, tmp_path) -> None:
    again = write_video_synthped(tmp_path / "again", workers=2, **TINY)
    assert file_hashes(again) == file_hashes(tree)
    other = write_video_synthped(tmp_path / "other", workers=1, seed=1, **TINY)
    assert file_hashes(other) != file_hashes(tree)


def test_the_mars_parser_reads_the_tree_as_the_manifest_says(tree) -> None:
    m = manifest(tree)
    assert m["format"] == "synthped-video"
    dataset = MARS(tree, verbose=False)
    counts = m["counts"]
    assert len(dataset.train) == counts["train_tracklets"] == 2 * 2 * 2
    assert len(dataset.query) == counts["query_tracklets"] == 2 * 2
    # The gallery: the second tracklet of each test identity per camera, plus the distractors;
    # the junk tracklet is left out by the parser.
    assert counts["gallery_tracklets"] == 2 * 2 + 2 + 1
    assert len(dataset.gallery) == 2 * 2 + 2
    assert sorted({r.pid for r in dataset.gallery}) == [0, 3, 4]
    assert dataset.num_train_pids == 2
    by_split: dict[str, list[int]] = {"train": [], "query": [], "gallery": []}
    for t in m["tracklets"]:
        if t["pid"] != -1:
            by_split[t["split"]].append(t["frames"])
    for split in by_split:
        records = getattr(dataset, split)
        assert sorted(len(r.paths) for r in records) == sorted(by_split[split])
    for query in dataset.query:  # every query has a true match seen by another camera
        assert any(g.pid == query.pid and g.camid != query.camid for g in dataset.gallery)


def test_lengths_vary_and_include_tracklets_shorter_than_a_clip(tree) -> None:
    lengths = [t["frames"] for t in manifest(tree)["tracklets"]]
    assert min(lengths) >= 3 and max(lengths) <= 20
    assert any(n < 16 for n in lengths) and any(n >= 16 for n in lengths)
    assert len(set(lengths)) > len(lengths) // 3
    assert manifest(tree)["counts"]["short_tracklets"] == sum(n < 16 for n in lengths)


def test_interference_changes_exactly_its_frames(tmp_path) -> None:
    # With interference in every tracklet or in none, everything else about a tracklet is drawn
    # the same: frames outside the event are byte-identical, frames inside it differ.
    size = {**TINY, "height": 64, "width": 32, "num_distractors": 0, "num_junk": 0}
    always = write_video_synthped(tmp_path / "always", interference_prob=1.0, **size)
    never = write_video_synthped(tmp_path / "never", interference_prob=0.0, **size)
    kinds = set()
    for tracklet in manifest(always)["tracklets"]:
        event = tracklet["interference"]
        kinds.add(event["kind"])
        first, last = event["frames"]
        assert 1 <= first <= last <= tracklet["frames"]
        assert 1 <= last - first + 1 <= 5
        for k, (a, b) in enumerate(
            zip(frames_of(always, tracklet), frames_of(never, tracklet), strict=True), start=1
        ):
            if first <= k <= last:
                assert np.abs(a - b).mean() > 2.0, (tracklet["name"], k)
            else:
                assert np.array_equal(a, b), (tracklet["name"], k)
    assert kinds == {"person", "occluder"}
    assert all(t["interference"] is None for t in manifest(never)["tracklets"])


def test_tracklets_walk_out_of_phase(tmp_path) -> None:
    # Without camera nuisance a person looks the same in every frame but for the walking pose:
    # frames change within a tracklet, and two tracklets of one person start in other poses.
    clean = write_video_synthped(tmp_path / "clean", nuisance=False, **TINY)
    tracklets = [t for t in manifest(clean)["tracklets"] if t["pid"] == 1 and t["camera"] == 1]
    assert len(tracklets) == 2
    assert tracklets[0]["phase"] != tracklets[1]["phase"]
    first_frames = []
    for tracklet in tracklets:
        frames = frames_of(clean, tracklet)
        assert max(np.abs(frames[0] - f).mean() for f in frames[1:]) > 1.0  # it moves
        first_frames.append(frames[0])
    assert np.abs(first_frames[0] - first_frames[1]).mean() > 0.5


def test_tracklets_feed_the_video_dataset(tree) -> None:
    dataset = MARS(tree, verbose=False)
    videos = VideoDataset(
        dataset.train, build_train_transform(32, 16, pad=2), ClipSampler(16, "random")
    )
    batch = collate_clips([videos[i] for i in range(len(videos))])
    assert batch["clip"].shape == (8, 16, 3, 32, 16)
    assert batch["length"].tolist() == [16] * 8


def test_existing_tree_is_kept_refused_or_replaced(tree, tmp_path) -> None:
    before = file_hashes(tree)
    assert write_video_synthped(tree, **TINY) == tree  # same arguments: kept
    assert file_hashes(tree) == before
    with pytest.raises(FileExistsError, match="overwrite"):
        write_video_synthped(tree, seed=3, **TINY)
    assert file_hashes(tree) == before
    # An image SynthPed is another tree: replaced only when asked.
    images = write_synthped(
        tmp_path / "images", num_ids=4, num_cameras=2, height=32, width=16,
        images_per_id_per_camera=2,
    )  # fmt: skip
    with pytest.raises(FileExistsError, match="overwrite"):
        write_video_synthped(images, **TINY)
    write_video_synthped(images, overwrite=True, **TINY)
    assert manifest(images)["format"] == "synthped-video"
    assert file_hashes(images) == file_hashes(tree)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_cameras": 7}, r"num_cameras=7, expected 2\.\.6"),
        ({"max_frames": 1000}, r"max_frames=1000, expected min_frames=3\.\.999"),
        ({"min_frames": 0}, r"min_frames=0, expected 1\.\.999"),
        ({"max_frames": 2}, r"max_frames=2, expected min_frames=3"),
        ({"interference_prob": 1.5}, r"interference_prob=1\.5, expected a probability"),
        ({"tracklets_per_camera": 0}, r"tracklets_per_camera=0, expected at least 1"),
    ],
)
def test_bad_arguments_are_named(tmp_path, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_video_synthped(tmp_path / "x", **{**TINY, **change})
    assert not (tmp_path / "x").exists()


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_writes_video_and_prints_a_summary(tree, tmp_path, capsys) -> None:
    argv = ["--video", "--out", str(tmp_path / "s"), "--ids", "4", "--cameras", "2"]
    argv += ["--height", "32", "--width", "16", "--tracklets-per-camera", "2", "--min-frames"]
    argv += ["3", "--max-frames", "20", "--distractors", "2", "--junk", "1", "--workers", "1"]
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"video SynthPed -> {tmp_path / 's'}: 4 ids (2 train / 2 test)")
    assert "tracklets: train 8, query 4, gallery 7" in out
    assert file_hashes(tmp_path / "s") == file_hashes(tree)


def test_cli_refuses_options_of_the_other_kind(tmp_path, capsys) -> None:
    assert run_cli(["--video", "--out", str(tmp_path / "s"), "--images-per-camera", "3"]) == 2
    assert "--images-per-camera: only for image SynthPed" in capsys.readouterr().err
    assert run_cli(["--out", str(tmp_path / "s"), "--min-frames", "3"]) == 2
    assert "--min-frames: only for video SynthPed (--video)" in capsys.readouterr().err
    assert run_cli(["--video", "--out", str(tmp_path / "s"), "--cameras", "9"]) == 2
    assert "num_cameras=9, expected 2..6" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
