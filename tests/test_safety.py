"""Nothing lost, nothing silently wrong: one test (at least) per case of issue 9.

Run-folder safety, OS errors, unusual images and protocol edge cases. The command-line corpus of
bad inputs (exit code, one line, files untouched) is tests/test_cli_errors.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from duatm.data.datasets import ImageFolderDataset, Market1501
from duatm.data.datasets.base import list_folder
from duatm.data.transforms import read_image


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
