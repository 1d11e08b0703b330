"""Feature-sequence extractors: input batch -> (B, S, D) sequences of unit vectors.

The contract every extractor keeps (the matcher, losses and evaluation rely on it): a ``.backbone``
CNN (what gets frozen early in training), a ``.dim`` (D), and ``forward`` returning a
(B, S, D) tensor whose every row x^i is L2-normalised (docs/design.md#sequences). The image
extractor is here; a video one (frame CNN + bidirectional RNN, S = frames) will sit beside it
with the same contract.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ImageSequenceExtractor"]


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
        channels = getattr(backbone, "out_channels", None)
        if not isinstance(channels, int) or channels < 1:
            raise TypeError(
                f"backbone {type(backbone).__name__} must expose a positive int .out_channels "
                f"(its feature-map channels); got {channels!r}"
            )
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
