"""Image reading and the train/test pixel pipelines (torchvision.transforms.v2).

A pipeline is two stages: ``prepare`` (resize, then a uint8 tensor) is deterministic, so its
output can be decoded once and cached in memory (``ImageDataset(cache=True)``); ``augment``
(random flips, crops and erasing) runs on every load. Both stay in uint8: loaders hand over
bytes, and [`normalise`][duatm.data.transforms.normalise] turns a whole batch into the model's
float input where the model runs. Per image that saves the float conversion on the loader's CPU, and on a GPU it moves a
quarter of the bytes from host to device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

#: ImageNet statistics, because the backbones are ImageNet-initialised.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The mean as a uint8 colour: what random erasing paints, so the erased region is 0 after
#: [`normalise`][duatm.data.transforms.normalise] (up to rounding), as erasing after
#: normalisation would make it.
MEAN_COLOR = tuple(round(255 * m) for m in IMAGENET_MEAN)


class ImageReadError(OSError):
    """An image file that is missing, truncated or not an image; the message names the file."""


def read_image(path: str | Path) -> Image.Image:
    """Decode an image fully into 8-bit RGB (see :func:`to_rgb`), so a broken file fails here,
    naming itself."""
    try:
        with Image.open(path) as img:
            # Image.open only reads the header; load() decodes every byte and raises on truncation.
            img.load()
            return to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


#: Single-channel modes whose values are not 0..255 (16-bit, 32-bit integer, float) and the
#: factor that maps their range onto 0..255. PIL's own convert("RGB") clips them instead, so a
#: 16-bit PNG (mode I;16) became an all-white image.
_HIGH_DEPTH_SCALE = {
    "I;16": 255 / 65535,
    "I;16L": 255 / 65535,
    "I;16B": 255 / 65535,
    "I;16N": 255 / 65535,
    "I": 255 / 65535,  # 32-bit integers: how older Pillow opens 16-bit PNGs; read as 16-bit
    "F": 255.0,  # floating point: read as intensities in [0, 1]
}


#: Modes with an alpha channel (``a``: premultiplied).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def to_rgb(image: Image.Image) -> Image.Image:
    """An image of any PIL mode as 8-bit RGB, with every mode's values read correctly.

    * high bit depth (``I;16*``, ``I``, ``F``): scaled to 8 bits (16-bit range for integers,
      [0, 1] for floats; values outside are clipped), then grey to RGB;
    * transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, a palette with a transparent colour):
      composited onto black, the colour the training crop pads with, so what is transparent
      reads the same whatever colour the file stores under it;
    * everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ...): PIL's conversion.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    scale = _HIGH_DEPTH_SCALE.get(mode)
    if scale is not None:
        values = np.asarray(image, dtype=np.float64) * scale
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image.convert("RGB")


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


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 scaled to [0, 1] and normalised with the ImageNet
    statistics, on the tensor's device: the model's input from a loader batch."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalise expects uint8 images from a pixel pipeline, got {images.dtype}")
    scale, shift = _scale_and_shift(images.device)
    return images.float().mul_(scale).sub_(shift)


@functools.cache
def _scale_and_shift(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / 255 - mean) / std as x * scale - shift, made once per device (normalise runs on
    every batch): one multiply and one subtract instead of two divisions, which at the demo's
    size cost 10% of a forward."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
    return 1.0 / (255.0 * std), mean / std


def build_train_transform(
    height: int,
    width: int,
    *,
    pad: int = 10,
    flip_prob: float = 0.5,
    random_erasing: float = 0.0,
) -> PixelPipeline:
    """Training augmentation of the paper (flip, padded random crop), optional random erasing.

    Output: uint8 tensor (3, height, width) (see
    [`normalise`][duatm.data.transforms.normalise]). ``pad`` black pixels on every side before a
    random ``height x width`` crop (0 disables it); ``random_erasing`` is the probability of
    painting one random rectangle in the mean colour.
    """
    _check_size(height, width)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    _check_probability("flip_prob", flip_prob)
    _check_probability("random_erasing", random_erasing)
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = [v2.RandomHorizontalFlip(flip_prob)]
    if pad:
        steps.append(v2.RandomCrop((height, width), padding=pad, fill=0))
    if random_erasing:
        steps.append(v2.RandomErasing(p=random_erasing, value=list(MEAN_COLOR)))
    steps.append(v2.ToPureTensor())
    return PixelPipeline(_resize_to_uint8(height, width), v2.Compose(steps))


def build_test_transform(height: int, width: int) -> PixelPipeline:
    """Deterministic evaluation pipeline: resize to a uint8 tensor (3, height, width)."""
    _check_size(height, width)
    return PixelPipeline(_resize_to_uint8(height, width), v2.ToPureTensor())
