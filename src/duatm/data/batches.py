"""The two batch layouts the loaders yield, read one way by training and evaluation.

Image loaders yield ``{"image": uint8 (B, 3, H, W), ...}``; video loaders
(:func:`duatm.data.video_dataset.collate_clips`) yield ``{"clip": uint8 (B, T, 3, H, W),
"length": (B,), ...}``. Code that feeds a model asks :func:`batch_pixels` instead of branching on
the dataset kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor


def batch_pixels(batch: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
    """(pixels, lengths) of a loader batch: ``lengths`` is the (B,) clip lengths of a
    zero-padded video batch, and None for images and for clips that all have the full length."""
    if "clip" in batch:
        clips, lengths = batch["clip"], batch["length"]
        return clips, None if bool((lengths == clips.shape[1]).all()) else lengths
    return batch["image"], None
