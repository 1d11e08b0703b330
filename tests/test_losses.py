"""DuATM's three losses against values worked out by hand, and a few SGD steps that lower them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from duatm.losses import (
    DuATMLoss,
    RandomPoolingCrossEntropy,
    batch_hard_triplet,
    decorrelation_loss,
    mine_batch_hard,
    random_pooling_weights,
)
from duatm.models.matching import DualAttentionMatcher

DIST = torch.tensor(
    [
        [0.0, 0.5, 0.3, 0.9],
        [0.5, 0.0, 0.8, 0.2],
        [0.3, 0.8, 0.0, 0.4],
        [0.9, 0.2, 0.4, 0.0],
    ]
)
PIDS = torch.tensor([0, 0, 1, 1])


def test_batch_hard_triplet_by_hand() -> None:
    # anchor 0: hardest positive 0.5, hardest negative min(0.3, 0.9) = 0.3 -> 0.5 - 0.3 + 0.2 = 0.4
    # anchor 1: 0.5 - min(0.8, 0.2) + 0.2 = 0.5;  anchor 2: 0.4 - min(0.3, 0.8) + 0.2 = 0.3
    # anchor 3: 0.4 - min(0.9, 0.2) + 0.2 = 0.4;  mean = 1.6 / 4 = 0.4
    assert batch_hard_triplet(DIST, PIDS, margin=0.2).item() == pytest.approx(0.4)
    # margin 0: anchor terms 0.2, 0.3, 0.1, 0.2 -> mean 0.2; a very negative margin -> 0
    assert batch_hard_triplet(DIST, PIDS, margin=0.0).item() == pytest.approx(0.2)
    assert batch_hard_triplet(DIST, PIDS, margin=-1.0).item() == 0.0


def test_soft_margin_triplet_by_hand() -> None:
    # hardest positive - hardest negative per anchor (as above): 0.2, 0.3, 0.1, 0.2
    expected = sum(math.log1p(math.exp(gap)) for gap in (0.2, 0.3, 0.1, 0.2)) / 4
    got = batch_hard_triplet(DIST, PIDS, margin=5.0, soft=True)
    assert got.item() == pytest.approx(expected)  # the margin plays no part
    loss = DuATMLoss(lambda1=0.0, lambda2=0.0, soft_margin=True)
    sequences = F.normalize(torch.randn(4, 3, 5), dim=-1)
    out = loss(DIST, sequences, PIDS, nn.Linear(5, 2))
    assert out.triplet.item() == pytest.approx(expected)


def test_batch_hard_mining_skips_anchors_without_a_positive() -> None:
    mined = mine_batch_hard(DIST[:3, :3], torch.tensor([0, 0, 1]))
    assert mined.anchors.tolist() == [0, 1]
    assert mined.hardest_positive.tolist() == pytest.approx([0.5, 0.5])
    assert mined.hardest_negative.tolist() == pytest.approx([0.3, 0.8])
    with pytest.raises(ValueError, match="num_instances >= 2"):
        batch_hard_triplet(DIST, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="square"):
        batch_hard_triplet(DIST[:3], PIDS)


def test_decorrelation_by_hand_and_zero_for_orthonormal() -> None:
    # [[1,0],[1,0]]: I - XX^T = [[0,-1],[-1,0]] -> ||.||_F^2 = 2 -> / S^2 = 0.5
    # [[1,0],[.6,.8]]: I - XX^T = [[0,-.6],[-.6,0]] -> 0.72 -> 0.18;  batch mean 0.34
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.6, 0.8]]])
    assert decorrelation_loss(x).item() == pytest.approx(0.34)
    orthonormal = torch.linalg.qr(torch.randn(3, 8, 5))[0].transpose(
        1, 2
    )  # (3, 5, 8) rows orthonormal
    assert decorrelation_loss(orthonormal).item() == pytest.approx(0.0, abs=1e-6)


def test_random_pooling_weights_sum_to_one_and_drop_with_probability_p() -> None:
    batch, length, p = 4000, 16, 0.3
    w = random_pooling_weights(batch, length, p, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(w.sum(1), torch.ones(batch))
    assert (w >= 0).all()
    # Zeros come from drops (U[0,1] draws are never exactly 0 in practice). Binomial with
    # n = 64,000 trials: std = sqrt(p(1-p)/n) = 0.0018, so 5 std = 0.009 is the tolerance.
    drop_rate = (w == 0).float().mean().item()
    assert abs(drop_rate - p) < 5 * math.sqrt(p * (1 - p) / (batch * length))


def test_random_pooling_falls_back_to_uniform_when_all_dropped() -> None:
    w = random_pooling_weights(500, 2, 0.99, generator=torch.Generator().manual_seed(1))
    all_dropped_rows = (w == 0.5).all(1)
    assert all_dropped_rows.sum() > 400  # P(both dropped) = 0.98
    torch.testing.assert_close(w.sum(1), torch.ones(500))
    with pytest.raises(ValueError, match="drop_prob"):
        random_pooling_weights(2, 2, 1.0)


def test_random_pooling_cross_entropy_by_hand() -> None:
    seqs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one sequence, S = 2, D = 2
    classifier = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    w = random_pooling_weights(1, 2, 0.0, generator=torch.Generator().manual_seed(3))[0]
    # z = w0 * e1 + w1 * e2 = (w0, w1); logits = (2 w0, w1); CE for label 0 = logsumexp - 2 w0
    w0, w1 = w.tolist()
    expected = math.log(math.exp(2 * w0) + math.exp(w1)) - 2 * w0
    loss = RandomPoolingCrossEntropy(0.0)(
        seqs, classifier, torch.tensor([0]), generator=torch.Generator().manual_seed(3)
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_combined_loss_weights_each_term() -> None:
    seqs = F.normalize(torch.randn(4, 3, 2), dim=-1)
    classifier = nn.Linear(2, 2)
    loss = DuATMLoss(margin=0.2, lambda1=0.3, lambda2=0.9, drop_prob=0.4)
    torch.manual_seed(5)
    out = loss(DIST, seqs, PIDS, classifier)
    assert out.triplet.item() == pytest.approx(0.4)
    assert out.decorrelation.item() == pytest.approx(decorrelation_loss(seqs).item())
    expected = out.triplet + 0.3 * out.decorrelation + 0.9 * out.cross_entropy
    assert out.total.item() == pytest.approx(expected.item())
    assert set(out.as_floats()) == {"total", "triplet", "decorrelation", "cross_entropy"}


def test_sgd_steps_on_two_identities_lower_the_combined_loss() -> None:
    """An embedding + matcher trained with all three terms: the loss goes down."""
    torch.manual_seed(0)
    dim, length = 8, 4
    inputs = torch.randn(8, length, 6)  # 2 identities x 4 samples, identity signal added below
    pids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    inputs[pids == 1] += 0.5
    embed = nn.Linear(6, dim)
    matcher = DualAttentionMatcher(dim)
    classifier = nn.Linear(dim, 2)
    criterion = DuATMLoss(lambda1=0.1, lambda2=0.5, drop_prob=0.2)
    params = [*embed.parameters(), *matcher.parameters(), *classifier.parameters()]
    optimiser = torch.optim.SGD(params, lr=0.1, momentum=0.9)

    def step() -> float:
        seqs = F.normalize(embed(inputs), dim=-1)
        out = criterion(matcher.pairwise(seqs), seqs, pids, classifier)
        optimiser.zero_grad()
        out.total.backward()
        optimiser.step()
        return out.total.item()

    losses = [step() for _ in range(30)]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
