"""A torch Dataset over image records: decoded, transformed pixels with their labels."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset

from duatm.data.records import ImageRecord
from duatm.data.transforms import ImageReadError, PixelPipeline, read_image

logger = logging.getLogger(__name__)

#: How many unreadable files the warning names before it just counts.
MAX_LOGGED_FILES = 5


class SkippedImage(NamedTuple):
    """An image left out because it could not be decoded, and why."""

    path: str
    reason: str


class ImageDataset(Dataset[dict[str, Any]]):
    """Items ``dict(image=uint8 Tensor[3, H, W], pid=int, camid=int, index=int)`` from image records.

    By default an unreadable file raises [`ImageReadError`][duatm.data.transforms.ImageReadError]
    naming it when it is loaded.
    With ``skip_broken=True`` every image is decoded once here, up front, and the unreadable
    ones are left out: ``skipped`` lists them and a warning says how many, and ``records`` /
    ``pids`` describe what remains, so samplers index the filtered list. Checking up front is
    what keeps batches whole and the count honest; it costs one extra decode per image.

    With ``cache=True`` every image is decoded and resized once, here, into one uint8 tensor
    (N x 3 x H x W bytes: 1.3 GB for Market-1501's training set at 256 x 128), and loading only
    runs the random augmentation. Worth it when decoding rivals the model's cost (small models,
    few CPU cores); forked loader workers share the tensor without copying it.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: PixelPipeline,
        *,
        skip_broken: bool = False,
        cache: bool = False,
    ) -> None:
        for i, record in enumerate(records):
            if not isinstance(record, ImageRecord):
                raise TypeError(
                    f"ImageDataset takes ImageRecord items; item {i} is {type(record).__name__}"
                )
        self.transform = transform
        self.skipped: list[SkippedImage] = []
        self.records = list(records)
        self.cached: torch.Tensor | None = None
        if skip_broken or cache:
            decoded = decode_images(
                [r.path for r in records], transform, skip_broken=skip_broken, keep=cache
            )
            self.records = [self.records[i] for i in decoded.readable]
            self.skipped = decoded.broken
            if cache:
                self.cached = decoded.prepared
            if self.skipped:
                named = ", ".join(s.path for s in self.skipped[:MAX_LOGGED_FILES])
                logger.warning(
                    "skipped %d unreadable image(s) of %d: %s",
                    len(self.skipped),
                    len(records),
                    named,
                )

    @property
    def pids(self) -> list[int]:
        """Identity of every item, in index order (what an identity sampler needs)."""
        return [r.pid for r in self.records]

    @property
    def camids(self) -> list[int]:
        """Camera of every item, in index order."""
        return [r.camid for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        if self.cached is None:
            image = self.transform(read_image(record.path))
        else:
            image = self.transform.augment(self.cached[index])
        return {"image": image, "pid": record.pid, "camid": record.camid, "index": index}


class DecodedImages(NamedTuple):
    """What :func:`decode_images` found: positions of the readable paths, the unreadable ones,
    and the prepared pixels of the readable ones, one uint8 tensor (N, 3, H, W) (empty unless
    asked to keep them)."""

    readable: list[int]
    broken: list[SkippedImage]
    prepared: torch.Tensor


def decode_images(
    paths: Sequence[str], transform: PixelPipeline, *, skip_broken: bool, keep: bool
) -> DecodedImages:
    """Decode every path once, to check it and, with ``keep``, to cache its prepared pixels.

    The pixels go straight into one tensor allocated for all paths at the first image, so the
    cache never needs twice its size (a list of images, then their stack). An unreadable image
    raises :class:`ImageReadError` unless ``skip_broken``.
    """
    readable: list[int] = []
    broken: list[SkippedImage] = []
    prepared: torch.Tensor | None = None
    for position, path in enumerate(paths):
        try:
            image = read_image(path)
        except ImageReadError as exc:
            if not skip_broken:
                raise
            broken.append(SkippedImage(path, str(exc.__cause__ or exc)))
            continue
        if keep:
            pixels = transform.prepare(image).as_subclass(torch.Tensor)
            if prepared is None:
                prepared = torch.empty((len(paths), *pixels.shape), dtype=pixels.dtype)
            prepared[len(readable)] = pixels
        readable.append(position)
    if prepared is None:
        return DecodedImages(readable, broken, torch.empty(0, dtype=torch.uint8))
    return DecodedImages(readable, broken, prepared[: len(readable)])
