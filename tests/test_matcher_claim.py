"""The matcher's claim, controlled: where pooling cannot separate identities, attention can.

Sequences are built so that average pooling has nothing to work with inside a look-alike pair:
the two identities of a pair have the same mean element (identities sharing their mean), every
sample presents its elements in a random order (misaligned parts) and a few of them are replaced
by noise (corrupted positions). A small linear encoder is trained with the real matcher and the
real DuATM losses; DuATM (dual) must then beat AvePool by a wide margin on held-out identities,
and the same training with uniform attention (every logit 0) must not, which is what makes this
test fail if the attention stops attending.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from duatm.losses import DuATMLoss
from duatm.metrics import rank_metrics
from duatm.models.matching import DualAttentionMatcher

LENGTH, INPUT_DIM, DIM = 8, 16, 32
# The attention scale of the shipped CPU recipe; the paper's 1.0 also separates, more slowly.
ATTENTION_SCALE = 4.0


def look_alike_pairs(g: torch.Generator, pairs: int) -> Tensor:
    """(2 * pairs, S, d) element templates; both identities of a pair share the mean element."""
    identities = []
    for mean in torch.randn(pairs, INPUT_DIM, generator=g):
        for _ in range(2):
            deviation = torch.randn(LENGTH, INPUT_DIM, generator=g)
            identities.append(mean + deviation - deviation.mean(0))
    return torch.stack(identities)


def observe(templates: Tensor, pids: Tensor, g: torch.Generator) -> Tensor:
    """Samples of the given identities: shuffled elements, noise, two corrupted positions."""
    x = templates[pids]
    n = len(pids)
    order = torch.argsort(torch.rand(n, LENGTH, generator=g), dim=1)
    x = torch.gather(x, 1, order[..., None].expand_as(x))
    x = x + 0.3 * torch.randn(x.shape, generator=g)
    corrupted = torch.argsort(torch.rand(n, LENGTH, generator=g), dim=1)[:, :2]
    noise = 2 * torch.randn(n, 2, INPUT_DIM, generator=g)
    return x.scatter(1, corrupted[..., None].expand(-1, -1, INPUT_DIM), noise)


class Encoder(nn.Module):
    """Linear map to D and L2 normalisation: the contract of a sequence extractor."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(INPUT_DIM, DIM)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.fc(x), dim=-1)


def train_and_test(mode: str, *, uniform_attention: bool = False, seed: int = 0) -> float:
    """Test-set mAP after training an encoder + matcher of ``mode`` on other identities."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train, test = look_alike_pairs(g, 10), look_alike_pairs(g, 10)
    encoder = Encoder()
    matcher = DualAttentionMatcher(DIM, mode, attention_scale=ATTENTION_SCALE)
    if uniform_attention:
        matcher._filter = lambda *seqs: [torch.zeros_like(x) for x in seqs]  # type: ignore[method-assign]
    classifier = nn.Linear(DIM, len(train))
    criterion = DuATMLoss(margin=0.2, lambda1=0.1, lambda2=0.5, drop_prob=0.2)
    params = [*encoder.parameters(), *matcher.parameters(), *classifier.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for _ in range(120):
        pids = torch.randperm(len(train), generator=g)[:8].repeat_interleave(4)
        sequences = encoder(observe(train, pids, g))
        loss = criterion(matcher.pairwise(sequences), sequences, pids, classifier).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    encoder.eval()
    matcher.eval()
    q_pids = torch.arange(len(test)).repeat_interleave(2)
    g_pids = torch.arange(len(test)).repeat_interleave(4)
    with torch.no_grad():
        distances = matcher.pairwise(
            encoder(observe(test, q_pids, g)), encoder(observe(test, g_pids, g))
        )
    cameras_q, cameras_g = np.zeros(len(q_pids), int), np.ones(len(g_pids), int)
    return rank_metrics(distances.numpy(), q_pids, g_pids, cameras_q, cameras_g).mAP


@pytest.fixture(scope="module")
def avgpool_map() -> float:
    return train_and_test("avgpool")


def test_pooling_cannot_tell_look_alikes_apart(avgpool_map: float) -> None:
    # Pooling separates the pairs but not their members: about half the gallery's true matches
    # of a query sit behind its look-alike's, so mAP stays far from 1.
    assert avgpool_map < 0.8


def test_dual_attention_beats_pooling_by_a_wide_margin(avgpool_map: float) -> None:
    dual = train_and_test("dual")
    assert dual > 0.95
    assert dual > avgpool_map + 0.2


def test_uniform_attention_is_no_better_than_pooling(avgpool_map: float) -> None:
    # Uniform attention makes every refined and aligned vector a sequence mean: AvePool.
    uniform = train_and_test("dual", uniform_attention=True)
    assert uniform < avgpool_map + 0.1
