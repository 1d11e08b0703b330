"""SynthPed: deterministic, readable by the Market-1501 loader, and hard in the designed way."""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from duatm.data.datasets import Market1501
from duatm.data.patchped import write_patchped
from duatm.data.synthped import MANIFEST_NAME, add_synth_arguments, write_synthped

TINY = {
    "num_ids": 4,
    "num_cameras": 2,
    "height": 64,
    "width": 32,
    "images_per_id_per_camera": 2,
    "num_distractors": 2,
    "num_junk": 2,
}
MARKET_NAME = re.compile(r"^(-1|\d{4})_c([1-6])s1_(\d{6})_00\.jpg$")


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def pid_cam(path: Path) -> tuple[int, int]:
    match = MARKET_NAME.match(path.name)
    assert match is not None, path.name
    return int(match.group(1)), int(match.group(2))


def group_of(root: Path) -> dict[int, int]:
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    return {pid: g for g, members in enumerate(manifest["groups"]) for pid in members}


def median_color(image: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]):
    """Median RGB of a window given in image fractions; the median ignores a small mark."""
    h, w = image.shape[:2]
    window = image[int(rows[0] * h) : int(rows[1] * h), int(cols[0] * w) : int(cols[1] * w)]
    return np.median(window.reshape(-1, 3), axis=0)


# Windows (rows, columns) inside the torso and the hips under every camera scale and image
# shift; without nuisance the person is centred and the whole torso can be used.
UPPER = ((0.27, 0.42), (0.45, 0.55))
LOWER = ((0.50, 0.56), (0.44, 0.56))
CENTRED_TORSO = ((0.24, 0.45), (0.36, 0.64))


def test_same_arguments_give_byte_identical_files_whatever_the_workers(tmp_path):
    a = write_synthped(tmp_path / "a", seed=3, **TINY)
    b = write_synthped(tmp_path / "b", seed=3, workers=2, **TINY)
    hashes = file_hashes(a)
    assert len(hashes) == 4 * 2 * 2 + 2 + 2 + 1  # images + distractors + junk + manifest
    assert hashes == file_hashes(b)


def test_another_seed_gives_other_images(tmp_path):
    a = file_hashes(write_synthped(tmp_path / "a", seed=0, **TINY))
    b = file_hashes(write_synthped(tmp_path / "b", seed=1, **TINY))
    assert a.keys() == b.keys()  # names do not depend on the seed, content does
    images = [name for name in a if name.endswith(".jpg")]
    assert all(a[name] != b[name] for name in images)


@pytest.mark.parametrize("writer", [write_synthped, write_patchped])
def test_more_identities_under_one_seed_keep_the_cameras(tmp_path, writer):
    """What `duatm synth --help` promises for drawing new people under the same cameras: the
    seed alone draws the cameras, so the pid-0 distractors and the junk (no person of the
    tree in them) come out the same with more identities, and other under another seed."""
    args = {key: value for key, value in TINY.items() if key != "num_ids"}
    small = file_hashes(writer(tmp_path / "small", num_ids=4, seed=0, **args))
    large = file_hashes(writer(tmp_path / "large", num_ids=8, seed=0, **args))
    other = file_hashes(writer(tmp_path / "other", num_ids=4, seed=1, **args))
    background = [name for name in small if Path(name).name.startswith(("0000_", "-1_"))]
    assert len(background) == 4
    assert all(small[name] == large[name] for name in background)
    assert all(small[name] != other[name] for name in background)


def test_market1501_loader_reads_the_expected_splits(tmp_path):
    root = write_synthped(
        tmp_path / "synth",
        num_ids=6,
        num_cameras=3,
        height=64,
        width=32,
        images_per_id_per_camera=3,
        num_distractors=4,
        num_junk=2,
    )
    names = [p.name for p in root.glob("*/*.jpg")]
    assert all(MARKET_NAME.match(name) for name in names)
    assert sum(name.startswith("-1_") for name in names) == 2

    data = Market1501(root, verbose=False)
    # 6 ids: 1..3 train, 4..6 test; 3 cameras x 3 images; 1 query per camera and test id.
    assert data.num_train_pids == 3 and data.num_train_cams == 3
    assert len(data.train) == 3 * 3 * 3
    assert sorted({r.pid for r in data.train}) == [0, 1, 2]  # relabelled
    assert len(data.query) == 3 * 3
    assert {r.pid for r in data.query} == {4, 5, 6}
    assert len(data.gallery) == 3 * 3 * 2 + 4  # junk left out, distractors kept
    assert sum(r.pid == 0 for r in data.gallery) == 4
    assert {r.camid for r in data.query + data.gallery} == {0, 1, 2}
    for q in data.query:
        cross_camera = [g for g in data.gallery if g.pid == q.pid and g.camid != q.camid]
        assert len(cross_camera) == 2 * 2, q  # the two other cameras, 2 gallery images each

    counts = json.loads((root / MANIFEST_NAME).read_text())["counts"]
    assert counts["train_images"] == len(data.train)
    assert counts["query_images"] == len(data.query)
    assert counts["gallery_images"] == len(data.gallery) + 2  # the file count includes junk


@pytest.fixture(scope="module")
def lookalikes(tmp_path_factory) -> Path:
    return write_synthped(
        tmp_path_factory.mktemp("synth") / "lookalikes",
        num_ids=24,
        num_cameras=2,
        height=128,
        width=64,
        images_per_id_per_camera=4,
        num_distractors=0,
        num_junk=0,
    )


def test_groups_have_two_to_four_members_and_stay_in_one_split(lookalikes):
    manifest = json.loads((lookalikes / MANIFEST_NAME).read_text())
    groups = manifest["groups"]
    assert sorted(pid for members in groups for pid in members) == list(range(1, 25))
    assert all(2 <= len(members) <= 4 for members in groups)
    assert all(max(members) <= 12 or min(members) > 12 for members in groups)  # 1..12 train
    for members in groups:  # distinct local details: each member's mark in its own cell
        cells = [tuple(manifest["identities"][pid - 1]["mark_cell"]) for pid in members]
        assert len(set(cells)) == len(cells)


def test_groups_share_global_colours_under_camera_and_image_nuisance(lookalikes):
    groups = group_of(lookalikes)
    per_image: dict[tuple[int, int], list[np.ndarray]] = {}
    for path in sorted(lookalikes.glob("*/*.jpg")):
        image = np.asarray(Image.open(path), dtype=np.float64)
        colors = np.concatenate([median_color(image, *UPPER), median_color(image, *LOWER)])
        per_image.setdefault(pid_cam(path), []).append(colors)
    # Robust to occluders: the median over an identity's images in one camera.
    colors = {key: np.median(values, axis=0) for key, values in per_image.items()}
    same_group, other_group = [], []
    for (pid_a, cam_a), (pid_b, cam_b) in itertools.combinations(colors, 2):
        if cam_a == cam_b and pid_a != pid_b:  # compare under the same camera's light
            gap = np.abs(colors[(pid_a, cam_a)] - colors[(pid_b, cam_b)]).mean()
            (same_group if groups[pid_a] == groups[pid_b] else other_group).append(gap)
    assert len(same_group) >= 20
    assert np.mean(same_group) < 0.3 * np.mean(other_group)


def test_group_members_differ_only_in_local_details(tmp_path):
    root = write_synthped(
        tmp_path / "clean",
        num_ids=24,
        num_cameras=2,
        height=128,
        width=64,
        images_per_id_per_camera=2,
        num_distractors=0,
        num_junk=0,
        nuisance=False,
    )
    groups = group_of(root)
    images: dict[int, np.ndarray] = {}
    for path in sorted(root.glob("*/*.jpg")):
        image = np.asarray(Image.open(path), dtype=np.int16)
        pid, _ = pid_cam(path)
        assert (images.setdefault(pid, image) == image).all()  # no nuisance: one look per id
    changed = {}
    for a, b in itertools.combinations(images, 2):
        diff = np.abs(images[a] - images[b]).max(axis=-1) > 40
        changed[(a, b)] = diff.mean()
        if groups[a] == groups[b]:
            for window in (CENTRED_TORSO, LOWER):
                same = median_color(images[a], *window) - median_color(images[b], *window)
                assert np.abs(same).max() <= 8, (a, b, window)  # JPEG rounding
    same_group = [v for (a, b), v in changed.items() if groups[a] == groups[b]]
    other_group = [v for (a, b), v in changed.items() if groups[a] != groups[b]]
    # Look-alikes are distinct people, but what tells them apart covers a small area.
    assert min(same_group) > 0.003
    assert max(same_group) < 0.12 < np.mean(other_group)


@pytest.mark.parametrize("cameras", [1, 7])
def test_camera_count_outside_market_range_is_refused(tmp_path, cameras):
    with pytest.raises(ValueError, match="num_cameras"):
        write_synthped(tmp_path / "x", **{**TINY, "num_cameras": cameras})
    assert not (tmp_path / "x").exists()


def test_existing_tree_is_kept_refused_or_replaced(tmp_path):
    out = write_synthped(tmp_path / "synth", **TINY)
    before = file_hashes(out)
    manifest_mtime = (out / MANIFEST_NAME).stat().st_mtime_ns
    assert write_synthped(out, **TINY) == out  # same arguments: kept as is
    assert (out / MANIFEST_NAME).stat().st_mtime_ns == manifest_mtime
    with pytest.raises(FileExistsError, match="overwrite"):
        write_synthped(out, seed=5, **TINY)
    assert file_hashes(out) == before
    write_synthped(out, seed=5, overwrite=True, **TINY)
    assert json.loads((out / MANIFEST_NAME).read_text())["arguments"]["seed"] == 5
    assert file_hashes(out) != before

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a SynthPed"):
        write_synthped(foreign, overwrite=True, **TINY)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "synth"]  # no staging left
    assert (out.stat().st_mode & 0o777) == (foreign.stat().st_mode & 0o777)  # not private


def test_cli_arguments_write_the_tree_and_print_a_summary(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    argv = ["--out", str(tmp_path / "s"), "--ids", "4", "--cameras", "2", "--seed", "1"]
    argv += ["--height", "64", "--width", "32", "--images-per-camera", "2", "--workers", "1"]
    args = parser.parse_args(argv)
    assert args.handler(args) == 0
    summary = capsys.readouterr().out
    assert "4 ids (2 train / 2 test)" in summary and "train 8 images" in summary
    manifest = json.loads((tmp_path / "s" / MANIFEST_NAME).read_text())
    assert manifest["arguments"]["seed"] == 1
    assert manifest["arguments"]["num_distractors"] == 4 * 3 // 5  # the per-id default


def test_cli_reports_bad_arguments_without_a_traceback(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "s"), "--cameras", "8"])
    assert args.handler(args) == 2
    assert "num_cameras=8, expected 2..6" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
