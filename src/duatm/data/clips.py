"""Which frames of a tracklet form one clip: the paper's sub-sequence sampling, as a small object.

The paper trains on random sub-sequences of 16 consecutive frames and tests on sub-sequences of
64 consecutive frames; a tracklet shorter than the clip is sampled circularly (paper footnote 2).
How we read the test-time rule, and the ``all`` mode that uses every frame, are explained in
``docs/design.md#video-clips``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Where a clip starts: anywhere (training augmentation), at the first frame, or centred.
CLIP_STARTS = ("random", "first", "middle")
#: Evaluation modes: one fixed-length clip per tracklet, or every frame of it.
TEST_CLIP_MODES = ("clip", "all")


@dataclass(frozen=True, slots=True)
class ClipSampler:
    """``length`` consecutive frame indices of a tracklet, starting as ``start`` says.

    ``length=None`` is the ``all`` mode: every frame, in order, so clips have the tracklet's own
    length. A tracklet with fewer frames than ``length`` is read circularly (0, 1, .., n-1, 0,
    1, ..) so every clip has exactly ``length`` frames; with ``start="random"`` the loop then
    starts at a random frame, which shifts its walking phase like a random start does on a long
    tracklet.

    ``start="random"`` draws from torch's global generator, the one that the image augmentation
    also uses: a DataLoader seeds it per worker from its own generator, so clips depend only on
    the loader's seed and resuming training draws the same clips.
    """

    length: int | None
    start: str = "first"

    def __post_init__(self) -> None:
        if self.length is not None and self.length < 1:
            raise ValueError(f"clip length must be >= 1 or None (every frame), got {self.length}")
        if self.start not in CLIP_STARTS:
            raise ValueError(
                f"clip start must be one of {', '.join(CLIP_STARTS)}, got {self.start!r}"
            )

    @property
    def is_random(self) -> bool:
        """Whether two calls on the same tracklet may give different frames."""
        return self.start == "random" and self.length is not None

    def __call__(self, num_frames: int) -> list[int]:
        """Frame indices (into the tracklet's frames, in temporal order) of one clip."""
        if num_frames < 1:
            raise ValueError(f"a tracklet needs at least one frame, got {num_frames}")
        if self.length is None:
            return list(range(num_frames))
        length = self.length
        # Last start that keeps the clip inside the tracklet; a short tracklet loops from any frame.
        last = num_frames - length if num_frames >= length else num_frames - 1
        if self.start == "random":
            first = int(torch.randint(last + 1, ()).item()) if last > 0 else 0
        elif self.start == "middle" and num_frames >= length:
            first = last // 2
        else:
            first = 0
        return [(first + k) % num_frames for k in range(length)]


def evaluation_clip_sampler(mode: str, length: int, start: str = "first") -> ClipSampler:
    """The evaluation sampler of ``data.test_clip_mode``: ``length`` frames, or all of them."""
    if mode not in TEST_CLIP_MODES:
        raise ValueError(
            f"test clip mode must be one of {', '.join(TEST_CLIP_MODES)}, got {mode!r}"
        )
    if start == "random":
        raise ValueError("evaluation clips cannot start at random: results must be repeatable")
    return ClipSampler(None if mode == "all" else length, start)
