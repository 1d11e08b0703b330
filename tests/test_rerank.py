"""k-reciprocal re-ranking against a loop-by-loop transcription of Zhong et al. (CVPR 2017)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from duatm.metrics import re_ranking
from duatm.metrics import rerank as rerank_module


def transcribed_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value):
    """The paper's algorithm written out with loops, in the conventions of the reference code:
    squared distances scaled by each item's largest (column of the assembled matrix), neighbour
    lists ranked by (distance, index), R(i, k) from the k + 1 first, the strict "> 2/3" test,
    exp(-d) weights normalised to 1, local query expansion, Jaccard = 1 - sum min / sum max."""
    num_q, num_g = q_g.shape
    n = num_q + num_g
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    squared = np.power(full, 2).astype(np.float32)
    d = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        largest = max(squared[m, i] for m in range(n))
        for j in range(n):
            d[i, j] = squared[j, i] / largest
    ranked = [sorted(range(n), key=lambda j, i=i: (d[i, j], j)) for i in range(n)]

    def reciprocal(i, k):
        return [j for j in ranked[i][: k + 1] if i in ranked[j][: k + 1]]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for candidate in r:
            r_half = reciprocal(candidate, round(k1 / 2))
            if len(set(r_half) & set(r)) > 2 / 3 * len(r_half):
                expanded |= set(r_half)
        members = sorted(expanded)
        if members:
            w = np.exp(-d[i, members])
            v[i, members] = w / w.sum()
    if k2 > 1:
        v = np.array([np.mean([v[j] for j in ranked[i][:k2]], axis=0) for i in range(n)])
    out = np.zeros((num_q, num_g))
    for q in range(num_q):
        for g in range(num_g):
            j = num_q + g
            inter = sum(min(v[q, k], v[j, k]) for k in range(n))
            # The paper's union, sum max = sum v_q + sum v_g - inter, with both rows taken to
            # sum to 1. The reference keeps this form even for rows that do not (an item that
            # is not in its own k + 1 first has an empty row, and so may an expanded row).
            union = 2 - inter
            jaccard = 1 - inter / union
            out[q, g] = (1 - lambda_value) * jaccard + lambda_value * d[q, j]
    return out


def clustered_distances(seed: int, num_q: int, num_g: int, dim: int = 4):
    """Euclidean distances of points around a few centres (identities), as re-id data looks."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dim)) * 2
    q = centres[rng.integers(0, 6, num_q)] + rng.normal(size=(num_q, dim))
    g = centres[rng.integers(0, 6, num_g)] + rng.normal(size=(num_g, dim))

    def dist(a, b):
        return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).astype(np.float32)

    return dist(q, g), dist(q, q), dist(g, g)


def tied_distances(seed: int, num_q: int, num_g: int, levels: int = 3):
    """Symmetric small-integer distances with a zero diagonal: most entries tie."""
    rng = np.random.default_rng(seed)
    n = num_q + num_g
    full = rng.integers(1, levels + 1, size=(n, n)).astype(np.float32)
    full = np.triu(full, 1)
    full = full + full.T
    return full[:num_q, num_q:], full[:num_q, :num_q], full[num_q:, num_q:]


@pytest.mark.parametrize(
    ("k1", "k2", "lambda_value"),
    [(20, 6, 0.3), (5, 1, 0.3), (7, 3, 0.0), (4, 2, 1.0), (3, 25, 0.5)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_transcription_on_clustered_data(seed, k1, k2, lambda_value):
    q_g, q_q, g_g = clustered_distances(seed, 9, 30)
    expected = transcribed_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)
    got = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
    assert got.dtype == np.float32 and got.shape == (9, 30)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize(("seed", "levels", "k1"), [(0, 2, 6), (1, 3, 20), (2, 4, 9), (3, 1, 4)])
def test_matches_transcription_with_ties(seed, levels, k1):
    """Equal distances rank by index; with one level every off-diagonal distance ties."""
    q_g, q_q, g_g = tied_distances(seed, 7, 25, levels)
    expected = transcribed_re_ranking(q_g, q_q, g_g, k1, 4, 0.3)
    got = re_ranking(q_g, q_q, g_g, k1=k1, k2=4, lambda_value=0.3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


def test_ties_that_push_an_item_out_of_its_own_list():
    """Several items at distance 0 from each other: an item can fall outside its own k + 1
    first (lower indices rank first), leaving its sets empty; both sides agree."""
    q_g, q_q, g_g = tied_distances(4, 5, 12, 3)
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    full[:8, :8] = 0.0
    q_g, q_q, g_g = full[:5, 5:], full[:5, :5], full[5:, 5:]
    expected = transcribed_re_ranking(q_g, q_q, g_g, 3, 2, 0.3)
    got = re_ranking(q_g, q_q, g_g, k1=3, k2=2, lambda_value=0.3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


def test_asymmetric_inputs_read_by_column_as_the_reference():
    rng = np.random.default_rng(5)
    q_g, q_q, g_g = (
        rng.uniform(0.1, 2.0, size=s).astype(np.float32) for s in [(6, 20), (6, 6), (20, 20)]
    )
    expected = transcribed_re_ranking(q_g, q_q, g_g, 6, 3, 0.3)
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, 6, 3, 0.3), expected, atol=2e-6)


def test_float64_and_integer_inputs_square_before_rounding():
    q_g, q_q, g_g = clustered_distances(3, 6, 18)
    q_g64, q_q64, g_g64 = (m.astype(np.float64) * 1.1 for m in (q_g, q_q, g_g))
    expected = transcribed_re_ranking(q_g64, q_q64, g_g64, 8, 3, 0.3)
    np.testing.assert_allclose(re_ranking(q_g64, q_q64, g_g64, 8, 3, 0.3), expected, atol=2e-6)
    q_gi, q_qi, g_gi = tied_distances(6, 6, 18, 5)
    ints = [m.astype(np.int64) for m in (q_gi, q_qi, g_gi)]
    np.testing.assert_allclose(
        re_ranking(*ints, 8, 3, 0.3), transcribed_re_ranking(*ints, 8, 3, 0.3), atol=2e-6
    )


def test_more_neighbours_than_items():
    q_g, q_q, g_g = clustered_distances(7, 3, 5)
    expected = transcribed_re_ranking(q_g, q_q, g_g, 20, 6, 0.3)
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g), expected, atol=2e-6)


def test_small_blocks_give_the_same_numbers(monkeypatch):
    """Block sizes are a memory bound only: tiny blocks (one item, few terms) change nothing."""
    q_g, q_q, g_g = clustered_distances(8, 11, 37)
    whole = re_ranking(q_g, q_q, g_g, k1=9, k2=4)
    monkeypatch.setattr(rerank_module, "_BLOCK_ENTRIES", 64)
    blocked = re_ranking(q_g, q_q, g_g, k1=9, k2=4)
    np.testing.assert_array_equal(blocked, whole)


def test_torch_in_torch_out():
    q_g, q_q, g_g = clustered_distances(9, 5, 15)
    got = re_ranking(torch.from_numpy(q_g), torch.from_numpy(q_q), torch.from_numpy(g_g), 6, 3)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), re_ranking(q_g, q_q, g_g, 6, 3))


def test_re_ranking_separates_identities_better_on_clustered_data():
    """Sanity of direction: on well-clustered data the re-ranked top-1 is never worse here."""
    from duatm.metrics import rank_metrics

    rng = np.random.default_rng(11)
    centres = rng.normal(size=(8, 6)) * 3
    q_ids, g_ids = rng.integers(0, 8, 16), np.repeat(np.arange(8), 6)
    q = centres[q_ids] + rng.normal(size=(16, 6)) * 1.2
    g = centres[g_ids] + rng.normal(size=(48, 6)) * 1.2

    def dist(a, b):
        return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).astype(np.float32)

    q_cams, g_cams = np.zeros(16, np.int64), np.ones(48, np.int64)
    plain = rank_metrics(dist(q, g), q_ids, g_ids, q_cams, g_cams, max_rank=5)
    reranked = rank_metrics(
        re_ranking(dist(q, g), dist(q, q), dist(g, g), k1=6, k2=3),
        q_ids,
        g_ids,
        q_cams,
        g_cams,
        max_rank=5,
    )
    assert reranked.mAP >= plain.mAP


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((np.ones((2, 3)), np.ones((2, 2)), np.ones((4, 4))), {}, "g_g: expected shape (3, 3)"),
        ((np.ones((2, 3)), np.ones((3, 3)), np.ones((3, 3))), {}, "q_q: expected shape (2, 2)"),
        ((np.ones((0, 3)), np.ones((0, 0)), np.ones((3, 3))), {}, "q_g: expected a non-empty"),
        ((np.full((2, 3), np.nan), np.ones((2, 2)), np.ones((3, 3))), {}, "q_g: contains NaN"),
        ((np.ones((2, 3), bool), np.ones((2, 2)), np.ones((3, 3))), {}, "q_g: expected real"),
        ((np.ones((2, 3)), np.ones((2, 2)), np.ones((3, 3))), {"k1": 0}, "k1: expected a positive"),
        ((np.ones((2, 3)), np.ones((2, 2)), np.ones((3, 3))), {"k2": 1.5}, "k2: expected"),
        (
            (np.ones((2, 3)), np.ones((2, 2)), np.ones((3, 3))),
            {"lambda_value": 1.5},
            "lambda_value: expected a number in [0, 1]",
        ),
        ((np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((3, 3))), {}, "query 0 is at distance 0"),
        (
            (np.ones((2, 3)), np.ones((2, 2)), np.diag([1.0, np.inf, 1.0])),
            {},
            "g_g: contains NaN or infinite distances (those of gallery item 1)",
        ),
        ((np.ones((2, 3)), np.ones((2, 2)), np.full((3, 3), 1e30)), {}, "overflow float32"),
    ],
)
def test_bad_input_is_named(args, kwargs, message):
    with pytest.raises(ValueError) as err:
        re_ranking(*args, **kwargs)
    assert message in str(err.value)
