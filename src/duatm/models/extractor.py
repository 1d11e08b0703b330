"""Feature-sequence extractors: input batch -> (B, S, D) sequences of unit vectors.

The contract every extractor keeps (the matcher, losses and evaluation rely on it): a ``.backbone``
CNN (what gets frozen early in training), a ``.dim`` (D), and ``forward`` returning a
(B, S, D) tensor whose every row x^i is L2-normalised (docs/design.md#sequences), plus
``mirror_averaged`` for flip test-time augmentation. :class:`ImageSequenceExtractor` reads an
image's feature map position by position; :class:`VideoSequenceExtractor` reads a clip frame by
frame through a bidirectional recurrent layer (S = frames, docs/design.md#recurrent-layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from duatm.data.transforms import normalise

__all__ = ["RNN_KINDS", "ImageSequenceExtractor", "VideoSequenceExtractor"]

#: Recurrent layers the video extractor offers (GRU by default; docs/design.md#recurrent-layer).
RNN_KINDS = ("gru", "lstm")


def _out_channels(backbone: nn.Module) -> int:
    channels = getattr(backbone, "out_channels", None)
    if not isinstance(channels, int) or channels < 1:
        raise TypeError(
            f"backbone {type(backbone).__name__} must expose a positive int .out_channels "
            f"(its feature-map channels); got {channels!r}"
        )
    return channels


class ImageSequenceExtractor(nn.Module):
    """Image -> sequence of its feature-map positions, each projected to D and L2-normalised.

    Positions are read in row-major order (row by row, left to right within a row), so element
    ``i * w + j`` is map position (i, j); S = h * w (32 for DenseNet-121 at 256 x 128). One FC
    layer C -> D is shared by all positions (the paper's 1024 -> 256 layer).

    Args:
        backbone: module mapping (B, 3, H, W) to a feature map (B, C, h, w); it must expose
            ``.out_channels`` (C), as every
            [`duatm.models.backbones.build_backbone`][duatm.models.backbones.build_backbone] result
            does.
        dim: D, the length of each sequence element.
    """

    def __init__(self, backbone: nn.Module, dim: int) -> None:
        super().__init__()
        channels = _out_channels(backbone)
        if dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim}")
        self.backbone = backbone
        self.dim = dim
        self.embed = nn.Linear(channels, dim)

    def forward(self, images: Tensor) -> Tensor:
        return self._sequences(self._feature_map(images))

    def mirror_averaged(self, images: Tensor) -> Tensor:
        """Flip test-time augmentation: the mean of the image's and its mirror's sequences.

        The mirror's feature map is flipped back before it is read, so element ``i * w + j`` of
        both sequences describes the same body part; the mean is L2-normalised again to keep the
        unit-vector contract.
        """
        direct = self._sequences(self._feature_map(images))
        mirrored = self._sequences(self._feature_map(images.flip(-1)).flip(-1))
        return F.normalize(direct + mirrored, dim=-1)

    def _feature_map(self, images: Tensor) -> Tensor:
        if images.dim() != 4:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        fmap = self.backbone(images)
        if fmap.dim() != 4:
            raise ValueError(
                f"backbone must return a (B, C, h, w) feature map, got {tuple(fmap.shape)}"
            )
        return fmap

    def _sequences(self, fmap: Tensor) -> Tensor:
        positions = fmap.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major
        return F.normalize(self.embed(positions), dim=-1)


class VideoSequenceExtractor(nn.Module):
    """Clip -> sequence of its frames (docs/design.md#recurrent-layer).

    Each frame goes through the backbone and is globally average-pooled to one frame vector
    (C values); a bidirectional recurrent layer (``rnn``: GRU or LSTM, ``hidden`` units per
    direction) runs over the T frame vectors; at every time step the two directions' hidden
    states are concatenated (2 x hidden), projected to D by one FC layer and L2-normalised.
    Element t of the sequence describes frame t in the context of the whole clip, so S = T.

    ``forward(clips, lengths=None)`` takes clips (B, T, 3, H, W), float (normalised) or uint8
    (the loaders' pixels, normalised here chunk by chunk), and optionally ``lengths`` (B,) for
    a zero-padded batch of shorter clips: only real frames go through the backbone (padding
    never enters a BatchNorm statistic), the recurrence runs on packed sequences (padding never
    enters a hidden state), and padded positions of the output are zero, as the matcher's
    ``pairwise(..., q_lengths=...)`` expects.

    While the backbone is in eval mode (evaluation, or frozen in training) frames go through it
    ``frame_chunk`` at a time and only their pooled vectors are kept, so a long tracklet never
    holds every frame's activations (nor every frame in float) at once; per-frame BatchNorm in
    eval mode makes this exact. In training mode the backbone sees all frames of the batch in
    one call, so BatchNorm's batch statistics are those of the whole batch.

    Args:
        backbone: module mapping (N, 3, H, W) to a feature map (N, C, h, w) with ``.out_channels``.
        dim: D, the length of each sequence element.
        rnn: ``"gru"`` (default) or ``"lstm"``.
        hidden: units per direction of the recurrent layer (default: ``dim``).
        frame_chunk: frames per backbone call while the backbone is in eval mode.
    """

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        *,
        rnn: str = "gru",
        hidden: int | None = None,
        frame_chunk: int = 64,
    ) -> None:
        super().__init__()
        channels = _out_channels(backbone)
        hidden = dim if hidden is None else hidden
        if dim < 1 or hidden < 1:
            raise ValueError(f"dim and hidden must be positive ints, got {dim} and {hidden}")
        if rnn not in RNN_KINDS:
            raise ValueError(f"rnn must be one of {', '.join(RNN_KINDS)}, got {rnn!r}")
        if frame_chunk < 1:
            raise ValueError(f"frame_chunk must be a positive int, got {frame_chunk}")
        self.backbone = backbone
        self.dim = dim
        self.frame_chunk = frame_chunk
        layer = nn.GRU if rnn == "gru" else nn.LSTM
        self.recurrent: nn.GRU | nn.LSTM = layer(
            channels, hidden, batch_first=True, bidirectional=True
        )
        self.embed = nn.Linear(2 * hidden, dim)

    def forward(self, clips: Tensor, lengths: Tensor | None = None) -> Tensor:
        lengths = self._check(clips, lengths)
        return self._sequences(self._frame_vectors(clips, lengths), lengths)

    def mirror_averaged(self, clips: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Flip test-time augmentation: the mean of the clip's and its mirrored clip's sequences
        (every frame flipped left-right; frames stay in time order, so element t of both
        describes frame t), L2-normalised again. Padded positions stay zero."""
        lengths = self._check(clips, lengths)
        direct = self._sequences(self._frame_vectors(clips, lengths), lengths)
        mirrored = self._sequences(self._frame_vectors(clips.flip(-1), lengths), lengths)
        return F.normalize(direct + mirrored, dim=-1)

    @staticmethod
    def _check(clips: Tensor, lengths: Tensor | None) -> Tensor | None:
        """Shape checks; ``lengths`` as a CPU int64 tensor, or None when every clip is full."""
        if clips.dim() != 5 or clips.shape[2] != 3:
            raise ValueError(f"expected clips of shape (B, T, 3, H, W), got {tuple(clips.shape)}")
        if clips.shape[1] == 0:
            raise ValueError("clips have no frames (T = 0); every clip needs at least one")
        if lengths is None:
            return None
        lengths = torch.as_tensor(lengths).to("cpu", torch.int64)
        num, size = clips.shape[:2]
        if lengths.shape != (num,):
            raise ValueError(
                f"lengths must have one entry per clip ({num}), got shape {tuple(lengths.shape)}"
            )
        if not bool(((lengths >= 1) & (lengths <= size)).all()):
            raise ValueError(
                f"lengths must lie in [1, {size}] (the padded clip length), got values from "
                f"{int(lengths.min())} to {int(lengths.max())}"
            )
        return None if bool((lengths == size).all()) else lengths

    def _frame_vectors(self, clips: Tensor, lengths: Tensor | None) -> Tensor:
        """(B, T, C) globally pooled backbone maps of the real frames (zero at padding)."""
        num, size = clips.shape[:2]
        frames = clips.flatten(0, 1)
        valid = None
        if lengths is not None:
            valid = (torch.arange(size) < lengths[:, None]).flatten().to(clips.device)
            frames = frames[valid]
        pooled = self._pool(frames)
        if valid is not None:
            full = pooled.new_zeros(num * size, pooled.shape[-1])
            full[valid] = pooled
            pooled = full
        return pooled.view(num, size, -1)

    def _pool(self, frames: Tensor) -> Tensor:
        """(N, 3, H, W) frames -> (N, C): backbone, then the mean over map positions."""
        chunk = len(frames) if self.backbone.training else self.frame_chunk
        pooled = []
        for part in frames.split(chunk):
            if part.dtype == torch.uint8:
                part = normalise(part)
            fmap = self.backbone(part)
            if fmap.dim() != 4:
                raise ValueError(
                    f"backbone must return a (N, C, h, w) feature map, got {tuple(fmap.shape)}"
                )
            pooled.append(fmap.mean((2, 3)))
        return torch.cat(pooled) if len(pooled) > 1 else pooled[0]

    def _sequences(self, vectors: Tensor, lengths: Tensor | None) -> Tensor:
        """(B, T, C) frame vectors -> (B, T, D) unit vectors (zero at padded positions)."""
        if lengths is None:
            states, _ = self.recurrent(vectors)
            return F.normalize(self.embed(states), dim=-1)
        packed = pack_padded_sequence(vectors, lengths, batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(
            self.recurrent(packed)[0], batch_first=True, total_length=vectors.shape[1]
        )
        sequences = F.normalize(self.embed(states), dim=-1)
        padding = torch.arange(vectors.shape[1]) >= lengths[:, None]
        return sequences.masked_fill(padding.to(sequences.device)[:, :, None], 0.0)
