"""Image reading and the train/test pixel pipelines (torchvision.transforms.v2)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

#: ImageNet statistics, because the backbones are ImageNet-initialised.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageReadError(OSError):
    """An image file that is missing, truncated or not an image; the message names the file."""


def read_image(path: str | Path) -> Image.Image:
    """Decode an image fully into RGB, so a broken file fails here, naming itself."""
    try:
        with Image.open(path) as img:
            # Image.open only reads the header; load() decodes every byte and raises on truncation.
            img.load()
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got height={height} width={width}")


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


def _to_normalised_tensor() -> list[v2.Transform]:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ]


def build_train_transform(
    height: int,
    width: int,
    *,
    pad: int = 10,
    flip_prob: float = 0.5,
    random_erasing: float = 0.0,
) -> v2.Compose:
    """Training augmentation of the paper (flip, padded random crop), optional random erasing.

    Output: float32 tensor (3, height, width), normalised with the ImageNet mean and std.
    ``pad`` zero pixels on every side before a random ``height x width`` crop (0 disables it);
    ``random_erasing`` is the probability of erasing one random rectangle to 0 (after
    normalisation, so 0 is the mean colour).
    """
    _check_size(height, width)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    _check_probability("flip_prob", flip_prob)
    _check_probability("random_erasing", random_erasing)
    steps: list[v2.Transform] = [v2.Resize((height, width)), v2.RandomHorizontalFlip(flip_prob)]
    if pad:
        steps.append(v2.RandomCrop((height, width), padding=pad, fill=0))
    steps += _to_normalised_tensor()
    if random_erasing:
        steps.append(v2.RandomErasing(p=random_erasing, value=0.0))
    return v2.Compose(steps)


def build_test_transform(height: int, width: int) -> v2.Compose:
    """Deterministic evaluation pipeline: resize, float tensor (3, height, width), normalise."""
    _check_size(height, width)
    return v2.Compose([v2.Resize((height, width)), *_to_normalised_tensor()])
