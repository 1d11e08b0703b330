"""Blockwise evaluation in one process: in memory and streamed to disk, against the whole
matrix; the scratch file; the ranks' shares. (Several ranks: tests/test_distributed.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from duatm.config import load_config
from duatm.data.datasets import Market1501
from duatm.data.synthped import write_synthped
from duatm.engine.blockwise import DistanceBlocks, block_width, blockwise_rank_metrics
from duatm.engine.builders import build_model, build_test_loader
from duatm.engine.diagnostics import MEANVEC_MAP, REPORTED_DIAGNOSTICS
from duatm.engine.distributed import SINGLE, DistContext, mean_over_ranks
from duatm.engine.evaluator import evaluate
from duatm.metrics import rank_metrics
from duatm.models.matching import DualAttentionMatcher


def unit_sequences(count: int, length: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.randn(count, length, dim, generator=generator), dim=-1
    )


@pytest.mark.parametrize("streamed", [False, True])
def test_blockwise_metrics_equal_the_whole_matrix(streamed: bool, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    matcher = DualAttentionMatcher(16).eval()
    query, gallery = unit_sequences(30, 6, 16, generator), unit_sequences(83, 6, 16, generator)
    rng = np.random.default_rng(1)
    q_pids, g_pids = rng.integers(0, 7, 30), rng.integers(0, 7, 83)
    q_cams, g_cams = rng.integers(0, 3, 30), rng.integers(0, 3, 83)
    with torch.inference_mode():
        whole = rank_metrics(matcher.pairwise(query, gallery), q_pids, g_pids, q_cams, g_cams, 20)
    scratch = tmp_path / "scratch"
    blocked, seconds = blockwise_rank_metrics(
        matcher,
        query,
        torch.from_numpy(q_pids),
        torch.from_numpy(q_cams),
        gallery,
        torch.from_numpy(g_pids),
        torch.from_numpy(g_cams),
        SINGLE,
        max_rank=20,
        block_bytes=30 * 4 * 10,  # 10 gallery items per block: 9 blocks
        stream_to=scratch if streamed else None,
        progress=False,
    )
    assert (blocked.cmc == whole.cmc).all()
    assert (blocked.mAP, blocked.mINP, blocked.num_valid_queries) == (
        whole.mAP,
        whole.mINP,
        whole.num_valid_queries,
    )
    assert set(seconds) == {"match_s", "rank_s"}
    if streamed:
        assert scratch.is_dir() and list(scratch.iterdir()) == []  # the scratch file is gone


def test_streamed_blocks_read_back_and_leave_nothing_behind(tmp_path: Path) -> None:
    blocks = DistanceBlocks(3, tmp_path, DistContext(rank=1, world_size=2))
    written = [(0, np.arange(6, dtype=np.float32).reshape(3, 2)), (2, -np.ones((3, 4), np.float32))]
    for start, block in written:
        blocks.append(start, block)
    assert blocks.path is not None and blocks.path.parent == tmp_path
    for (start, block), (got_start, got) in zip(written, blocks, strict=True):
        assert start == got_start and np.array_equal(block, got)
    assert "rank1" in blocks.path.name and blocks.path.stat().st_size == (6 + 12) * 4
    blocks.close()
    assert list(tmp_path.iterdir()) == []


def test_block_width_keeps_a_block_within_its_budget() -> None:
    assert block_width(1000, 1 << 20) == (1 << 20) // 4000
    assert block_width(10**9, 1 << 20) == 1  # never zero items
    assert block_width(2000, 512 << 20) * 2000 * 4 <= 512 << 20


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_rank_shares_are_contiguous_and_cover_every_item(world_size: int) -> None:
    for count in (0, 5, 10, 11):
        shares = [DistContext(r, world_size).shard(count) for r in range(world_size)]
        assert [i for share in shares for i in share] == list(range(count))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_one_process_mean_over_ranks_is_the_values_themselves() -> None:
    values = {"total": 0.1 + 0.2, "triplet": float("nan")}
    means, per_rank = mean_over_ranks(values, SINGLE)
    assert means["total"] == values["total"] and np.isnan(means["triplet"])
    assert len(per_rank) == 1


def test_evaluate_streams_to_disk_with_the_same_metrics(tmp_path: Path) -> None:
    root = write_synthped(tmp_path / "data", num_ids=8, num_cameras=2, height=32, width=16)
    cfg = load_config(
        None,
        [
            "model.backbone=densenet_tiny",
            "model.pretrained=null",
            "model.dim=16",
            "model.drop_last_pool=true",
            "data.height=32",
            "data.width=16",
            "data.num_workers=0",
            f"data.root={root}",
        ],
    )
    dataset = Market1501(root, verbose=False)
    torch.manual_seed(0)
    model = build_model(cfg, dataset.num_train_pids)
    loaders = build_test_loader(cfg, dataset.query), build_test_loader(cfg, dataset.gallery)
    whole, whole_extra = evaluate(model, *loaders, torch.device("cpu"), max_rank=5, progress=False)
    streamed, seconds = evaluate(
        model,
        *loaders,
        torch.device("cpu"),
        max_rank=5,
        progress=False,
        stream_to=tmp_path / "scratch",
        block_mb=1,
    )
    assert (streamed.cmc == whole.cmc).all() and streamed.mAP == whole.mAP
    assert set(seconds) == {"extract_s", "match_s", "rank_s", *REPORTED_DIAGNOSTICS}
    # The mean-pooled ranking goes through the same blocks and gives the whole matrix's mAP.
    assert seconds[MEANVEC_MAP] == pytest.approx(whole_extra[MEANVEC_MAP], abs=1e-6)
    assert list((tmp_path / "scratch").iterdir()) == []
