"""Matcher diagnostics against direct computations, and the validation carve."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from duatm.config import load_config
from duatm.data.records import ImageRecord
from duatm.data.validation import carve_validation, validation_identity_count
from duatm.engine.builders import build_model
from duatm.engine.diagnostics import DIAGNOSTIC_NAMES, format_diagnostics, matcher_diagnostics
from duatm.models.heads import CE_HEADS, build_classifier
from duatm.models.matching import DualAttentionMatcher
from test_matching import padded_batch


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_diagnostics_equal_direct_computations() -> None:
    torch.manual_seed(0)
    matcher = DualAttentionMatcher(8, "dual").eval()
    query, gallery = unit(5, 4, 8, seed=1), unit(7, 4, 8, seed=2)
    with torch.no_grad():
        distances = matcher.pairwise(query, gallery)
    got = matcher_diagnostics(matcher, query, gallery, distances, max_pairs=20)
    assert list(got) == list(DIAGNOSTIC_NAMES)
    assert got["uniform_entropy"] == pytest.approx(math.log(4))
    # Intra attention: every item (all 12 fit in the sample) over its own sequence.
    items = torch.cat([query, gallery])
    with torch.no_grad():
        q = matcher.transform(items.reshape(-1, 8)).view_as(items)
        attention = torch.softmax(q @ items.transpose(1, 2), dim=-1)
    entropy = -(attention * attention.log()).sum(-1).flatten()
    assert got["intra_entropy"] == pytest.approx(float(entropy.mean()), rel=1e-5)
    assert got["intra_entropy_p5"] == pytest.approx(float(entropy.quantile(0.05)), rel=1e-5)
    assert 0 < got["inter_entropy_p5"] <= got["inter_entropy"] <= math.log(4) + 1e-6
    cosines = [float(x[i] @ x[j]) for x in items for i in range(4) for j in range(4) if i != j]
    assert got["element_cosine"] == pytest.approx(sum(cosines) / len(cosines), rel=1e-5)
    pooled = torch.cdist(query.mean(1), gallery.mean(1))
    rho = [spearmanr(distances[i], pooled[i]).statistic for i in range(5)]
    assert got["rank_corr_meanvec"] == pytest.approx(sum(rho) / 5, rel=1e-6)


def test_diagnostics_of_sequences_of_different_lengths() -> None:
    torch.manual_seed(0)
    matcher = DualAttentionMatcher(8, "dual", attention_scale=3.0).eval()
    query = [unit(1, n, 8, seed=10 + n)[0] for n in (3, 5, 4)]
    gallery = [unit(1, n, 8, seed=20 + n)[0] for n in (6, 2, 5, 3)]
    (xq, nq), (xg, ng) = padded_batch(query, 5, seed=1), padded_batch(gallery, 6, seed=2)
    with torch.no_grad():
        distances = matcher.pairwise(xq, xg, q_lengths=nq, g_lengths=ng)
        got = matcher_diagnostics(matcher, query, gallery, distances, max_pairs=30)
        # Intra attention (logits times the scale, 3) of every item (all 7 are sampled).
        rows = [torch.softmax(3.0 * matcher.transform(x) @ x.T, dim=-1) for x in query + gallery]
    entropy = torch.cat([-(w * w.log()).sum(-1) for w in rows])
    assert got["intra_entropy"] == pytest.approx(float(entropy.mean()), rel=1e-5)
    cosines = [
        sum(float(x[i] @ x[j]) for i in range(len(x)) for j in range(len(x)) if i != j)
        / (len(x) * (len(x) - 1))
        for x in query + gallery
    ]
    assert got["element_cosine"] == pytest.approx(sum(cosines) / 7, rel=1e-5)
    means = [torch.stack([x.mean(0) for x in items]) for items in (query, gallery)]
    pooled = torch.cdist(*means)
    rho = [spearmanr(distances[i], pooled[i]).statistic for i in range(3)]
    assert got["rank_corr_meanvec"] == pytest.approx(sum(rho) / 3, rel=1e-6)
    assert math.log(2) < got["uniform_entropy"] < math.log(6)
    assert 0 < got["inter_entropy"] < got["uniform_entropy"]
    # Equal lengths given one by one: the same numbers as the batch.
    batch_q, batch_g = unit(4, 5, 8, seed=1), unit(6, 5, 8, seed=2)
    with torch.no_grad():
        d = matcher.pairwise(batch_q, batch_g)
    one_by_one = matcher_diagnostics(matcher, list(batch_q), list(batch_g), d, max_pairs=30)
    batched = matcher_diagnostics(matcher, batch_q, batch_g, d, max_pairs=30)
    assert one_by_one == pytest.approx(batched, rel=1e-5)
    with pytest.raises(ValueError, match="need their distances"):
        matcher_diagnostics(matcher, query, gallery)


def test_average_pooling_has_no_attention_and_ranks_like_itself() -> None:
    matcher = DualAttentionMatcher(8, "avgpool")
    query, gallery = unit(3, 4, 8, seed=3), unit(6, 4, 8, seed=4)
    with torch.no_grad():
        got = matcher_diagnostics(matcher, query, gallery, matcher.pairwise(query, gallery))
    assert math.isnan(got["intra_entropy"]) and math.isnan(got["inter_entropy"])
    assert got["rank_corr_meanvec"] == pytest.approx(1.0)
    assert "attention" not in format_diagnostics(got)
    assert "rank corr. with mean pooling 1.00" in format_diagnostics(got)
    assert "mAP with mean pooling" not in format_diagnostics(got)
    assert "mAP with mean pooling of the same features 42.5" in format_diagnostics(
        {**got, "meanvec_mAP": 0.425}
    )


def test_collapsed_sequences_show_uniform_attention_and_cosine_one() -> None:
    matcher = DualAttentionMatcher(8, "dual").eval()
    collapsed = unit(6, 1, 8, seed=5).expand(6, 4, 8).contiguous()
    got = matcher_diagnostics(matcher, collapsed[:3], collapsed[3:], torch.rand(3, 3))
    assert got["element_cosine"] == pytest.approx(1.0)
    assert got["intra_entropy"] == pytest.approx(math.log(4))
    assert got["inter_entropy_p5"] == pytest.approx(math.log(4))


def test_attention_scale_multiplies_every_logit() -> None:
    torch.manual_seed(0)
    plain = DualAttentionMatcher(8, "dual").eval()
    sharp = DualAttentionMatcher(8, "dual", attention_scale=3.0).eval()
    sharp.load_state_dict(plain.state_dict())
    xa, xb = unit(4, 5, 8, seed=6), unit(4, 6, 8, seed=7)
    # Scaling the transform's output is scaling BN's affine parameters (ReLU is homogeneous).
    with torch.no_grad():
        plain.transform[1].weight.mul_(3.0)
        plain.transform[1].bias.mul_(3.0)
    torch.testing.assert_close(sharp(xa, xb), plain(xa, xb))
    torch.testing.assert_close(sharp.pairwise(xa, xb), plain.pairwise(xa, xb))
    with pytest.raises(ValueError, match="attention_scale must be positive"):
        DualAttentionMatcher(8, attention_scale=0.0)


def test_identity_init_starts_attention_as_content_similarity() -> None:
    # Non-negative unit elements pass ReLU unchanged; a fresh BN in eval mode is the identity
    # (up to eps), so with W = I each element's strongest logit is its own cosine of 1.
    torch.manual_seed(0)
    x = F.normalize(torch.rand(3, 12, 8) ** 4, dim=-1)
    identity = DualAttentionMatcher(8, "dual", attention_init="identity", attention_scale=20.0)
    torch.testing.assert_close(identity.transform[0].weight, torch.eye(8))
    intra = identity.eval().attention(x, x).intra_a
    assert (intra.argmax(-1) == torch.arange(12)).all()
    random = DualAttentionMatcher(8, "dual", attention_scale=20.0).eval()
    assert not (random.attention(x, x).intra_a.argmax(-1) == torch.arange(12)).all()
    with pytest.raises(ValueError, match="attention_init must be one of"):
        DualAttentionMatcher(8, attention_init="eye")
    cfg = load_config("synthped", ["model.attention_init=identity", "model.dim=8"])
    built = build_model(cfg, num_classes=3, load_pretrained=False).matcher.transform
    torch.testing.assert_close(built[0].weight, torch.eye(8))


def test_cross_entropy_heads() -> None:
    torch.manual_seed(0)
    pooled = torch.randn(6, 8)
    for kind in CE_HEADS:
        assert build_classifier(kind, 8, 5)(pooled).shape == (6, 5)
    cosine = build_classifier("cosine", 8, 5, scale=10.0)
    logits = cosine(pooled)
    expected = 10.0 * F.normalize(pooled, dim=-1) @ F.normalize(cosine.weight, dim=-1).T
    torch.testing.assert_close(logits, expected)
    # Only the direction of the pooled vector matters to the cosine head, not its length.
    torch.testing.assert_close(cosine(0.1 * pooled), logits)
    bnneck = build_classifier("bnneck", 8, 5).train()
    torch.testing.assert_close(bnneck(3 * pooled), bnneck(pooled), rtol=1e-4, atol=1e-4)
    assert not bnneck.norm.bias.requires_grad
    with pytest.raises(ValueError, match="ce head must be one of"):
        build_classifier("arcface", 8, 5)


def records(pid: int, cameras: list[int]) -> list[ImageRecord]:
    return [ImageRecord(f"{pid}_{i}.jpg", pid, cam) for i, cam in enumerate(cameras)]


def test_validation_carve_holds_whole_identities_out() -> None:
    train = records(0, [0, 0, 1, 1]) + records(1, [0, 0, 0]) + records(2, [0, 1, 2])
    train += records(3, [1, 2, 2]) + records(4, [0, 1, 1, 3])
    split = carve_validation(train, 2, seed=0)
    held_out = {r.pid for r in split.query}
    # pid 1 (one camera) and pid 2 (one image per camera) could give no valid query.
    assert len(held_out) == 2 and held_out <= {0, 3, 4}
    assert {r.pid for r in split.gallery} == held_out
    # Every validation query has a true match from another camera in the gallery.
    for q in split.query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in split.gallery)
    # One query per camera seen at least twice, the rest in the gallery.
    for pid in held_out:
        mine = [r for r in train if r.pid == pid]
        twice = {c for c in {r.camid for r in mine} if sum(r.camid == c for r in mine) >= 2}
        assert sorted(r.camid for r in split.query if r.pid == pid) == sorted(twice)
    # The rest trains, relabelled 0..N-1, and the carve depends on nothing but the seed.
    assert sorted({r.pid for r in split.train}) == [0, 1, 2]
    assert len(split.train) == len(train) - len(split.query) - len(split.gallery)
    assert carve_validation(train, 2, seed=0) == split
    with pytest.raises(ValueError, match="only 3 training identities appear in two or more"):
        carve_validation(train, 4)
    with pytest.raises(ValueError, match="leaves fewer than two"):
        carve_validation(train[:4] + records(3, [1, 2, 2]), 1)


def test_validation_carve_holds_out_neighbouring_identities() -> None:
    # 12 eligible identities in look-alike groups of 3 consecutive numbers: every carve of 6 is
    # a run of 6 neighbours (wrapping round), so it holds at least one whole group.
    train = [r for pid in range(12) for r in records(pid, [0, 0, 1])]
    for seed in range(20):
        held_out = sorted({r.pid for r in carve_validation(train, 6, seed=seed).query})
        start = next(p for p in held_out if (p - 1) % 12 not in held_out)
        assert held_out == sorted((start + i) % 12 for i in range(6))
        groups = {p // 3 for p in held_out}
        assert any(all(3 * g + k in held_out for k in range(3)) for g in groups)


def test_validation_identity_count_reads_counts_and_fractions() -> None:
    assert validation_identity_count(0, 751) == 0
    assert validation_identity_count(100, 751) == 100
    assert validation_identity_count(0.1, 751) == 75
    assert validation_identity_count(0.01, 50) == 2  # at least two when asked for any
