"""A torch Dataset over image records: decoded, transformed pixels with their labels."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from PIL import Image
from torch.utils.data import Dataset

from duatm.data.records import ImageRecord
from duatm.data.transforms import ImageReadError, read_image

logger = logging.getLogger(__name__)

#: How many unreadable files the warning names before it just counts.
MAX_LOGGED_FILES = 5


class SkippedImage(NamedTuple):
    """An image left out because it could not be decoded, and why."""

    path: str
    reason: str


class ImageDataset(Dataset[dict[str, Any]]):
    """Items ``dict(image=Tensor[3, H, W], pid=int, camid=int, index=int)`` from image records.

    By default an unreadable file raises :class:`ImageReadError` naming it when it is loaded.
    With ``skip_broken=True`` every image is decoded once here, up front, and the unreadable
    ones are left out: ``skipped`` lists them and a warning says how many, and ``records`` /
    ``pids`` describe what remains, so samplers index the filtered list. Checking up front is
    what keeps batches whole and the count honest; it costs one extra decode per image.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable[[Image.Image], Any],
        *,
        skip_broken: bool = False,
    ) -> None:
        for i, record in enumerate(records):
            if not isinstance(record, ImageRecord):
                raise TypeError(
                    f"ImageDataset takes ImageRecord items; item {i} is {type(record).__name__}"
                )
        self.transform = transform
        self.skipped: list[SkippedImage] = []
        if skip_broken:
            self.records, self.skipped = find_broken(records)
            if self.skipped:
                named = ", ".join(s.path for s in self.skipped[:MAX_LOGGED_FILES])
                logger.warning(
                    "skipped %d unreadable image(s) of %d: %s",
                    len(self.skipped),
                    len(records),
                    named,
                )
        else:
            self.records = list(records)

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
        image = self.transform(read_image(record.path))
        return {"image": image, "pid": record.pid, "camid": record.camid, "index": index}


def find_broken(
    records: Sequence[ImageRecord],
) -> tuple[list[ImageRecord], list[SkippedImage]]:
    """Split records into those whose image decodes and those whose image does not."""
    good: list[ImageRecord] = []
    broken: list[SkippedImage] = []
    for record in records:
        try:
            read_image(record.path)
        except ImageReadError as exc:
            broken.append(SkippedImage(record.path, str(exc.__cause__ or exc)))
        else:
            good.append(record)
    return good, broken
