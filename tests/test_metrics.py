"""Tests for duatm.metrics: hand-worked CMC/AP/INP cases and a per-query reference loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from duatm.metrics import (
    NoValidQueryError,
    RankMetrics,
    RankResult,
    evaluate_rank,
    format_rank_table,
    rank_metrics,
    rank_metrics_to_dict,
)
from duatm.metrics.rank import count_ahead, rank_metrics_from_positions


def reference_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, keep_same_camera, q_self):
    """Straightforward per-query loop in the style of the field's Python evaluation.

    Written independently of the library: sort each row (stable), drop excluded items, then read
    CMC/AP/INP off the 0/1 match vector of the kept list.
    """
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        match = g_pids[order] == q_pids[i]
        remove = np.zeros(len(order), dtype=bool)
        if not keep_same_camera:
            remove |= match & (g_camids[order] == q_camids[i])
        if q_self is not None:
            remove |= order == q_self[i]
        raw = match[~remove].astype(np.int64)
        if raw.sum() == 0:
            continue
        hits = raw.cumsum()
        cmc = np.minimum(hits, 1).astype(np.float64)
        cmc = np.concatenate([cmc, np.full(max(0, max_rank - len(cmc)), cmc[-1])])[:max_rank]
        all_cmc.append(cmc)
        precision = hits / np.arange(1, len(raw) + 1)
        all_ap.append((precision * raw).sum() / raw.sum())
        last = np.flatnonzero(raw)[-1]
        all_inp.append(raw.sum() / (last + 1.0))
    return np.mean(all_cmc, axis=0), np.mean(all_ap), np.mean(all_inp), len(all_ap)


# Shared hand-built case. Gallery: (pid, camid)
#   g0 (1, 0)   g1 (2, 1)   g2 (1, 1)   g3 (3, 0)   g4 (1, 2)
G_PIDS = np.array([1, 2, 1, 3, 1])
G_CAMS = np.array([0, 1, 1, 0, 2])
Q_PIDS = np.array([1, 2, 3])
Q_CAMS = np.array([0, 1, 1])
DIST = np.array(
    [
        [0.1, 0.2, 0.3, 0.4, 0.5],  # q0 sorted: g0 g1 g2 g3 g4
        [0.5, 0.1, 0.2, 0.3, 0.4],  # q1 sorted: g1 g2 g3 g4 g0
        [0.3, 0.2, 0.1, 0.5, 0.4],  # q2 sorted: g2 g1 g0 g4 g3
    ]
)


def test_same_camera_matches_are_removed_before_ranking():
    m = rank_metrics(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5)
    # q0 (pid 1, cam 0): g0 is pid 1 in cam 0 -> removed. Kept list g1 g2 g3 g4,
    #    hits (pid 1) at ranks 2 (g2) and 4 (g4).  AP = (1/2 + 2/4) / 2 = 0.5, INP = 2/4 = 0.5
    # q1 (pid 2, cam 1): its only gallery match g1 is in cam 1 -> removed -> skipped.
    # q2 (pid 3, cam 1): g3 is pid 3 in cam 0 -> kept, at rank 5. AP = 1/5, INP = 1/5
    # Valid queries: q0 (first hit rank 2), q2 (first hit rank 5).
    assert m.num_valid_queries == 2
    np.testing.assert_allclose(m.cmc, [0 / 2, 1 / 2, 1 / 2, 1 / 2, 2 / 2], rtol=0, atol=1e-15)
    assert m.mAP == pytest.approx((0.5 + 0.2) / 2, abs=1e-15)
    assert m.mINP == pytest.approx((0.5 + 0.2) / 2, abs=1e-15)


def test_keep_same_camera_keeps_same_camera_matches():
    m = rank_metrics(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5, keep_same_camera=True)
    # q0: nothing removed: g0 g1 g2 g3 g4 -> hits at ranks 1, 3, 5
    #     AP = (1/1 + 2/3 + 3/5) / 3 = 34/45, INP = 3/5
    # q1: g1 (pid 2) is now kept, at rank 1: AP = 1, INP = 1
    # q2: g3 at rank 5 as before: AP = 1/5, INP = 1/5
    # First hits at ranks 1, 1, 5.
    assert m.num_valid_queries == 3
    np.testing.assert_allclose(m.cmc, [2 / 3, 2 / 3, 2 / 3, 2 / 3, 3 / 3], rtol=0, atol=1e-15)
    assert m.mAP == pytest.approx((34 / 45 + 1 + 1 / 5) / 3, abs=1e-15)
    assert m.mINP == pytest.approx((3 / 5 + 1 + 1 / 5) / 3, abs=1e-15)


def test_query_gallery_index_removes_only_the_query_image():
    # Single-camera data where the gallery holds the query images themselves.
    # Gallery: g0 (pid 7) = query 0's image, g1 (pid 8), g2 (pid 7), g3 (pid 8) = query 1's image.
    g_pids = np.array([7, 8, 7, 8])
    cams = np.zeros(4, dtype=np.int64)
    dist = np.array(
        [
            [0.0, 0.4, 0.5, 0.1],  # q0 sorted: g0 g3 g1 g2 -> drop g0: g3 g1 g2, hit g2 at rank 3
            [0.3, 0.2, 0.1, 0.0],  # q1 sorted: g3 g2 g1 g0 -> drop g3: g2 g1 g0, hit g1 at rank 2
        ]
    )
    m = rank_metrics(
        dist,
        [7, 8],
        g_pids,
        [0, 0],
        cams,
        max_rank=3,
        keep_same_camera=True,
        query_gallery_index=[0, 3],
    )
    # AP: q0 = 1/3, q1 = 1/2; INP equal to AP with one true match each.
    assert m.num_valid_queries == 2
    np.testing.assert_allclose(m.cmc, [0, 1 / 2, 1], rtol=0, atol=1e-15)
    assert m.mAP == pytest.approx((1 / 3 + 1 / 2) / 2, abs=1e-15)
    assert m.mINP == pytest.approx((1 / 3 + 1 / 2) / 2, abs=1e-15)
    # Without the index the query images count as rank-1 hits: AP q0 = (1/1 + 2/4) / 2,
    # q1 = (1/1 + 2/3) / 2 -- the index is what keeps the evaluation honest.
    loose = rank_metrics(dist, [7, 8], g_pids, [0, 0], cams, max_rank=3, keep_same_camera=True)
    assert loose.mAP == pytest.approx(((1 + 2 / 4) / 2 + (1 + 2 / 3) / 2) / 2, abs=1e-15)


def test_ties_are_broken_by_gallery_index():
    # Query pid 1, cam 0. g3 is closest; g0, g1, g2 tie at 0.5.
    g_pids = np.array([2, 1, 1, 3])
    g_cams = np.array([1, 1, 2, 1])
    dist = np.array([[0.5, 0.5, 0.5, 0.2]])
    m = rank_metrics(dist, [1], g_pids, [0], g_cams, max_rank=4)
    # Stable order: g3 g0 g1 g2 -> hits (g1, g2) at ranks 3 and 4.
    # AP = (1/3 + 2/4) / 2 = 5/12, INP = 2/4.
    np.testing.assert_allclose(m.cmc, [0, 0, 1, 1], rtol=0, atol=0)
    assert m.mAP == pytest.approx(5 / 12, abs=1e-15)
    assert m.mINP == pytest.approx(0.5, abs=1e-15)
    # Same distances, pids of g0 and g1 swapped: (1, 2, 1, 3). Order is still g3 g0 g1 g2,
    # now miss hit miss hit: the hit with the lower gallery index goes first among the ties.
    m2 = rank_metrics(dist, [1], np.array([1, 2, 1, 3]), [0], g_cams, max_rank=4)
    # Hits at ranks 2 and 4: AP = (1/2 + 2/4) / 2 = 1/2.
    np.testing.assert_allclose(m2.cmc, [0, 1, 1, 1], rtol=0, atol=0)
    assert m2.mAP == pytest.approx(0.5, abs=1e-15)


def test_max_rank_beyond_gallery_repeats_the_last_value():
    # 3 gallery items, query pid 1 cam 0: g0 (1, cam 0) removed, g1 (2), g2 (1, cam 1).
    m = rank_metrics([[0.1, 0.2, 0.3]], [1], [1, 2, 1], [0], [0, 1, 1], max_rank=10)
    # Kept list g1 g2: first hit at rank 2; only 2 ranks exist, CMC stays 1 after that.
    assert m.cmc.shape == (10,)
    np.testing.assert_array_equal(m.cmc, [0] + [1] * 9)
    assert m.mAP == pytest.approx(0.5, abs=1e-15)


def test_no_valid_query_explains_same_camera_exclusion():
    # Single-camera data: every true match shares the query's camera.
    dist = np.array([[0.1, 0.2], [0.4, 0.3]])  # each query nearest to its own pid
    with pytest.raises(NoValidQueryError) as info:
        rank_metrics(dist, [1, 2], [1, 2], [0, 0], [0, 0])
    message = str(info.value)
    assert "2 queries" in message
    assert "every true match is under the query's own camera" in message
    assert "camera id 0" in message
    assert "keep_same_camera=True" in message
    assert isinstance(info.value, ValueError)
    # The advice works: the same data evaluates with keep_same_camera=True.
    assert rank_metrics(dist, [1, 2], [1, 2], [0, 0], [0, 0], keep_same_camera=True).mAP == 1.0


def test_no_valid_query_explains_absent_pids():
    with pytest.raises(NoValidQueryError, match="does not appear in the gallery") as info:
        evaluate_rank(np.ones((2, 3)), [5, 6], [1, 2, 3], [0, 1], [0, 1, 2])
    assert "pid numbering" in str(info.value)
    assert "own camera" not in str(info.value)


def test_no_valid_query_when_only_the_query_image_matches():
    with pytest.raises(NoValidQueryError, match="only true match in the gallery is the query"):
        rank_metrics(
            [[0.0, 1.0]], [4], [4, 5], [0], [0, 0], keep_same_camera=True, query_gallery_index=[0]
        )


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_reference_loop_on_random_data(seed):
    rng = np.random.default_rng(seed)
    num_q, num_g = rng.integers(20, 60), rng.integers(30, 150)
    q_pids = rng.integers(0, 12, num_q)
    g_pids = rng.integers(0, 12, num_g)
    q_cams = rng.integers(0, 3, num_q)
    g_cams = rng.integers(0, 3, num_g)
    dist = rng.random((num_q, num_g))
    if seed % 2:  # coarse values: many ties, which must be broken the same way
        dist = np.round(dist * 8) / 8
    keep_same_camera = seed % 3 == 0
    q_self = None
    if seed >= 3:  # some queries' own images sit in the gallery
        q_self = np.full(num_q, -1)
        for i in rng.choice(num_q, size=num_q // 2, replace=False):
            same = np.flatnonzero(g_pids == q_pids[i])
            if same.size:
                q_self[i] = rng.choice(same)
    max_rank = int(rng.integers(5, 200))  # sometimes beyond the gallery size
    expected = reference_loop(
        dist, q_pids, g_pids, q_cams, g_cams, max_rank, keep_same_camera, q_self
    )
    got = rank_metrics(
        dist,
        q_pids,
        g_pids,
        q_cams,
        g_cams,
        max_rank,
        keep_same_camera=keep_same_camera,
        query_gallery_index=q_self,
        chunk_size=7,
    )
    np.testing.assert_allclose(got.cmc, expected[0], rtol=0, atol=1e-12)
    assert abs(got.mAP - expected[1]) < 1e-12
    assert abs(got.mINP - expected[2]) < 1e-12
    assert got.num_valid_queries == expected[3]


def test_results_do_not_depend_on_chunk_size():
    rng = np.random.default_rng(11)
    dist = rng.random((50, 80)).astype(np.float32)
    args = (dist, rng.integers(0, 9, 50), rng.integers(0, 9, 80))
    cams = (rng.integers(0, 4, 50), rng.integers(0, 4, 80))
    results = [rank_metrics(*args, *cams, 20, chunk_size=c) for c in (1, 3, 16, 50, 1000, None)]
    for other in results[1:]:
        np.testing.assert_array_equal(other.cmc, results[0].cmc)
        assert other.mAP == results[0].mAP
        assert other.mINP == results[0].mINP


def test_evaluate_rank_is_rank_metrics_without_extras():
    rng = np.random.default_rng(3)
    dist = rng.random((10, 30))
    args = (dist, rng.integers(0, 4, 10), rng.integers(0, 4, 30))
    cams = (rng.integers(0, 2, 10), rng.integers(0, 2, 30))
    result = evaluate_rank(*args, *cams, max_rank=8)
    full = rank_metrics(*args, *cams, max_rank=8)
    assert isinstance(result, RankResult)
    assert result._fields == ("cmc", "mAP")
    assert isinstance(result.mAP, float)
    assert result.cmc.shape == (8,)
    assert np.all((result.cmc >= 0) & (result.cmc <= 1))
    np.testing.assert_array_equal(result.cmc, full.cmc)
    assert result.mAP == full.mAP


def test_torch_tensors_give_the_numpy_result():
    rng = np.random.default_rng(5)
    dist = rng.random((12, 25)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 5, 12), rng.integers(0, 5, 25)
    q_cams, g_cams = rng.integers(0, 3, 12), rng.integers(0, 3, 25)
    from_numpy = rank_metrics(dist, q_pids, g_pids, q_cams, g_cams, 10)
    from_torch = rank_metrics(
        torch.from_numpy(dist).requires_grad_(),
        *(torch.from_numpy(x) for x in (q_pids, g_pids, q_cams, g_cams)),
        10,
    )
    np.testing.assert_array_equal(from_torch.cmc, from_numpy.cmc)
    assert from_torch.mAP == from_numpy.mAP


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"distmat": np.ones(3)}, r"distmat: expected a non-empty 2-D"),
        ({"distmat": np.ones((2, 0))}, r"distmat: expected a non-empty 2-D"),
        ({"q_pids": [1, 2, 3]}, r"q_pids: expected shape \(2,\) \(num_query"),
        ({"g_camids": [0, 0]}, r"g_camids: expected shape \(3,\) \(num_gallery"),
        ({"g_pids": [1.0, 2.0, 3.0]}, r"g_pids: expected integers, got dtype float64"),
        ({"distmat": [[0.1, np.nan, 0.2], [0, 0, 0]]}, r"NaN \(first at query 0, gallery 1\)"),
        ({"max_rank": 0}, r"max_rank: expected a positive integer"),
        ({"chunk_size": 0}, r"chunk_size: expected a positive integer"),
        ({"query_gallery_index": [0, 3]}, r"entry 1 is 3; expected -1 or a gallery index"),
        ({"query_gallery_index": [1, -1]}, r"points at gallery item 1 with pid 2, but query 0"),
    ],
)
def test_invalid_inputs_are_named(kwargs, pattern):
    args = {
        "distmat": np.ones((2, 3)),
        "q_pids": [1, 2],
        "g_pids": [1, 2, 3],
        "q_camids": [0, 0],
        "g_camids": [1, 1, 1],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        rank_metrics(**args)


def test_rank_table_and_dict():
    cmc = np.linspace(0.5, 1.0, 20)  # R1 = 0.5, R5 = 0.5 + 4/38, ...
    metrics = RankMetrics(cmc=cmc, mAP=0.4321, mINP=0.05, num_valid_queries=7)
    table = format_rank_table(metrics)
    header, values = table.splitlines()
    assert header.split() == ["R1", "R5", "R10", "R20", "mAP", "mINP"]
    # R5 = 0.5 + 4 * (0.5 / 19) = 0.60526 -> 60.5; R10 = 0.5 + 9 * 0.5 / 19 = 0.73684 -> 73.7
    assert values.split() == ["50.0", "60.5", "73.7", "100.0", "43.2", "5.0"]
    assert len(header) == len(values)  # columns are right-aligned under their names
    data = rank_metrics_to_dict(metrics)
    assert json.loads(json.dumps(data)) == data
    assert data["R1"] == 0.5 and type(data["R1"]) is float
    assert data["num_valid_queries"] == 7 and type(data["num_valid_queries"]) is int
    assert len(data["cmc"]) == 20
    with pytest.raises(ValueError, match=r"ranks: expected integers in \[1, 20\]"):
        format_rank_table(metrics, ranks=(1, 50))
    short = RankMetrics(cmc=cmc[:10], mAP=0.4321, mINP=0.05, num_valid_queries=7)
    assert format_rank_table(short).split()[:4] == ["R1", "R5", "R10", "mAP"]  # no R20 column
    assert "R20" not in rank_metrics_to_dict(short)


@pytest.mark.parametrize("keep_same_camera", [False, True])
def test_match_positions_counted_block_by_block_give_the_whole_matrix_metrics(
    keep_same_camera: bool,
) -> None:
    """Positions summed over column blocks reproduce rank_metrics bit for bit, ties included
    (integer distances: ties everywhere, ranked by gallery index as the stable sort does)."""
    rng = np.random.default_rng(3)
    num_q, num_g = 41, 97
    dist = rng.integers(0, 12, (num_q, num_g)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 9, num_q), rng.integers(0, 9, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    q_self = None
    if keep_same_camera:  # some queries are gallery images: each must be found and removed
        q_self = np.full(num_q, -1)
        for i in range(0, num_q, 5):
            same = np.flatnonzero(g_pids == q_pids[i])
            q_self[i] = same[0] if same.size else -1
    whole = rank_metrics(
        dist,
        q_pids,
        g_pids,
        q_cams,
        g_cams,
        12,
        keep_same_camera=keep_same_camera,
        query_gallery_index=q_self,
    )
    rows, cols = np.nonzero(g_pids[None, :] == q_pids[:, None])
    values = dist[rows, cols]
    for width in (1, 10, num_g):
        positions = sum(
            count_ahead(dist[:, start : start + width], start, rows, cols, values)
            for start in range(0, num_g, width)
        )
        # Independent check of the counts: the position in a stable argsort of the row.
        order = np.argsort(dist, axis=1, kind="stable")
        where = np.argsort(order, axis=1)
        assert (positions == where[rows, cols]).all()
        shuffle = rng.permutation(rows.size)  # the pairs may come in any order
        blocked = rank_metrics_from_positions(
            rows[shuffle],
            cols[shuffle],
            positions[shuffle],
            q_pids,
            g_pids,
            q_cams,
            g_cams,
            12,
            keep_same_camera=keep_same_camera,
            query_gallery_index=q_self,
        )
        assert (blocked.cmc == whole.cmc).all()
        assert (blocked.mAP, blocked.mINP, blocked.num_valid_queries) == (
            whole.mAP,
            whole.mINP,
            whole.num_valid_queries,
        )


def test_match_positions_must_list_every_true_match_once() -> None:
    q_pids, g_pids, cams = np.array([1, 2]), np.array([1, 2, 1]), np.zeros(3, dtype=np.int64)
    args = (q_pids, g_pids, cams[:2], cams)
    with pytest.raises(ValueError, match="expected each of the 3 same-pid"):
        rank_metrics_from_positions([0, 1], [0, 1], [0, 0], *args)  # (0, 2) is missing
    with pytest.raises(ValueError, match="pids differ"):
        rank_metrics_from_positions([0, 1, 0], [0, 1, 1], [0, 0, 1], *args)
    with pytest.raises(ValueError, match="out of range"):
        rank_metrics_from_positions([0, 1, 0], [0, 1, 2], [0, 0, 3], *args)
