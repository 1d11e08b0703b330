"""Pixel pipelines and image reading."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from duatm.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageReadError,
    build_test_transform,
    build_train_transform,
    normalise,
    read_image,
)

COLOR = (200, 100, 50)


def normalised(color: tuple[int, int, int]) -> torch.Tensor:
    """Hand computation of (v / 255 - mean) / std per channel."""
    return torch.tensor(
        [(v / 255 - m) / s for v, m, s in zip(color, IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    )


def gradient_image(width: int = 6, height: int = 10) -> Image.Image:
    img = Image.new("RGB", (width, height))
    img.putdata([(x * 40, y * 20, (x + y) * 10) for y in range(height) for x in range(width)])
    return img


@pytest.mark.parametrize(
    "transform",
    [
        build_test_transform(16, 8),
        build_train_transform(16, 8),
        build_train_transform(16, 8, pad=0, flip_prob=0.0, random_erasing=0.5),
    ],
)
def test_pipelines_give_plain_uint8_tensors(transform: object) -> None:
    out = transform(Image.new("RGB", (13, 30), COLOR))  # type: ignore[operator]
    assert out.shape == (3, 16, 8)
    assert out.dtype == torch.uint8
    assert type(out) is torch.Tensor  # not a tv_tensors subclass: collates like any tensor


def test_constant_image_keeps_its_colour_through_every_pipeline() -> None:
    expected = torch.tensor(COLOR, dtype=torch.uint8)[:, None, None].expand(3, 8, 4)
    for transform in (
        build_test_transform(8, 4),
        build_train_transform(8, 4, pad=0, flip_prob=1.0),
    ):
        assert torch.equal(transform(Image.new("RGB", (5, 11), COLOR)), expected)


def test_normalise_matches_hand_computation_for_images_and_batches() -> None:
    image = torch.tensor(COLOR, dtype=torch.uint8)[:, None, None].expand(3, 8, 4)
    expected = normalised(COLOR)[:, None, None].expand(3, 8, 4)
    assert torch.allclose(normalise(image), expected, atol=1e-6)
    batch = torch.stack([image, torch.zeros_like(image)])
    out = normalise(batch)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 8, 4)
    assert torch.allclose(out[0], expected, atol=1e-6)
    assert torch.allclose(out[1], normalised((0, 0, 0))[:, None, None].expand(3, 8, 4), atol=1e-6)
    assert image.dtype == torch.uint8  # the input is left alone


def test_normalise_refuses_float_input() -> None:
    with pytest.raises(TypeError, match="expects uint8 images"):
        normalise(torch.zeros(3, 8, 4))


def test_test_transform_is_deterministic_and_matches_pil_resize() -> None:
    transform = build_test_transform(8, 4)
    img = gradient_image()
    torch.manual_seed(1)
    first = transform(img)
    torch.manual_seed(2)
    assert torch.equal(first, transform(img))
    # Same pixels as PIL's bilinear resize up to one grey level (antialiasing implementations).
    ref = torch.from_numpy(np.array(img.resize((4, 8), Image.BILINEAR))).permute(2, 0, 1)
    assert (first.int() - ref.int()).abs().max() <= 1


def test_flip_probability_one_mirrors_the_test_output() -> None:
    img = gradient_image(4, 8)
    flipped = build_train_transform(8, 4, pad=0, flip_prob=1.0)(img)
    assert torch.equal(flipped, build_test_transform(8, 4)(img).flip(-1))
    same = build_train_transform(8, 4, pad=0, flip_prob=0.0)(img)
    assert torch.equal(same, build_test_transform(8, 4)(img))


def test_padded_crop_is_a_random_window_of_the_zero_padded_image() -> None:
    img = gradient_image(4, 8)
    padded = torch.zeros(3, 12, 8, dtype=torch.uint8)
    padded[:, 2:10, 2:6] = build_test_transform(8, 4)(img)
    windows = {(dy, dx): padded[:, dy : dy + 8, dx : dx + 4] for dy in range(5) for dx in range(5)}
    transform = build_train_transform(8, 4, pad=2, flip_prob=0.0)
    torch.manual_seed(0)
    offsets = []
    for _ in range(20):
        out = transform(img)
        offsets += [k for k, w in windows.items() if torch.equal(out, w)]
    assert len(offsets) == 20  # every output is exactly one window
    assert len(set(offsets)) > 5  # and the window moves


def test_random_erasing_paints_the_mean_colour_which_normalises_to_zero() -> None:
    transform = build_train_transform(16, 8, pad=0, flip_prob=0.0, random_erasing=1.0)
    torch.manual_seed(0)
    out = transform(Image.new("RGB", (8, 16), COLOR))
    mean_color = torch.tensor([124, 116, 104], dtype=torch.uint8)[:, None, None]
    erased = (out == mean_color).all(dim=0)
    kept = (out == torch.tensor(COLOR, dtype=torch.uint8)[:, None, None]).all(dim=0)
    assert 0 < int(erased.sum()) < 16 * 8
    assert bool((erased | kept).all())
    # Rounding the mean to a byte moves it by at most half a grey level.
    half_level = 0.5 / 255 / min(IMAGENET_STD)
    assert normalise(out)[:, erased].abs().max() <= half_level


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": 0, "width": 4}, "image size must be positive"),
        ({"height": 8, "width": 4, "pad": -1}, "pad must be >= 0"),
        ({"height": 8, "width": 4, "flip_prob": 1.5}, "flip_prob must be a probability"),
        ({"height": 8, "width": 4, "random_erasing": -0.1}, "random_erasing must be a probability"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_train_transform(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_read_image_converts_to_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 8), COLOR).convert(mode).save(path)
    img = read_image(path)
    assert img.mode == "RGB"
    assert img.size == (4, 8)


def test_read_image_catches_truncation_that_open_misses(tmp_path: Path) -> None:
    path = tmp_path / "t.jpg"
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (64, 32, 3), dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with Image.open(path) as lazy:  # the header alone still parses
        assert lazy.size == (32, 64)
    with pytest.raises(
        ImageReadError, match=re.escape(f"cannot read image {path}: ") + ".*truncated"
    ):
        read_image(path)


@pytest.mark.parametrize("content", [None, b"", b"plain text, not pixels"])
def test_read_image_errors_name_the_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "broken.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=re.escape(f"cannot read image {path}")) as info:
        read_image(path)
    assert isinstance(info.value, OSError)
