"""The DuATM network: sequence extractor + dual attention matcher + training-only classifier."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from duatm.data.transforms import normalise
from duatm.models.backbones import build_backbone
from duatm.models.extractor import ImageSequenceExtractor, VideoSequenceExtractor
from duatm.models.heads import build_classifier
from duatm.models.matching import DualAttentionMatcher

__all__ = ["MODEL_KINDS", "DuATM"]

#: What a model reads: images (S = feature-map positions) or video clips (S = frames).
MODEL_KINDS = ("image", "video")


class DuATM(nn.Module):
    """Dual Attention Matching Network (Si et al., CVPR 2018) for images or video.

    Parts: ``extractor`` (backbone CNN -> (B, S, D) unit-vector sequences: an
    :class:`~duatm.models.extractor.ImageSequenceExtractor` for ``kind="image"``, a
    :class:`~duatm.models.extractor.VideoSequenceExtractor` for ``kind="video"``), ``matcher``
    (the learned sequence distance, ablation ``mode`` fixed at construction) and ``classifier``
    (the head of the training cross-entropy on randomly pooled sequences, ``ce_head`` one of
    :data:`duatm.models.heads.CE_HEADS`; evaluation never touches it). The matcher, losses and
    engine are the same for both kinds; video inputs are clips (B, T, 3, H, W), optionally with
    per-clip ``lengths`` for a zero-padded batch.

    The paper trains with the backbone frozen first and then end to end:
    [`freeze_backbone`][duatm.models.DuATM.freeze_backbone] and
    [`unfreeze_backbone`][duatm.models.DuATM.unfreeze_backbone] switch between the two, and
    [`backbone_parameters`][duatm.models.DuATM.backbone_parameters] /
    [`head_parameters`][duatm.models.DuATM.head_parameters] give the two optimiser parameter groups.

    Args:
        backbone: one of [`BACKBONE_NAMES`][duatm.models.backbones.BACKBONE_NAMES].
        dim: D, the sequence element size (256 in the paper).
        num_classes: number of training identities (classifier outputs).
        mode: matcher mode, one of [`MATCHER_MODES`][duatm.models.matching.MATCHER_MODES].
        pretrained: backbone weights: ``None``, ``"imagenet"`` or a state-dict path
            (see [`build_backbone`][duatm.models.backbones.build_backbone]).
        drop_last_pool: output stride 16 instead of 32 (twice as many rows and columns).
        kind: ``"image"`` or ``"video"``.
        rnn: the video extractor's recurrent layer, ``"gru"`` or ``"lstm"`` (see
            :class:`~duatm.models.extractor.VideoSequenceExtractor`).
        rnn_hidden: its units per direction (default ``dim``).
        frame_chunk: video frames per backbone call in eval mode.
        ce_head: classifier of the pooled-sequence cross-entropy (``"paper"``: one FC layer).
        ce_scale: logit scale of the ``"cosine"`` head.
        attention_scale: factor on every attention logit of the matcher (1 = the paper).
        attention_init: how the matcher's filter layer starts, ``"random"`` (the paper leaves
            it open) or ``"identity"``.
    """

    def __init__(
        self,
        backbone: str = "densenet121",
        dim: int = 256,
        *,
        num_classes: int,
        mode: str = "dual",
        pretrained: str | os.PathLike[str] | None = None,
        drop_last_pool: bool = False,
        kind: str = "image",
        rnn: str = "gru",
        rnn_hidden: int | None = None,
        frame_chunk: int = 64,
        ce_head: str = "paper",
        ce_scale: float = 16.0,
        attention_scale: float = 1.0,
        attention_init: str = "random",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes}")
        if kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
        self.kind = kind
        trunk = build_backbone(backbone, pretrained, drop_last_pool=drop_last_pool)
        self.extractor: ImageSequenceExtractor | VideoSequenceExtractor = (
            ImageSequenceExtractor(trunk, dim)
            if kind == "image"
            else VideoSequenceExtractor(
                trunk, dim, rnn=rnn, hidden=rnn_hidden, frame_chunk=frame_chunk
            )
        )
        self.matcher = DualAttentionMatcher(
            dim, mode, attention_scale=attention_scale, attention_init=attention_init
        )
        self.classifier = build_classifier(ce_head, dim, num_classes, scale=ce_scale)
        self._backbone_frozen = False

    @property
    def backbone(self) -> nn.Module:
        return self.extractor.backbone

    @property
    def backbone_frozen(self) -> bool:
        return self._backbone_frozen

    def forward(self, inputs: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Images (B, 3, H, W) or clips (B, T, 3, H, W) -> feature sequences (B, S, D),
        differentiable. ``lengths`` (B,): clip lengths of a zero-padded video batch."""
        return self._extract(inputs, lengths, flip=False)

    @torch.inference_mode()
    def extract_sequences(
        self, inputs: Tensor, *, lengths: Tensor | None = None, flip: bool = False
    ) -> Tensor:
        """Sequences for evaluation or indexing, without autograd bookkeeping.

        ``inputs`` are float (normalised) or uint8 pixels as the loaders give them (normalised
        here; a video model does it chunk by chunk of frames). ``lengths`` (video only) makes
        ``inputs`` a zero-padded batch of clips; their sequences are zero beyond each length.
        ``flip=True`` averages each input's sequence with its mirror image's (test-time
        augmentation, see the extractors' ``mirror_averaged``).

        This does not switch modes: call ``model.eval()`` first, otherwise BatchNorm uses (and
        updates) batch statistics. The result is an inference tensor (no grad, not usable in
        autograd later).
        """
        return self._extract(inputs, lengths, flip=flip)

    def _extract(self, inputs: Tensor, lengths: Tensor | None, *, flip: bool) -> Tensor:
        extract = self.extractor.mirror_averaged if flip else self.extractor
        if isinstance(self.extractor, VideoSequenceExtractor):
            return extract(inputs, lengths)
        if lengths is not None:
            raise ValueError("lengths are for video clips; an image model takes none")
        if inputs.dtype == torch.uint8:
            inputs = normalise(inputs)
        return extract(inputs)

    def pairwise_distances(self, seqs: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, B) matching distances of a batch against itself (differentiable; for the triplet
        loss's batch-hard mining); ``lengths`` for a zero-padded batch of variable length."""
        return self.matcher.pairwise(seqs, q_lengths=lengths)

    def freeze_backbone(self) -> None:
        """Stop training the backbone: no gradients, and its BatchNorm stays in eval mode (running
        statistics used and kept unchanged) even while the rest of the model trains."""
        for param in self.backbone.parameters():
            param.requires_grad_(False)
        self._backbone_frozen = True
        self.backbone.eval()

    def unfreeze_backbone(self) -> None:
        """Train the backbone again; it follows the model's train/eval mode from now on."""
        for param in self.backbone.parameters():
            param.requires_grad_(True)
        self._backbone_frozen = False
        self.backbone.train(self.training)

    def train(self, mode: bool = True) -> DuATM:
        super().train(mode)
        if self._backbone_frozen:
            self.backbone.eval()
        return self

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the backbone CNN (the group frozen first, then fine-tuned)."""
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter outside the backbone: extractor FC (and recurrent layer), matcher and
        classifier."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        return (p for p in self.parameters() if id(p) not in backbone_ids)
