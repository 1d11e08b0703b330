"""`duatm evaluate --rerank`: both rows, the re-ranked one from the matcher's own distances."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from duatm.api import load
from duatm.cli import main
from duatm.config import ConfigError, load_config
from duatm.data.datasets import Market1501
from duatm.engine.builders import build_test_loader
from duatm.engine.diagnostics import MEANVEC_MAP, REPORTED_DIAGNOSTICS
from duatm.engine.evaluator import (
    Rerank,
    distance_matrix,
    evaluate,
    evaluate_split,
    extract,
    reranked_distances,
)
from duatm.metrics import rank_metrics, re_ranking


@pytest.fixture(scope="module")
def split(tiny_synthped: Path, tiny_checkpoint: Path) -> SimpleNamespace:
    """The tiny checkpoint (conftest) with its query and gallery loaders."""
    model = load(tiny_checkpoint, "cpu")
    dataset = Market1501(tiny_synthped, verbose=False)
    return SimpleNamespace(
        model=model.module,
        device=model.device,
        query_loader=build_test_loader(model.config, dataset.query),
        gallery_loader=build_test_loader(model.config, dataset.gallery),
        checkpoint=tiny_checkpoint,
    )


def test_reranked_distances_use_the_matchers_own_pair_distances(split) -> None:
    """q_q and g_g are the matcher's distances of every pair (forward on each aligned pair)."""
    model = split.model
    query = extract(model, split.query_loader, split.device, progress=False)
    gallery = extract(model, split.gallery_loader, split.device, progress=False)
    q_g = distance_matrix(model.matcher, query, gallery, tile_mb=1)

    def every_pair(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ia, ib = torch.meshgrid(torch.arange(len(a)), torch.arange(len(b)), indexing="ij")
        with torch.no_grad():
            return model.matcher(a[ia.flatten()], b[ib.flatten()]).view(len(a), len(b))

    settings = Rerank(k1=6, k2=3, lambda_value=0.3)
    expected = re_ranking(
        q_g,
        every_pair(query.sequences, query.sequences),
        every_pair(gallery.sequences, gallery.sequences),
        *settings,
    )
    got = reranked_distances(model, query, gallery, q_g, settings, tile_mb=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_evaluate_reports_the_plain_row_and_the_reranked_row(split) -> None:
    model = split.model
    args = (model, split.query_loader, split.gallery_loader, split.device)
    both = evaluate_split(*args, max_rank=10, rerank=Rerank(6, 3, 0.3), progress=False)
    assert set(both.timings) == {"extract_s", "match_s", "rank_s", "rerank_s"}

    query = extract(model, split.query_loader, split.device, progress=False)
    gallery = extract(model, split.gallery_loader, split.device, progress=False)
    q_g = distance_matrix(model.matcher, query, gallery, tile_mb=256)
    reranked = reranked_distances(model, query, gallery, q_g, Rerank(6, 3, 0.3), tile_mb=256)
    labels = (query.pids, gallery.pids, query.camids, gallery.camids)
    for got, matrix in ((both.metrics, q_g), (both.reranked, reranked)):
        expected = rank_metrics(matrix.numpy(), *labels, max_rank=10)
        assert got is not None and got.mAP == pytest.approx(expected.mAP, abs=1e-12)
        np.testing.assert_allclose(got.cmc, expected.cmc)
    plain = evaluate_split(*args, max_rank=10, progress=False)
    assert plain.reranked is None and plain.reranked_distances is None
    assert set(plain.diagnostics) == set(REPORTED_DIAGNOSTICS)
    # The same features ranked by the Euclidean distance of their mean vectors.
    pooled = np.linalg.norm(
        query.sequences.mean(1).numpy()[:, None] - gallery.sequences.mean(1).numpy()[None],
        axis=-1,
    )
    expected = rank_metrics(pooled, *labels, max_rank=10).mAP
    assert plain.diagnostics[MEANVEC_MAP] == pytest.approx(expected, abs=1e-6)
    assert plain.diagnostics[MEANVEC_MAP] != pytest.approx(plain.metrics.mAP, abs=1e-6)
    metrics, extra = evaluate(*args, max_rank=10, progress=False)  # training's 2-tuple
    assert metrics.mAP == plain.metrics.mAP
    assert set(extra) == {"extract_s", "match_s", "rank_s", *REPORTED_DIAGNOSTICS}


def test_rank_rows_are_labelled_and_aligned() -> None:
    from duatm.metrics import RankMetrics
    from duatm.metrics.report import format_rank_rows

    a = RankMetrics(np.array([0.5, 0.75, 1.0]), 0.625, 0.5, 4)
    b = RankMetrics(np.array([0.25, 1.0, 1.0]), 0.123, 0.1, 4)
    lines = format_rank_rows({"plain": a, "re-ranked": b}, ranks=[1, 3]).splitlines()
    assert lines[0].split() == ["R1", "R3", "mAP", "mINP"]
    assert lines[1].split() == ["plain", "50.0", "100.0", "62.5", "50.0"]
    assert lines[2].split() == ["re-ranked", "25.0", "100.0", "12.3", "10.0"]
    assert len({len(line) for line in lines}) == 1


@pytest.mark.slow
def test_cli_rerank_prints_both_rows_and_writes_them(split, tmp_path, capsys) -> None:
    checkpoint = split.checkpoint
    plain_json, rerank_json = tmp_path / "plain.json", tmp_path / "rerank.json"
    common = [
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--no-progress",
        "--set",
        "eval.max_rank=10",
    ]
    assert main([*common, "--results", str(plain_json)]) == 0
    capsys.readouterr()
    assert (
        main([*common, "--rerank", "--results", str(rerank_json), "--set", "eval.rerank_k1=6"]) == 0
    )
    printed = capsys.readouterr().out
    assert "matcher distances" in printed and "re-ranked (k1=6, k2=6, lambda=0.3)" in printed
    plain, reranked = json.loads(plain_json.read_text()), json.loads(rerank_json.read_text())
    assert "rerank" not in plain
    assert reranked["mAP"] == plain["mAP"] and reranked["cmc"] == plain["cmc"]
    row = reranked["rerank"]
    assert (row["k1"], row["k2"], row["lambda_value"]) == (6, 6, 0.3)
    assert 0.0 <= row["mAP"] <= 1.0 and len(row["cmc"]) == 10
    assert "rerank_s" in reranked["seconds"]


def test_whole_matrix_options_refuse_streamed_evaluation(split, tmp_path, capsys) -> None:
    args = ["evaluate", "--checkpoint", str(split.checkpoint), "--no-progress"]
    streamed = ["--set", f"eval.stream_to={tmp_path}"]
    assert main([*args, "--rerank", *streamed]) == 2
    assert "need the whole distance matrices in one process" in capsys.readouterr().err
    assert main([*args, "--save-distances", str(tmp_path / "d.pt"), *streamed]) == 2
    assert not (tmp_path / "d.pt").exists()
    assert main([*args, "--save-distances", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("eval.rerank_k1=0", "eval.rerank_k1"),
        ("eval.rerank_k2=0", "eval.rerank_k2"),
        ("eval.rerank_lambda=2", "eval.rerank_lambda"),
    ],
)
def test_rerank_settings_are_checked(override, key) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])
