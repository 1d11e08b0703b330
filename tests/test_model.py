"""Sequence extractor and the DuATM model: shapes, ordering, freezing, parameter groups."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchvision import models as tvm

from duatm.models.backbones import DENSENET_TINY_CONFIG, build_backbone
from duatm.models.duatm import DuATM
from duatm.models.extractor import ImageSequenceExtractor

IMAGES = (4, 3, 64, 32)  # densenet_tiny with drop_last_pool: 4 x 2 map, S = 8


class IdentityMap(nn.Module):
    """A stand-in backbone whose feature map is its input, so the map is known exactly."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return x


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.fixture
def model() -> DuATM:
    torch.manual_seed(0)
    return DuATM("densenet_tiny", dim=16, num_classes=5, drop_last_pool=True)


def test_extractor_reads_positions_row_major_through_one_fc():
    torch.manual_seed(0)
    channels, height, width, dim = 5, 3, 4, 6  # h != w so a column-major read would differ
    extractor = ImageSequenceExtractor(IdentityMap(channels), dim)
    fmap = torch.randn(2, channels, height, width)
    seqs = extractor(fmap)
    assert seqs.shape == (2, height * width, dim)
    weight, bias = extractor.embed.weight, extractor.embed.bias
    for b in range(2):
        for i in range(height):
            for j in range(width):
                projected = weight @ fmap[b, :, i, j] + bias
                torch.testing.assert_close(seqs[b, i * width + j], projected / projected.norm())


def test_extractor_outputs_unit_vectors_for_a_real_backbone():
    extractor = ImageSequenceExtractor(build_backbone("densenet_tiny"), 16)
    seqs = extractor(torch.randn(3, 3, 128, 64))
    assert seqs.shape == (3, 4 * 2, 16)
    torch.testing.assert_close(seqs.norm(dim=-1), torch.ones(3, 8))


def test_extractor_rejects_backbone_without_out_channels():
    with pytest.raises(TypeError, match="out_channels"):
        ImageSequenceExtractor(nn.Identity(), 16)


def test_forward_gives_unit_sequences_and_classifier_fits_them(model):
    seqs = model(torch.randn(*IMAGES))
    assert seqs.shape == (4, 8, 16)
    torch.testing.assert_close(seqs.norm(dim=-1), torch.ones(4, 8))
    assert model.classifier(seqs.mean(1)).shape == (4, 5)
    assert model.matcher.mode == "dual"


def test_extract_sequences_matches_eval_forward_without_autograd(model):
    model.eval()
    images = torch.randn(*IMAGES)
    seqs = model.extract_sequences(images)
    assert not seqs.requires_grad and seqs.is_inference()
    assert not model.training  # mode is the caller's business
    with torch.no_grad():
        torch.testing.assert_close(seqs, model(images))


def test_pairwise_distances_match_matcher_on_each_pair(model):
    model.eval()
    with torch.no_grad():
        seqs = model(torch.randn(*IMAGES))
        dist = model.pairwise_distances(seqs)
        n = seqs.shape[0]
        rows = seqs.repeat_interleave(n, dim=0)
        cols = seqs.repeat(n, 1, 1)
        expected = model.matcher(rows, cols).view(n, n)
    assert dist.shape == (n, n)
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    torch.testing.assert_close(dist[off_diagonal], expected[off_diagonal], atol=1e-5, rtol=1e-4)
    # Self-distances are 0 literally; the expanded form cancels to sqrt(rounding noise).
    assert dist.diagonal().abs().max() < 1e-3


def test_pairwise_distance_gradient_reaches_backbone_and_head(model):
    model.train()
    model.pairwise_distances(model(torch.randn(*IMAGES))).sum().backward()
    for param in (
        model.backbone.features.conv0.weight,
        model.extractor.embed.weight,
        model.matcher.transform[0].weight,
    ):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_frozen_backbone_gets_no_gradient_and_keeps_bn_statistics(model):
    model.freeze_backbone()
    model.train()
    assert model.backbone_frozen
    assert all(not p.requires_grad for p in model.backbone_parameters())
    assert all(p.requires_grad for p in model.head_parameters())
    assert all(not bn.training for bn in _batchnorms(model.backbone))
    assert all(bn.training for bn in _batchnorms(model.matcher))
    stats = [bn.running_mean.clone() for bn in _batchnorms(model.backbone)]

    model.pairwise_distances(model(torch.randn(*IMAGES))).sum().backward()

    assert all(p.grad is None for p in model.backbone_parameters())
    assert model.extractor.embed.weight.grad is not None
    for before, bn in zip(stats, _batchnorms(model.backbone), strict=True):
        torch.testing.assert_close(bn.running_mean, before)


def test_unfreeze_restores_training_of_backbone(model):
    model.freeze_backbone()
    model.eval()
    model.unfreeze_backbone()
    assert not model.backbone_frozen
    assert all(p.requires_grad for p in model.backbone_parameters())
    assert not model.backbone.training  # follows the model, which is in eval mode
    model.train()
    assert all(bn.training for bn in _batchnorms(model.backbone))
    before = model.backbone.features.norm0.running_mean.clone()
    model(torch.randn(*IMAGES))
    assert not torch.equal(model.backbone.features.norm0.running_mean, before)


def test_parameter_groups_partition_the_model(model):
    backbone = {id(p) for p in model.backbone_parameters()}
    head = {id(p) for p in model.head_parameters()}
    assert backbone and head and not backbone & head
    assert backbone | head == {id(p) for p in model.parameters()}
    assert id(model.classifier.weight) in head and id(model.extractor.embed.weight) in head
    assert id(model.backbone.features.conv0.weight) in backbone


def test_pretrained_path_reaches_the_backbone(tmp_path):
    reference = tvm.DenseNet(**DENSENET_TINY_CONFIG)
    path = tmp_path / "tiny.pth"
    torch.save(reference.state_dict(), path)
    model = DuATM("densenet_tiny", dim=8, num_classes=3, pretrained=str(path))
    torch.testing.assert_close(
        model.backbone.features.conv0.weight, reference.features.conv0.weight
    )


def test_invalid_num_classes_is_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        DuATM("densenet_tiny", dim=8, num_classes=0)
