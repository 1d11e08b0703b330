"""A torch Dataset over tracklet records: clips of decoded, transformed frames with their labels.

It reuses the image pixel pipelines (``data/transforms.py``): ``prepare`` per frame, then one
``augment`` call on the whole clip, so a clip gets one flip, one crop and one erased rectangle
for all its frames, as a video of one person should. Items stay uint8; the model normalises
them on its device (:func:`duatm.data.transforms.normalise` works on any leading shape).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import Dataset

from duatm.data.clips import ClipSampler
from duatm.data.image_dataset import (
    MAX_LOGGED_FILES,
    SkippedImage,
    decode_images,
)
from duatm.data.records import TrackletRecord
from duatm.data.transforms import PixelPipeline, read_image

logger = logging.getLogger(__name__)


class VideoDataset(Dataset[dict[str, Any]]):
    """Items ``dict(clip=uint8 Tensor[T, 3, H, W], length=T, pid=int, camid=int, index=int)``.

    ``sampler`` picks the frames of each clip (:class:`~duatm.data.clips.ClipSampler`): a fixed
    ``T`` for training and the paper's test clips, the tracklet's own length in the ``all`` mode
    (batch those with :func:`collate_clips`, which pads).

    By default an unreadable frame raises :class:`~duatm.data.transforms.ImageReadError` naming
    it when a clip that needs it is loaded. With ``skip_broken=True`` every frame is decoded once
    here, up front; unreadable frames are dropped from their tracklet (``skipped`` lists them),
    a tracklet left without frames is dropped, and a warning gives both counts.

    With ``cache=True`` every frame is decoded and resized once, here, into one uint8 tensor
    (frames x 3 x H x W bytes: 12.5 GB for MARS's 509,914 training frames at 128 x 64), and
    loading a clip only gathers its frames and runs the augmentation. Forked loader workers
    share the tensor without copying it.
    """

    def __init__(
        self,
        records: Sequence[TrackletRecord],
        transform: PixelPipeline,
        sampler: ClipSampler,
        *,
        skip_broken: bool = False,
        cache: bool = False,
    ) -> None:
        for i, record in enumerate(records):
            if not isinstance(record, TrackletRecord):
                raise TypeError(
                    f"VideoDataset takes TrackletRecord items; item {i} is {type(record).__name__}"
                )
            if not record.paths:
                raise ValueError(f"VideoDataset: tracklet {i} (pid {record.pid}) has no frames")
        self.transform = transform
        self.sampler = sampler
        self.records = list(records)
        self.skipped: list[SkippedImage] = []
        #: All cached frames (F, 3, H, W) and where each tracklet's frames start in it (N + 1,).
        self.frames: torch.Tensor | None = None
        self.offsets: torch.Tensor | None = None
        if skip_broken or cache:
            self._decode_up_front(skip_broken=skip_broken, cache=cache)

    def _decode_up_front(self, *, skip_broken: bool, cache: bool) -> None:
        paths = [path for record in self.records for path in record.paths]
        decoded = decode_images(paths, self.transform, skip_broken=skip_broken, keep=cache)
        self.skipped = decoded.broken
        readable = set(decoded.readable)
        kept: list[TrackletRecord] = []
        lengths: list[int] = []
        position = 0
        for record in self.records:
            good = [p for p in range(position, position + len(record.paths)) if p in readable]
            position += len(record.paths)
            if not good:
                continue
            kept.append(replace(record, paths=tuple(paths[p] for p in good)))
            lengths.append(len(good))
        dropped = len(self.records) - len(kept)
        self.records = kept
        if cache:
            # The readable frames, in order: exactly the frames of the kept tracklets.
            self.frames = decoded.prepared
            self.offsets = torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0)
        if self.skipped:
            named = ", ".join(s.path for s in self.skipped[:MAX_LOGGED_FILES])
            logger.warning(
                "skipped %d unreadable frame(s) of %d, dropping %d tracklet(s) left without "
                "frames: %s",
                len(self.skipped),
                len(paths),
                dropped,
                named,
            )

    @property
    def pids(self) -> list[int]:
        """Identity of every tracklet, in index order (what an identity sampler needs)."""
        return [r.pid for r in self.records]

    @property
    def camids(self) -> list[int]:
        """Camera of every tracklet, in index order."""
        return [r.camid for r in self.records]

    @property
    def lengths(self) -> list[int]:
        """Number of frames of every tracklet (the clip length of the ``all`` mode)."""
        return [len(r.paths) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        chosen = self.sampler(len(record.paths))
        if self.frames is None:
            clip = self._decode(record, chosen)
        else:
            assert self.offsets is not None
            start = int(self.offsets[index])
            clip = self.frames[torch.tensor(chosen, dtype=torch.int64) + start]
        clip = self.transform.augment(clip)
        return {
            "clip": clip,
            "length": len(chosen),
            "pid": record.pid,
            "camid": record.camid,
            "index": index,
        }

    def _decode(self, record: TrackletRecord, chosen: Sequence[int]) -> torch.Tensor:
        """The chosen frames, each decoded once however often a circular clip repeats it."""
        distinct = sorted(set(chosen))
        prepared = {
            i: self.transform.prepare(read_image(record.paths[i])).as_subclass(torch.Tensor)
            for i in distinct
        }
        return torch.stack([prepared[i] for i in chosen])


def collate_clips(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch items of :class:`VideoDataset`: clips zero-padded to (B, T_max, 3, H, W).

    ``length`` is a (B,) int64 tensor of each clip's real frame count: frames at positions
    ``>= length[b]`` of clip ``b`` are padding and must not enter any computation. With fixed
    clip lengths nothing is padded and this is a plain stack.
    """
    if not items:
        raise ValueError("collate_clips needs at least one item")
    lengths = [int(item["length"]) for item in items]
    for item, length in zip(items, lengths, strict=True):
        if item["clip"].shape[0] != length:
            raise ValueError(
                f"item {item['index']}: clip has {item['clip'].shape[0]} frames, length says "
                f"{length}"
            )
    first = items[0]["clip"]
    clips = first.new_zeros((len(items), max(lengths), *first.shape[1:]))
    for b, item in enumerate(items):
        clips[b, : lengths[b]] = item["clip"]
    return {
        "clip": clips,
        "length": torch.tensor(lengths, dtype=torch.int64),
        "pid": torch.tensor([int(item["pid"]) for item in items], dtype=torch.int64),
        "camid": torch.tensor([int(item["camid"]) for item in items], dtype=torch.int64),
        "index": torch.tensor([int(item["index"]) for item in items], dtype=torch.int64),
    }
