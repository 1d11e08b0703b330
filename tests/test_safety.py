"""Nothing lost, nothing silently wrong: one test (at least) per case of issue 9.

Run-folder safety, OS errors, unusual images and protocol edge cases. The command-line corpus of
bad inputs (exit code, one line, files untouched) is tests/test_cli_errors.py.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import duatm
from conftest import TINY_TRAIN
from duatm.cli import main
from duatm.config import load_config
from duatm.data.datasets import ImageFolderDataset, Market1501
from duatm.data.datasets.base import list_folder
from duatm.data.records import ImageRecord
from duatm.data.synthped import MANIFEST_NAME, write_synthped
from duatm.data.synthped_video import write_video_synthped
from duatm.data.transforms import read_image
from duatm.engine.checkpoint import (
    LAST_CHECKPOINT,
    CheckpointError,
    blocked_globals,
    load_checkpoint,
    save_checkpoint,
)
from duatm.engine.evaluator import byte_identical_copies, find_own_images
from duatm.engine.hooks import Hook
from duatm.engine.run_folder import RUN_FILES, RunFolderError, RunFolderLock, clear_run_files
from duatm.engine.trainer import Trainer
from duatm.metrics import (
    NoValidQueryError,
    SkippedQueries,
    check_valid_queries,
    count_valid_queries,
    format_rank_report,
    protocol_notes,
    rank_metrics,
    rank_metrics_to_dict,
)


def write_image(path: Path, color: tuple[int, int, int] = (200, 100, 50)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), color).save(path)


def small_market(root: Path) -> Path:
    for folder, names in {
        "bounding_box_train": ["0001_c1s1_000001_00.jpg", "0001_c2s1_000002_00.jpg"],
        "query": ["0002_c1s1_000001_00.jpg"],
        "bounding_box_test": ["0002_c2s1_000002_00.jpg", "0000_c1s1_000003_00.jpg"],
    }.items():
        for name in names:
            write_image(root / folder / name)
    return root


# -- case 6: non-regular files in a split folder ------------------------------------------------


def test_case6_fifo_named_like_an_image_is_listed_as_unusable_not_read(tmp_path: Path) -> None:
    root = small_market(tmp_path / "market")
    os.mkfifo(root / "query" / "0002_c3s1_000009_00.jpg")  # opening it would block forever
    ds = Market1501(root, verbose=False)
    assert [Path(r.path).name for r in ds.query] == ["0002_c1s1_000001_00.jpg"]
    assert ds.unusable == {"query/": ("0002_c3s1_000009_00.jpg (FIFO, not a regular file)",)}
    assert "skipped 1 entry in query/ that are not regular files or folders: 0002_c3s1" in (
        ds.summary()
    )


def test_case6_image_folder_lists_fifos_and_sockets_inside_identity_folders(
    tmp_path: Path,
) -> None:
    for rel in ["train/a/c1_1.jpg", "train/a/c2_1.jpg", "query/b/c1_1.jpg", "gallery/b/c2_1.jpg"]:
        write_image(tmp_path / rel)
    os.mkfifo(tmp_path / "gallery" / "b" / "c3_1.jpg")
    ds = ImageFolderDataset(tmp_path, verbose=False)
    assert [Path(r.path).name for r in ds.gallery] == ["c2_1.jpg"]
    assert ds.unusable == {"gallery/": ("b/c3_1.jpg (FIFO, not a regular file)",)}


# -- case 7: a symbolic-link loop (ELOOP) and a dangling link in a split folder -----------------


def test_case7_symlink_loops_and_dangling_links_are_listed_not_followed(tmp_path: Path) -> None:
    root = small_market(tmp_path / "market")
    gallery = root / "bounding_box_test"
    (gallery / "0002_c3s1_000004_00.jpg").symlink_to("0002_c3s1_000004_00.jpg")  # itself
    (gallery / "0002_c4s1_000005_00.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (gallery / "0002_c5s1_000006_00.jpg").symlink_to(gallery / "0002_c2s1_000002_00.jpg")
    listing = list_folder(gallery)
    assert listing.files == [
        "0000_c1s1_000003_00.jpg",
        "0002_c2s1_000002_00.jpg",
        "0002_c5s1_000006_00.jpg",  # a link to a regular file is a file
    ]
    assert listing.folders == []
    assert listing.unusable == [
        "0002_c3s1_000004_00.jpg (symbolic link loop)",
        "0002_c4s1_000005_00.jpg (dangling symbolic link)",
    ]
    ds = Market1501(root, verbose=False)
    assert len(ds.gallery) == 3 and len(ds.unusable["bounding_box_test/"]) == 2


# -- case 9: every PIL mode an image-folder user meets reads as the right 8-bit RGB ------------


def _ramp(height: int = 6, width: int = 5) -> np.ndarray:
    """Distinct values 0..1 over the image, so a wrong scale or a clipped range shows."""
    return np.arange(height * width, dtype=np.float64).reshape(height, width) / (height * width - 1)


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=-1).astype(np.uint8)


def _mode_case(mode: str, tmp_path: Path) -> tuple[Path, np.ndarray, int]:
    """A file holding an image of ``mode`` and the RGB it must read as (and the tolerance)."""
    ramp = _ramp()
    if mode == "1":
        bits = (np.indices(ramp.shape).sum(0) % 2).astype(bool)
        image, expected, suffix = Image.fromarray(bits), _grey(bits * 255), ".png"
    elif mode == "L":
        grey = np.rint(ramp * 255).astype(np.uint8)
        image, expected, suffix = Image.fromarray(grey, "L"), _grey(grey), ".png"
    elif mode == "P":
        palette = np.array([[10, 20, 30], [200, 0, 90], [0, 255, 7], [77, 66, 55]], np.uint8)
        index = (np.arange(ramp.size).reshape(ramp.shape) % 4).astype(np.uint8)
        image = Image.fromarray(index, "P")
        image.putpalette(palette.ravel().tolist())
        expected, suffix = palette[index], ".png"
    elif mode in ("LA", "RGBA"):
        alpha = np.rint(ramp * 255).astype(np.uint8)
        colour = np.array([180, 90, 30], np.uint8) if mode == "RGBA" else np.array([180] * 3)
        channels = [np.full(ramp.shape, c, np.uint8) for c in colour[: 3 if mode == "RGBA" else 1]]
        image = Image.fromarray(np.stack([*channels, alpha], -1), mode)
        # Composited onto black: colour x alpha / 255.
        expected = np.rint(colour.astype(float) * alpha[..., None] / 255.0).astype(np.uint8)
        return _save(image, tmp_path / f"x{mode}.png"), expected, 1
    elif mode == "CMYK":
        # Each pixel has ink in at most one of (C, Y) and K, where CMYK -> RGB formulas agree:
        # even rows cyan and some yellow, odd rows black only.
        ink = np.rint(ramp * 255).astype(np.uint8)
        even = (np.arange(ramp.shape[0]) % 2 == 0)[:, None]
        cyan, yellow = np.where(even, ink, 0), np.where(even, np.full_like(ink, 40), 0)
        black = np.where(even, 0, ink)
        cmyk = np.stack([cyan, np.zeros_like(ink), yellow, black], -1).astype(np.uint8)
        image = Image.fromarray(cmyk, "CMYK")
        rgb = [255 - cyan.astype(int) - black, 255 - black, 255 - yellow.astype(int) - black]
        expected, suffix = np.stack(rgb, -1).astype(np.uint8), ".tif"
    elif mode == "I;16":
        values = np.rint(ramp * 65535).astype(np.uint16)
        image = Image.fromarray(values)
        assert image.mode == "I;16"
        expected, suffix = _grey(np.rint(values / 257.0)), ".png"
    elif mode == "I":
        values = np.rint(ramp * 65535).astype(np.int32)
        image, expected, suffix = Image.fromarray(values, "I"), _grey(np.rint(values / 257)), ".tif"
    else:
        assert mode == "F"
        values = ramp.astype(np.float32)
        image, expected, suffix = Image.fromarray(values, "F"), _grey(np.rint(ramp * 255)), ".tif"
    return _save(image, tmp_path / f"x{suffix}"), expected, 0


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "RGBA", "CMYK", "I;16", "I", "F"])
def test_case9_every_pil_mode_reads_as_the_right_8_bit_rgb(tmp_path: Path, mode: str) -> None:
    path, expected, tolerance = _mode_case(mode, tmp_path)
    with Image.open(path) as stored:
        assert stored.mode == mode  # the file really holds that mode
    image = read_image(path)
    assert image.mode == "RGB"
    got = np.asarray(image).astype(np.int64)
    assert np.abs(got - expected.astype(np.int64)).max() <= tolerance


def test_case9_sixteen_bit_png_is_not_white(tmp_path: Path) -> None:
    path = tmp_path / "dark.png"
    Image.fromarray(np.full((8, 4), 1000, np.uint16)).save(path)  # dark: 1000 of 65535
    assert np.asarray(read_image(path)).max() == 4  # 1000 / 257 rounds to 4, not 255


# -- case 10: distractor queries are not valid queries ------------------------------------------


def test_case10_distractor_queries_are_skipped_and_counted() -> None:
    # Query 0 shows a distractor (pid 0); the gallery holds two more distractors, which are not
    # that query's "matches". Query 1 has one true match (gallery 2).
    dist = np.array([[0.1, 0.2, 0.9, 0.5], [0.3, 0.4, 0.1, 0.8]])
    labels = ([0, 5], [0, 0, 5, 7], [0, 0], [1, 1, 1, 1])
    assert rank_metrics(dist, *labels, max_rank=4).num_valid_queries == 2  # what main did
    fixed = rank_metrics(dist, *labels, max_rank=4, distractor_pids={0})
    alone = rank_metrics(dist[1:], [5], labels[1], [0], labels[3], max_rank=4)
    assert fixed.num_valid_queries == 1
    assert fixed.skipped == SkippedQueries(distractor=1)
    np.testing.assert_array_equal(fixed.cmc, alone.cmc)
    assert fixed.mAP == alone.mAP and fixed.mINP == alone.mINP
    assert protocol_notes(fixed) == [
        "skipped 1 of 2 queries: 1 whose identity is a distractor (not one person)"
    ]
    # In an image folder, pid 0 is a person like any other: no distractor set, nothing skipped.
    assert ImageFolderDataset.distractor_pids == frozenset()
    assert Market1501.distractor_pids == frozenset({0})


def test_case10_only_distractor_queries_is_a_no_valid_query_error() -> None:
    with pytest.raises(NoValidQueryError, match="1 of them: the query's identity is a distractor"):
        rank_metrics(np.ones((1, 2)), [0], [0, 3], [0], [1, 1], distractor_pids={0})


# -- case 11: byte-identical copies of a query in the gallery are the query itself --------------


def test_case11_copies_of_query_images_are_removed_like_the_query_itself(tmp_path: Path) -> None:
    for rel, colour in [
        ("train/a/c1_1.jpg", (1, 2, 3)),
        ("train/a/c1_2.jpg", (4, 5, 6)),
        ("query/p1/c1_q.jpg", (200, 10, 10)),
        ("query/p2/c1_q.jpg", (10, 200, 10)),
        ("gallery/p1/c1_g.jpg", (190, 20, 20)),
        ("gallery/p2/c1_g.jpg", (20, 190, 20)),
    ]:
        write_image(tmp_path / rel, colour)
    # The user copied both query images into the gallery under other names.
    (tmp_path / "gallery/p1/c1_copy.jpg").write_bytes((tmp_path / "query/p1/c1_q.jpg").read_bytes())
    (tmp_path / "gallery/p2/c1_copy.jpg").write_bytes((tmp_path / "query/p2/c1_q.jpg").read_bytes())
    ds = ImageFolderDataset(tmp_path, verbose=False)
    own = find_own_images(ds.query, ds.gallery)
    gallery_names = [os.path.relpath(r.path, tmp_path) for r in ds.gallery]
    assert [[gallery_names[g] for g in row if g >= 0] for row in own.table] == [
        ["gallery/p1/c1_copy.jpg"],
        ["gallery/p2/c1_copy.jpg"],
    ]
    assert (own.copies, own.mislabelled) == (2, 0)
    # Distances where each query's copy is at 0 and its real match second: with the copies
    # counted as matches (main), R1 is 100; with them removed, the real matches decide.
    assert gallery_names == [
        "gallery/p1/c1_copy.jpg",
        "gallery/p1/c1_g.jpg",
        "gallery/p2/c1_copy.jpg",
        "gallery/p2/c1_g.jpg",
    ]
    dist = np.array([[0.0, 0.5, 0.2, 0.9], [0.1, 0.9, 0.0, 0.4]])
    labels = (
        [r.pid for r in ds.query],
        [r.pid for r in ds.gallery],
        [r.camid for r in ds.query],
        [r.camid for r in ds.gallery],
    )
    naive = rank_metrics(dist, *labels, max_rank=4, keep_same_camera=True)
    fixed = rank_metrics(
        dist, *labels, max_rank=4, keep_same_camera=True, query_gallery_index=own.table
    )
    assert naive.cmc[0] == 1.0
    # Query p1: its real match (0.5) comes after p2's copy (0.2): rank 2 once its copy is gone.
    # Query p2: its real match (0.4) comes after p1's copy (0.1): rank 2 as well.
    np.testing.assert_array_equal(fixed.cmc, [0.0, 1.0, 1.0, 1.0])
    assert fixed.own_images_removed == 2
    assert protocol_notes(fixed)[-1].startswith("removed 2 gallery image(s) that are a query")


def test_case11_copy_under_another_identity_stays_and_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for rel, colour in [("q/a.jpg", (9, 9, 9)), ("g/b.jpg", (50, 50, 50))]:
        write_image(tmp_path / rel, colour)
    (tmp_path / "g/copy.jpg").write_bytes((tmp_path / "q/a.jpg").read_bytes())
    query = [ImageRecord(str(tmp_path / "q/a.jpg"), 1, 0)]
    gallery = [
        ImageRecord(str(tmp_path / "g/b.jpg"), 1, 1),
        ImageRecord(str(tmp_path / "g/copy.jpg"), 2, 0),
    ]
    own = find_own_images(query, gallery)
    assert own == (None, 0, 1)
    assert "1 gallery image(s) are byte-identical to a query image but labelled" in caplog.text


def test_case11_only_files_of_a_shared_size_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = {"q1": 10, "q2": 20, "g1": 10, "g2": 30, "g3": 10}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(name.encode().ljust(size, b"."))
    (tmp_path / "g3").write_bytes((tmp_path / "q1").read_bytes())
    opened: list[str] = []
    real_open = open

    def spying_open(path: str, *args: object, **kwargs: object) -> object:
        opened.append(Path(path).name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spying_open)
    found = byte_identical_copies(
        [str(tmp_path / n) for n in ("q1", "q2")], [str(tmp_path / n) for n in ("g1", "g2", "g3")]
    )
    assert found == [[2], []]
    assert sorted(opened) == ["g1", "g3", "q1"]  # q2 and g2 have sizes nobody else has


# -- case 13 (and 10, 11): what the protocol skipped is said, and agrees with a label-only count --


def test_case13_label_only_count_agrees_with_rank_metrics() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        num_q, num_g = rng.integers(1, 8), rng.integers(1, 12)
        q_pids, g_pids = rng.integers(0, 4, num_q), rng.integers(0, 4, num_g)
        q_cams, g_cams = rng.integers(0, 2, num_q), rng.integers(0, 2, num_g)
        keep = bool(trial % 2)
        # Some queries' own images: gallery items of the query's pid, up to 2 per query.
        table = np.full((num_q, 2), -1)
        for q in range(num_q):
            same = np.flatnonzero(g_pids == q_pids[q])
            picked = rng.choice(same, size=min(len(same), rng.integers(0, 3)), replace=False)
            table[q, : len(picked)] = picked
        kwargs = {
            "keep_same_camera": keep,
            "query_gallery_index": table if trial % 3 else None,
            "distractor_pids": {0} if trial % 5 else None,
        }
        labels = (q_pids, g_pids, q_cams, g_cams)
        counted = count_valid_queries(*labels, **kwargs)
        try:
            metrics = rank_metrics(rng.random((num_q, num_g)), *labels, max_rank=3, **kwargs)
        except NoValidQueryError:
            assert counted[0] == 0
            with pytest.raises(NoValidQueryError):
                check_valid_queries(*labels, **kwargs)
            continue
        assert counted == (metrics.num_valid_queries, metrics.skipped)
        assert metrics.num_valid_queries + metrics.skipped.total == num_q


def test_case13_dropped_queries_are_reported_with_their_reason() -> None:
    dist = np.array([[0.1, 0.2], [0.2, 0.1], [0.3, 0.3]])
    # Query 1's identity (8) is absent; query 2's only match is under its own camera.
    metrics = rank_metrics(dist, [5, 8, 6], [5, 6], [0, 0, 1], [1, 1], max_rank=2)
    assert metrics.skipped == SkippedQueries(absent=1, no_match_left=1)
    report = format_rank_report(metrics).splitlines()
    assert report[2] == (
        "skipped 2 of 3 queries: 1 whose identity is not in the gallery; 1 whose every true "
        "match is under the query's own camera or is the query image"
    )
    record = rank_metrics_to_dict(metrics)
    assert (record["skipped_absent"], record["skipped_no_match_left"]) == (1, 1)


# -- case 8: a malicious checkpoint is refused naming the blocked global, never suggesting
#    weights_only=False ------------------------------------------------------------------------


class _Payload:
    """Pickles as a call of os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _repickled(source: Path, target: Path, payload: bytes) -> Path:
    """``source`` (a torch zip archive) with its data.pkl replaced by ``payload``."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, payload if item.filename.endswith("data.pkl") else data)
    return target


@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL, and STACK_GLOBAL with memoised strings
def test_case8_malicious_checkpoint_names_the_blocked_global(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    plain = tmp_path / "plain.pt"
    torch.save({"epoch": 1}, plain)
    evil = _repickled(
        plain, tmp_path / "evil.pt", pickle.dumps({"x": _Payload(marker)}, protocol=protocol)
    )
    with pytest.raises(CheckpointError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about protocol 4 before refusing
        load_checkpoint(evil)
    message = str(info.value)
    assert message.startswith(f"{evil} holds code or objects that duatm will not load")
    assert f"(blocked: {os.system.__module__}.system)" in message
    assert "weights_only" not in message and "trust" not in message
    assert len(message.splitlines()) == 1
    assert info.value.__cause__ is None and info.value.__suppress_context__  # torch's advice gone
    assert not marker.exists()
    assert blocked_globals(evil) == [f"{os.system.__module__}.system"]
    assert blocked_globals(plain) == []


# -- case 4: synth --overwrite deletes only what SynthPed wrote ---------------------------------

SYNTH = {"num_ids": 4, "num_cameras": 2, "height": 32, "width": 16, "images_per_id_per_camera": 2}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_case4_synth_overwrite_keeps_the_users_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = write_synthped(tmp_path / "synth", **SYNTH)
    listed = json.loads((out / MANIFEST_NAME).read_text())["files"]
    assert listed == sorted(k for k in tree_bytes(out) if k != MANIFEST_NAME)
    (out / "notes.txt").write_text("my notes")
    (out / "mystuff").mkdir()
    (out / "mystuff" / "model.pt").write_bytes(b"\x00weights")
    (out / "query" / "my_query.jpg").write_bytes(b"not SynthPed's")
    before = tree_bytes(out)
    mine = {k: before[k] for k in ("notes.txt", "mystuff/model.pt", "query/my_query.jpg")}

    assert main(["synth", "--out", str(out), "--seed", "7", "--ids", "4", "--cameras", "2",
                 "--height", "32", "--width", "16", "--images-per-camera", "2", "--workers", "1",
                 "--overwrite"]) == 0  # fmt: skip
    after = tree_bytes(out)
    assert {k: after[k] for k in mine} == mine  # the user's files, byte for byte
    assert json.loads(after[MANIFEST_NAME])["arguments"]["seed"] == 7
    fresh = write_synthped(tmp_path / "fresh", seed=7, **SYNTH)
    assert {k: v for k, v in after.items() if k not in mine} == tree_bytes(fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "synth"]  # nothing left over
    capsys.readouterr()


def test_case4_video_synth_overwrite_keeps_the_users_files(tmp_path: Path) -> None:
    tiny = {"num_ids": 4, "num_cameras": 2, "height": 32, "width": 16}
    tiny |= {"tracklets_per_camera": 1, "min_frames": 2, "max_frames": 3}
    out = write_video_synthped(tmp_path / "video", **tiny)
    first_frame = sorted((out / "bbox_train").rglob("*.jpg"))[0]
    (first_frame.parent / "my_frame_notes.txt").write_text("mine")
    (out / "info" / "my_split.txt").write_text("mine too")
    mine = {k: v for k, v in tree_bytes(out).items() if "my_" in k}
    assert len(mine) == 2
    write_video_synthped(out, seed=3, overwrite=True, **tiny)
    after = tree_bytes(out)
    assert {k: after[k] for k in mine} == mine
    fresh = write_video_synthped(tmp_path / "fresh", seed=3, **tiny)
    assert {k: v for k, v in after.items() if k not in mine} == tree_bytes(fresh)


def test_case4_synth_overwrite_refuses_when_it_cannot_tell_whose_files_are_whose(
    tmp_path: Path,
) -> None:
    out = write_synthped(tmp_path / "synth", **SYNTH)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    # The user replaced a SynthPed image with their own under the same name.
    name = manifest["files"].pop(0)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    (out / name).write_bytes(b"mine")
    before = tree_bytes(out)
    with pytest.raises(FileExistsError, match=f"{name}: not written by SynthPed"):
        write_synthped(out, seed=3, overwrite=True, **SYNTH)
    assert tree_bytes(out) == before
    # A manifest of an older duatm lists no files: refused too, nothing deleted.
    del manifest["files"]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    before = tree_bytes(out)
    with pytest.raises(FileExistsError, match="does not list the files SynthPed wrote"):
        write_synthped(out, seed=3, overwrite=True, **SYNTH)
    assert tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]


# -- case 1: one writer per run folder, with an OS lock that a crash releases -------------------

_HOLD_LOCK = """
import sys, time
from duatm.engine.run_folder import RunFolderLock
lock = RunFolderLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_case1_second_writer_stops_at_once_naming_the_holder_and_a_crash_frees_the_folder(
    tmp_path: Path, train_argv: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(run)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        capsys.readouterr()
        assert main(train_argv(run)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"duatm train: error: {run} is being written by another duatm process "
            f"(pid {holder.pid}); wait for it to finish, or give this run another --out"
        ]
        assert sorted(p.name for p in run.iterdir()) == [".duatm.lock"]  # nothing written
    finally:
        holder.kill()  # SIGKILL: the holder cannot clean up; the kernel drops its lock
        holder.wait()
    assert (run / ".duatm.lock").read_text() == f"{holder.pid}\n"  # the stale lock file stays
    assert main(train_argv(run)) == 0  # ... and blocks nothing
    assert (run / LAST_CHECKPOINT).is_file()


def test_case1_lock_is_held_during_fit_and_released_after(
    tmp_path: Path, tiny_synthped: Path
) -> None:
    cfg = load_config(None, [*TINY_TRAIN, f"data.root={tiny_synthped}", f"out_dir={tmp_path}"])
    seen = []

    class Probe(Hook):
        def after_epoch(self, trainer: Trainer) -> None:
            with pytest.raises(RunFolderError, match=f"pid {os.getpid()}"):
                RunFolderLock(tmp_path).acquire()
            seen.append(trainer.epoch)

    trainer = Trainer(cfg, progress=False)
    trainer.hooks.append(Probe())
    trainer.fit()
    assert seen == [1, 2]
    with RunFolderLock(tmp_path):  # free again
        pass


# -- case 2: a run folder that holds a run is refused without --resume / --overwrite -----------


def test_case2_train_refuses_a_folder_with_a_run_and_overwrite_deletes_only_run_files(
    tmp_path: Path, train_argv: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(train_argv(run, "data.val_identities=1")) == 0  # validation: best.pt exists
    (run / "notes.txt").write_text("mine")
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert {"best.pt", "last.pt", "metrics.jsonl", "best.results.json"} <= before.keys()
    capsys.readouterr()

    assert main(train_argv(run, "seed=1")) == 2
    err = capsys.readouterr().err
    assert f"duatm train: error: {run} is not empty (" in err
    assert "pass --resume to continue it, --overwrite to delete its run files" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before

    assert main(train_argv(run, "seed=1", options=["--overwrite"])) == 0
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after["notes.txt"] == b"mine"  # not a run file: kept
    assert "best.results.json" not in after  # an evaluation of the deleted best.pt
    assert load_checkpoint(run / LAST_CHECKPOINT)["config"]["seed"] == 1
    records = [json.loads(line) for line in after["metrics.jsonl"].splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]  # one run's log


def test_case2_overwrite_deletes_the_run_files_it_knows(tmp_path: Path) -> None:
    names = [*RUN_FILES, "last.results.json", "best.flip.results.json", ".last.pt.x1y2.tmp"]
    for name in names:
        (tmp_path / name).write_text("x")
    (tmp_path / "tensorboard").unlink()
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events").write_text("x")
    keep = ["notes.txt", "last.pt.bak", "results.json.old", ".duatm.lock"]
    for name in keep:
        (tmp_path / name).write_text("y")
    assert sorted(clear_run_files(tmp_path)) == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


# -- case 5: resuming from best.pt does not replace a later last.pt unasked --------------------


def test_case5_resume_from_best_is_refused_then_allowed_with_overwrite(
    tmp_path: Path, train_argv: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    # best.pt is epoch 1 (as if validation peaked there), last.pt epoch 2.
    assert main(train_argv(run, "eval.every=0", "schedule.epochs=1")) == 0
    shutil.copyfile(run / LAST_CHECKPOINT, run / "best.pt")
    assert main(train_argv(run, "eval.every=0", options=["--resume"])) == 0
    assert load_checkpoint(run / "best.pt")["epoch"] == 1
    last = (run / LAST_CHECKPOINT).read_bytes()
    capsys.readouterr()

    def resume_best(*options: str) -> list[str]:
        # best.pt's config says 1 epoch: ask for the second again.
        best = str(run / "best.pt")
        return ["train", "--resume", best, "--no-progress", *options, "--set", "schedule.epochs=2"]

    assert main(resume_best()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"duatm train: error: {run} has its own last.pt; continuing from {run / 'best.pt'} "
        f"would replace it: resume {run / LAST_CHECKPOINT} instead, pass --overwrite to replace "
        "it, or give the continued run another --out"
    ]
    assert (run / LAST_CHECKPOINT).read_bytes() == last
    # Into a new folder it is fine, and so it is here when asked for.
    assert main(resume_best("--out", str(tmp_path / "from-best"))) == 0
    assert load_checkpoint(tmp_path / "from-best" / LAST_CHECKPOINT)["epoch"] == 2
    assert main(resume_best("--overwrite")) == 0
    assert load_checkpoint(run / LAST_CHECKPOINT)["epoch"] == 2


# -- case 12: the protocol's preconditions are checked before training -------------------------


def test_case12_single_camera_data_is_refused_before_any_training(
    tmp_path: Path, train_argv: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "own"
    for split, ids in (("train", "abc"), ("query", "de"), ("gallery", "de")):
        for ident in ids:
            for k in range(2):
                write_image(root / split / ident / f"c1_{k}.jpg", (9 * k, ord(ident), 50))
    run = tmp_path / "run"
    argv = train_argv(run, "data.dataset=imagefolder")
    argv[argv.index("--data-root") + 1] = str(root)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no query has a true match left in the gallery" in err
    assert "--set eval.keep_same_camera=true" in err
    assert not run.exists()  # nothing trained, nothing written
    assert main([*argv, "eval.keep_same_camera=true"]) == 0  # and the way out works


# -- case 7: Ctrl-C (SIGINT) ends with exit 130 and how to resume, no traceback ----------------


@pytest.mark.slow
def test_case7_sigint_exits_130_with_how_to_resume(
    tmp_path: Path, train_argv: Callable[..., list[str]]
) -> None:
    run = tmp_path / "run"
    argv = train_argv(run, "schedule.epochs=500", "eval.every=0")
    process = subprocess.Popen(
        [sys.executable, "-m", "duatm.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / LAST_CHECKPOINT).is_file():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert err.strip().splitlines() == [
        f"duatm train: interrupted; resume with: duatm train --resume {run / LAST_CHECKPOINT}"
    ]
    done = load_checkpoint(run / LAST_CHECKPOINT)["epoch"]
    resume = ["train", "--resume", str(run / LAST_CHECKPOINT), "--no-progress"]
    assert main([*resume, "--set", f"schedule.epochs={done + 1}"]) == 0
    assert load_checkpoint(run / LAST_CHECKPOINT)["epoch"] == done + 1


# -- case 3: results never overwrite a checkpoint; refused before evaluating; always printed ----


@pytest.fixture
def trained_run(tmp_path: Path, train_argv: Callable[..., list[str]]) -> Path:
    run = tmp_path / "run"
    assert main(train_argv(run, "schedule.epochs=1")) == 0
    return run


def test_case3_results_over_the_checkpoint_are_refused_before_evaluating(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    last = trained_run / LAST_CHECKPOINT
    saved = last.read_bytes()

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the evaluation ran before the results path was checked")

    monkeypatch.setattr("duatm.engine.commands.evaluate", must_not_run)
    capsys.readouterr()
    evaluate = ["evaluate", "--checkpoint", str(last), "--no-progress", "--results"]
    for target in (last, trained_run):
        assert main([*evaluate, str(target)]) == 2
        assert capsys.readouterr().err.startswith(f"duatm evaluate: error: results path {target}")
    assert last.read_bytes() == saved


def test_case3_metrics_are_printed_even_when_the_results_cannot_be_written(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("duatm.atomic.os.fsync", disk_full)
    results = trained_run / "r.json"
    capsys.readouterr()
    argv = ["evaluate", "--checkpoint", str(trained_run / LAST_CHECKPOINT), "--no-progress"]
    assert main([*argv, "--results", str(results)]) == 2
    out, err = capsys.readouterr()
    assert "R1" in out and "mAP" in out  # the numbers were printed first
    assert err == f"duatm evaluate: error: {results}: No space left on device\n"
    assert not results.exists() and not list(trained_run.glob(".r.json.*"))


# -- cases 10 and 13 through the command line: skipped queries are printed with their reason --


def test_case10_13_evaluate_prints_skipped_distractor_and_absent_queries(
    trained_run: Path, tiny_synthped: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = trained_run.parent / "data"
    shutil.copytree(tiny_synthped, data)
    query = sorted((data / "query").iterdir())[0]
    shutil.copy(query, data / "query" / "0000_c1s1_999999_00.jpg")  # a distractor query
    shutil.copy(query, data / "query" / "0099_c1s1_999999_00.jpg")  # an identity not in the gallery
    capsys.readouterr()
    argv = ["evaluate", "--checkpoint", str(trained_run / LAST_CHECKPOINT), "--no-progress"]
    assert main([*argv, "--data-root", str(data), "--results", str(trained_run / "r.json")]) == 0
    out = capsys.readouterr().out
    num_queries = len(list((data / "query").iterdir()))
    assert (
        f"skipped 2 of {num_queries} queries: 1 whose identity is a distractor (not one "
        "person); 1 whose identity is not in the gallery"
    ) in out
    saved = json.loads((trained_run / "r.json").read_text())
    assert (saved["skipped_distractor"], saved["skipped_absent"]) == (1, 1)
    assert saved["num_valid_queries"] == num_queries - 2


# -- case 14: evaluate refuses a checkpoint format it does not know, as --resume does ---------


def test_case14_unknown_checkpoint_format_is_refused_by_evaluate_load_and_resume(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = load_checkpoint(trained_run / LAST_CHECKPOINT)
    state["format"] = 2
    future = trained_run.parent / "future.pt"
    save_checkpoint(future, state)
    expected = f"{future}: checkpoint format 2, this duatm reads format 1"
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(future), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"duatm evaluate: error: {expected}\n"
    assert main(["train", "--resume", str(future), "--out", str(trained_run.parent / "x")]) == 2
    assert capsys.readouterr().err == f"duatm train: error: {expected}\n"
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        duatm.load(future)
