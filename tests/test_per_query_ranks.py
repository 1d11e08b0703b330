"""per_query_ranks: each query's AP and first true-match rank, what rank_metrics averages."""

from __future__ import annotations

import numpy as np
import pytest

from duatm.metrics import per_query_ranks, rank_metrics


def by_hand(dist, q_pids, g_pids, q_cams, g_cams):
    """AP and first-hit rank per query, one query at a time (protocol of DESIGN §3)."""
    aps, firsts = [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        kept = [g for g in order if not (g_pids[g] == q_pids[i] and g_cams[g] == q_cams[i])]
        hits = [rank for rank, g in enumerate(kept, start=1) if g_pids[g] == q_pids[i]]
        aps.append(np.mean([(k + 1) / rank for k, rank in enumerate(hits)]) if hits else 0.0)
        firsts.append(hits[0] if hits else 0)
    return np.array(aps), np.array(firsts)


def test_per_query_values_and_their_mean_is_map() -> None:
    rng = np.random.default_rng(0)
    dist = rng.random((12, 40))
    q_pids, g_pids = rng.integers(0, 5, 12), rng.integers(0, 5, 40)
    q_cams, g_cams = rng.integers(0, 3, 12), rng.integers(0, 3, 40)
    q_pids[0] = 99  # no match at all: skipped
    ranks = per_query_ranks(dist, q_pids, g_pids, q_cams, g_cams)
    ap, first = by_hand(dist, q_pids, g_pids, q_cams, g_cams)
    np.testing.assert_allclose(ranks.ap, ap)
    np.testing.assert_array_equal(ranks.first_rank, first)
    assert ranks.num_rel[0] == 0
    valid = ranks.num_rel > 0
    overall = rank_metrics(dist, q_pids, g_pids, q_cams, g_cams)
    assert overall.mAP == pytest.approx(ranks.ap[valid].mean(), abs=1e-15)
    assert overall.num_valid_queries == int(valid.sum())
