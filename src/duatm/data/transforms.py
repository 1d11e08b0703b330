"""Image reading and the train/test pixel pipelines (torchvision.transforms.v2).

A pipeline is two stages: ``prepare`` (resize, then a uint8 tensor) is deterministic, so its
output can be decoded once and cached in memory (``ImageDataset(cache=True)``); ``augment``
(random flips and crops, float conversion, normalisation) runs on every load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PixelPipeline:
    """``prepare`` (PIL image -> uint8 tensor (3, H, W), deterministic), then ``augment``."""

    prepare: v2.Compose
    augment: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.augment(self.prepare(image))


def _resize_to_uint8(height: int, width: int) -> v2.Compose:
    return v2.Compose([v2.Resize((height, width)), v2.ToImage()])


def normalise(image: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) -> float32 scaled to [0, 1] and normalised with the ImageNet statistics.

    One fused step: v2's ToDtype + Normalize pair does the same at four times the per-image
    cost, which shows when the model is small.
    """
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return image.float().div_(255).sub_(mean).div_(std)


def build_train_transform(
    height: int,
    width: int,
    *,
    pad: int = 10,
    flip_prob: float = 0.5,
    random_erasing: float = 0.0,
) -> PixelPipeline:
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
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = [v2.RandomHorizontalFlip(flip_prob)]
    if pad:
        steps.append(v2.RandomCrop((height, width), padding=pad, fill=0))
    steps.append(normalise)
    if random_erasing:
        steps.append(v2.RandomErasing(p=random_erasing, value=0.0))
    return PixelPipeline(_resize_to_uint8(height, width), v2.Compose(steps))


def build_test_transform(height: int, width: int) -> PixelPipeline:
    """Deterministic evaluation pipeline: resize, float tensor (3, height, width), normalise."""
    _check_size(height, width)
    return PixelPipeline(_resize_to_uint8(height, width), normalise)
