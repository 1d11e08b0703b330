"""Gallery index and search: round trip, shortlist against exact, refusals, the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import duatm
from duatm.cli import main
from duatm.data.datasets import Market1501
from duatm.engine.checkpoint import save_checkpoint
from duatm.search import (
    GalleryIndexError,
    Shortlister,
    build_index,
    check_same_model,
    exact_search,
    faiss_installed,
    load_index,
    pooled_vectors,
    rerank,
    save_index,
    search,
)
from duatm.search import shortlist as shortlist_module


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> duatm.TrainedModel:
    return duatm.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def dataset(tiny_synthped: Path) -> Market1501:
    return Market1501(tiny_synthped, verbose=False)


@pytest.fixture(scope="module")
def index(model: duatm.TrainedModel, dataset: Market1501):
    return build_index(model, dataset.gallery)


@pytest.fixture(scope="module")
def queries(model: duatm.TrainedModel, dataset: Market1501) -> torch.Tensor:
    return model.extract([r.path for r in dataset.query])


def ranking_by_full_matrix(distances: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The independent answer: sort each row of the whole distance matrix (ties by position)."""
    order = distances.sort(dim=1, stable=True).indices[:, :top]
    return order, distances.gather(1, order)


def test_exact_search_is_the_sorted_distance_matrix(model, dataset, index, queries) -> None:
    gallery = model.extract([r.path for r in dataset.gallery])
    expected_idx, expected_d = ranking_by_full_matrix(model.distance(queries, gallery), 10)
    result = search(model, index, queries, top=10, shortlist=0)
    assert torch.equal(result.indices, expected_idx)
    torch.testing.assert_close(result.distances, expected_d)
    assert index.records(result.indices[0][:1])[0] == dataset.gallery[int(expected_idx[0, 0])]


@pytest.mark.parametrize("mode", ["intra", "inter", "avgpool"])
def test_every_matcher_mode_ranks_like_its_distance_matrix(
    checkpoint_of_mode, dataset, tmp_path, mode
) -> None:
    model = duatm.load(checkpoint_of_mode(mode), device="cpu")
    index = load_index(save_index(build_index(model, dataset.gallery), tmp_path / "g.index"))
    queries = model.extract([r.path for r in dataset.query])
    gallery = model.extract([r.path for r in dataset.gallery])
    expected_idx, expected_d = ranking_by_full_matrix(model.distance(queries, gallery), 5)
    for shortlist in (0, len(index) - 1):
        result = search(model, index, queries, top=5, shortlist=shortlist)
        assert torch.equal(result.indices, expected_idx)
        torch.testing.assert_close(result.distances, expected_d)


def test_exact_search_in_chunks_equals_one_chunk(model, index, queries, monkeypatch) -> None:
    whole = exact_search(model, index, model.prepare(queries), top=7)
    monkeypatch.setattr(
        "duatm.search.ranking._EXACT_CHUNK_BYTES", 3 * index.float32_bytes_per_item()
    )
    chunked = exact_search(model, index, model.prepare(queries), top=7)
    assert torch.equal(chunked.indices, whole.indices)
    torch.testing.assert_close(chunked.distances, whole.distances)


def test_shortlist_of_the_whole_gallery_equals_exact_search(model, index, queries) -> None:
    prepared = model.prepare(queries)
    exact = exact_search(model, index, prepared, top=len(index))
    # Every item is a candidate, in a shuffled order: the second stage alone must rank them.
    shuffled = torch.stack([torch.randperm(len(index)) for _ in range(len(queries))])
    reranked = rerank(model, index, prepared, shuffled, top=len(index))
    assert torch.equal(reranked.indices, exact.indices)
    torch.testing.assert_close(reranked.distances, exact.distances)


def test_shortlisted_results_come_from_the_shortlist_with_exact_distances(
    model, index, queries
) -> None:
    n = 6
    result = search(model, index, queries, top=4, shortlist=n)
    candidates = Shortlister(index.pooled, "torch").nearest(
        pooled_vectors(model.prepare(queries)), n
    )
    full = model.distance(queries, index.prepared.x)
    for q in range(len(queries)):
        assert set(result.indices[q].tolist()) <= set(candidates[q].tolist())
        expected = full[q, candidates[q]].sort().values[:4]
        torch.testing.assert_close(result.distances[q], expected)
        torch.testing.assert_close(result.distances[q], full[q, result.indices[q]])


def test_pooled_vectors_are_mean_refined_elements(model, index, queries) -> None:
    prepared = model.prepare(queries)
    with torch.no_grad():
        filtered = model.module.matcher.transform(queries.reshape(-1, 16)).view_as(queries)
        refined = torch.softmax(filtered @ queries.transpose(1, 2), -1) @ queries  # Eq. 2-3
    torch.testing.assert_close(pooled_vectors(prepared), refined.mean(1))
    gallery = model.prepare(model.extract(index.paths))
    torch.testing.assert_close(index.pooled, pooled_vectors(gallery))


def test_torch_shortlist_is_the_euclidean_ranking_across_blocks(monkeypatch) -> None:
    torch.manual_seed(0)
    pooled = torch.randn(50, 8)
    queries = torch.randn(4, 8)
    expected = torch.cdist(queries, pooled).argsort(dim=1)[:, :9]
    monkeypatch.setattr(shortlist_module, "_TORCH_BLOCK", 7)
    assert torch.equal(Shortlister(pooled, "torch").nearest(queries, 9), expected)
    assert Shortlister(pooled, "torch").nearest(queries, 80).shape == (4, 50)


@pytest.mark.skipif(not faiss_installed(), reason="the faiss extra is not installed")
def test_faiss_shortlist_equals_the_torch_shortlist() -> None:
    torch.manual_seed(1)
    pooled = torch.randn(300, 16)
    queries = torch.randn(5, 16)
    faiss = Shortlister(pooled, "faiss")
    assert faiss.backend == "faiss" and Shortlister(pooled).backend == "faiss"
    assert torch.equal(
        faiss.nearest(queries, 20), Shortlister(pooled, "torch").nearest(queries, 20)
    )


def test_missing_faiss_is_a_config_error_naming_the_extra(monkeypatch) -> None:
    monkeypatch.setattr(shortlist_module, "faiss_installed", lambda: False)
    assert shortlist_module.resolve_backend("auto") == "torch"
    with pytest.raises(duatm.config.ConfigError, match=r"pip install 'duatm\[faiss\]'"):
        Shortlister(torch.zeros(3, 4), "faiss")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_index_round_trip(model, dataset, index, queries, tmp_path, dtype) -> None:
    fresh = index if dtype == "float32" else build_index(model, dataset.gallery, dtype=dtype)
    path = save_index(fresh, tmp_path / "gallery.index")
    loaded = load_index(path)
    assert loaded.paths == [r.path for r in dataset.gallery]
    assert torch.equal(loaded.pids, torch.tensor([r.pid for r in dataset.gallery]))
    assert loaded.fingerprint == model.fingerprint and loaded.dtype == dtype
    assert loaded.prepared.x.dtype == getattr(torch, dtype)
    for shortlist in (0, 5):
        expected = search(model, fresh, queries, top=5, shortlist=shortlist)
        got = search(model, loaded, queries, top=5, shortlist=shortlist)
        assert torch.equal(got.indices, expected.indices)
        assert torch.equal(got.distances, expected.distances)
    if dtype == "float16":
        # Half-precision storage moves distances by about its rounding (2^-11 relative).
        exact32 = search(model, index, queries, top=len(index))
        exact16 = search(model, loaded, queries, top=len(index))
        d32 = exact32.distances.gather(1, exact32.indices.argsort(1))
        d16 = exact16.distances.gather(1, exact16.indices.argsort(1))
        torch.testing.assert_close(d16, d32, rtol=0, atol=5e-3)
        assert path.stat().st_size < save_index(index, tmp_path / "f32.index").stat().st_size


def test_index_of_another_model_is_refused(
    model, index, other_checkpoint, tmp_path, dataset, capsys
) -> None:
    other = duatm.load(other_checkpoint, device="cpu")
    with pytest.raises(GalleryIndexError, match="was built by another model"):
        check_same_model(index, other, "gallery.index")
    path = save_index(index, tmp_path / "gallery.index")
    query = dataset.query[0].path
    args = ["search", "--index", str(path), "--query", query, "--no-progress"]
    assert main([*args, "--checkpoint", str(other_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"duatm search: error: {path} was built by another model")
    assert err.count("\n") == 1 and f"--checkpoint {other_checkpoint}" in err


def test_files_that_are_not_indexes_are_refused(index, tiny_checkpoint, tmp_path) -> None:
    with pytest.raises(
        GalleryIndexError, match=r"tiny\.pt is not a duatm gallery index \(a training checkpoint\)"
    ):
        load_index(tiny_checkpoint)
    path = save_index(index, tmp_path / "g.index")
    state = torch.load(path, weights_only=True)
    state["version"] = 99
    save_checkpoint(tmp_path / "future.index", state)
    with pytest.raises(GalleryIndexError, match=r"format version 99; .* reads version 2"):
        load_index(tmp_path / "future.index")
    (tmp_path / "cut.index").write_bytes(path.read_bytes()[:100])
    with pytest.raises(
        duatm.engine.checkpoint.CheckpointError,
        match=r"cut\.index is truncated or not a duatm index",
    ):
        load_index(tmp_path / "cut.index")


def test_cli_index_then_search_writes_what_python_search_gives(
    model, dataset, tiny_checkpoint, tiny_synthped, tmp_path, capsys
) -> None:
    out = tmp_path / "gallery.index"
    args = ["index", "--checkpoint", str(tiny_checkpoint), "--data-root", str(tiny_synthped)]
    assert main([*args, "--out", str(out), "--dtype", "float16", "--no-progress"]) == 0
    assert f"indexed {len(dataset.gallery)} images" in capsys.readouterr().out
    loaded = load_index(out)
    query_dir = tiny_synthped / "query"
    json_out, csv_out = tmp_path / "r.json", tmp_path / "r.csv"
    search_args = ["search", "--index", str(out), "--query", str(query_dir), "--top", "3"]
    assert (
        main(
            [
                *search_args,
                "--shortlist",
                "5",
                "--json",
                str(json_out),
                "--csv",
                str(csv_out),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    payload = json.loads(json_out.read_text())
    queries = sorted(query_dir.glob("*.jpg"))
    assert [q["query"] for q in payload["queries"]] == [str(q) for q in queries]
    expected = search(model, loaded, model.extract(queries), top=3, shortlist=5)
    for q, entry in enumerate(payload["queries"]):
        assert [r["path"] for r in entry["results"]] == [
            loaded.paths[i] for i in expected.indices[q]
        ]
        assert [r["distance"] for r in entry["results"]] == pytest.approx(
            expected.distances[q].tolist()
        )
        assert [r["rank"] for r in entry["results"]] == [1, 2, 3]
    assert (
        payload["shortlist"] == 5 and payload["top"] == 3 and payload["gallery_size"] == len(loaded)
    )
    rows = list(csv.DictReader(csv_out.open()))
    assert len(rows) == 3 * len(queries)
    assert rows[0]["path"] == payload["queries"][0]["results"][0]["path"]
    assert f"| 1 | {payload['queries'][0]['results'][0]['distance']:.4f} |" in printed
    # --exact and a shortlist as large as the gallery both rank the whole gallery.
    assert main([*search_args, "--exact", "--json", str(tmp_path / "e.json"), "--no-progress"]) == 0
    exact = json.loads((tmp_path / "e.json").read_text())
    assert exact["shortlist"] is None
    whole = search(model, loaded, model.extract(queries), top=3, shortlist=0)
    assert [r["path"] for r in exact["queries"][0]["results"]] == [
        loaded.paths[i] for i in whole.indices[0]
    ]


def test_cli_index_of_an_image_folder_and_refusals(
    tiny_checkpoint, tiny_synthped, tmp_path, capsys
) -> None:
    out = tmp_path / "folder.index"
    folder = tiny_synthped / "query"
    base = ["index", "--checkpoint", str(tiny_checkpoint), "--no-progress"]
    second = tiny_synthped / "bounding_box_test"
    assert main([*base, "--images", str(folder), str(second), "--out", str(out)]) == 0
    loaded = load_index(out)
    expected = [*sorted(folder.glob("*.jpg")), *sorted(second.glob("*.jpg"))]
    assert loaded.paths == [str(p) for p in expected]
    assert set(loaded.pids.tolist()) == {-1} and set(loaded.camids.tolist()) == {-1}
    capsys.readouterr()

    def fails(argv: list[str], message: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err

    fails([*base, "--images", str(folder), "--out", str(out)], f"{out} exists; pass --overwrite")
    fails(
        [*base, "--images", str(folder), "--out", str(tiny_checkpoint), "--overwrite"],
        "is not a duatm gallery index (a training checkpoint)",
    )
    fails(
        [*base, "--images", str(tmp_path / "none"), "--out", str(tmp_path / "x.index")],
        "no such image or folder",
    )
    fails(
        [
            *base,
            "--images",
            str(folder),
            "--data-root",
            str(tiny_synthped),
            "--out",
            str(tmp_path / "x.index"),
        ],
        "--images DIR or --data-root ROOT, not both",
    )
    search = ["search", "--index", str(out), "--query", str(folder), "--no-progress"]
    other_archive = tmp_path / "copy.pt"
    other_archive.write_bytes(tiny_checkpoint.read_bytes())
    fails([*search, "--json", str(other_archive)], "holds a checkpoint or index; not writing")
    fails([*search, "--json", str(tiny_checkpoint)], "is the index or the checkpoint")
    fails([*search, "--csv", str(out)], "is the index or the checkpoint")
    fails([*search, "--top", "0"], "search.top must be a positive integer")
    fails(
        ["search", "--index", str(tmp_path / "missing.index"), "--query", str(folder)],
        "index not found",
    )
    assert main([*base, "--images", str(folder), "--out", str(out), "--overwrite"]) == 0
