"""`duatm report`: the page's content against independent computations, its self-containment,
saved distances, and the page as headless Chromium renders it."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_tiny_checkpoint
from duatm.api import load
from duatm.cli import main
from duatm.data.datasets import Market1501
from duatm.data.synthped import write_synthped
from duatm.engine.builders import build_test_loader
from duatm.engine.evaluator import evaluate_split
from duatm.metrics import per_query_ranks
from duatm.report import build_report, render_report
from duatm.report.build import default_positions, feature_grid
from duatm.report.figures import MAX_ALPHA, attention_data_uri

# 64 x 32 input: a 4 x 2 feature map (S = 8) with the tiny backbone, enough to see positions.
SIZE = ("data.height=64", "data.width=32")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("report")
    data = write_synthped(root / "data", num_ids=8, num_cameras=2, height=64, width=32)
    checkpoint = write_tiny_checkpoint(root / "tiny.pt", data, overrides=SIZE)
    other = write_tiny_checkpoint(root / "other.pt", data, seed=1, overrides=SIZE)
    return data, checkpoint, other


@pytest.fixture(scope="module")
def evaluated(setup):
    data, checkpoint, _ = setup
    model = load(checkpoint, "cpu")
    dataset = Market1501(data, verbose=False)
    query = build_test_loader(model.config, dataset.query)
    gallery = build_test_loader(model.config, dataset.gallery)
    evaluation = evaluate_split(
        model.module, query, gallery, model.device, max_rank=10, progress=False
    )
    return model, query.dataset.records, gallery.dataset.records, evaluation.distances


def decode_png(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_attention_png_holds_the_weights_as_opacity() -> None:
    weights = np.array([[0.1, 0.4], [0.0, 0.5]])
    rgba = decode_png(attention_data_uri(weights))
    assert rgba.shape == (2, 2, 4)
    np.testing.assert_array_equal(rgba[..., 3], np.round(weights / 0.5 * MAX_ALPHA * 255))
    with pytest.raises(ValueError, match="non-negative"):
        attention_data_uri(np.array([[-1.0]]))


def test_content_ranks_worst_queries_by_the_protocol(evaluated) -> None:
    model, query, gallery, distances = evaluated
    content = build_report(model, query, gallery, distances, worst=3, top=6, max_rank=10)
    dist = distances.numpy()
    q_pids = np.array([r.pid for r in query])
    g_pids = np.array([r.pid for r in gallery])
    q_cams = np.array([r.camid for r in query])
    g_cams = np.array([r.camid for r in gallery])
    per_query = per_query_ranks(dist, q_pids, g_pids, q_cams, g_cams)
    valid = np.flatnonzero(per_query.num_rel > 0)
    shown = [q.index for q in content.queries]
    assert len(shown) == 3
    # No valid query outside the shown ones has a lower AP than the highest shown.
    assert max(per_query.ap[shown]) <= min(per_query.ap[np.setdiff1d(valid, shown)], default=1.0)
    for q in content.queries:
        assert q.ap == pytest.approx(per_query.ap[q.index])
        kept = [
            g
            for g in np.argsort(dist[q.index], kind="stable")
            if not (g_pids[g] == q_pids[q.index] and g_cams[g] == q_cams[q.index])
        ]
        assert [r.index for r in q.ranked] == kept[:6]
        assert [r.rank for r in q.ranked] == list(range(1, 7))
        for r in q.ranked:
            assert r.match == (g_pids[r.index] == q_pids[q.index])
            assert r.distance == pytest.approx(dist[q.index, r.index])
        hits = [r.rank for r in q.ranked if r.match]
        if hits:
            assert hits[0] == q.first_rank


def test_attention_views_draw_the_matchers_weights(evaluated) -> None:
    model, query, gallery, distances = evaluated
    rows, cols = feature_grid(model)
    assert (rows, cols) == (4, 2)
    content = build_report(
        model, query, gallery, distances, queries=[2], pairs=[(2, 5)], max_rank=10
    )
    (pair,) = content.pairs
    sequences = model.extract([query[2].path, gallery[5].path])
    with torch.no_grad():
        att = model.module.matcher.attention(sequences[:1], sequences[1:])
    forward, backward = pair.directions
    assert [v.position for v in forward.views] == default_positions(4, 2) == [1, 5, 7]
    for direction, intra, inter in (
        (forward, att.intra_a, att.inter_ab),
        (backward, att.intra_b, att.inter_ba),
    ):
        for view in direction.views:
            assert (view.cell.row, view.cell.col) == divmod(view.position, 2)
            for uri, weights in ((view.intra, intra), (view.inter, inter)):
                w = weights[0, view.position].reshape(4, 2).numpy()
                alpha = decode_png(uri)[..., 3]
                np.testing.assert_array_equal(alpha, np.round(w / w.max() * MAX_ALPHA * 255))
    assert pair.distance == pytest.approx(float(distances[2, 5]))
    assert pair.match == (query[2].pid == gallery[5].pid)


@pytest.mark.parametrize("mode", ["intra", "avgpool"])
def test_modes_without_some_attention_say_so(setup, tmp_path, mode) -> None:
    data, _, _ = setup
    path = write_tiny_checkpoint(
        tmp_path / f"{mode}.pt", data, overrides=(*SIZE, f"model.mode={mode}")
    )
    model = load(path, "cpu")
    dataset = Market1501(data, verbose=False)
    query, gallery = dataset.query, dataset.gallery
    distances = model.distance(
        model.extract([r.path for r in query]), model.extract([r.path for r in gallery])
    )
    content = build_report(model, query, gallery, distances, worst=2, top=3, max_rank=10)
    page = render_report(content)
    if mode == "avgpool":
        assert content.pairs == [] and "no attention to draw" in page
    else:
        views = [v for p in content.pairs for d in p.directions for v in d.views]
        assert views and all(v.inter is None and v.intra is not None for v in views)
        assert "no alignment in this matcher mode" in page


def test_page_is_self_contained(evaluated) -> None:
    model, query, gallery, distances = evaluated
    page = render_report(build_report(model, query, gallery, distances, max_rank=10))
    sources = re.findall(r'<img[^>]* src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    external = re.findall(r'(?:src|href)="(?!data:)[^"]*"|url\(|@import|<link', page)
    assert external == []


@pytest.mark.slow
def test_cli_report_from_evaluation_and_from_saved_distances(setup, tmp_path, capsys) -> None:
    data, checkpoint, other = setup
    fresh, saved = tmp_path / "fresh.html", tmp_path / "saved.html"
    common = ["--checkpoint", str(checkpoint), "--no-progress", "--set", "eval.max_rank=10"]
    distances = tmp_path / "d.pt"
    results = tmp_path / "r.json"
    evaluate_args = ["--data-root", str(data), "--results", str(results)]
    assert main(["evaluate", *common, *evaluate_args, "--save-distances", str(distances)]) == 0
    name = Path(Market1501(data, verbose=False).query[1].path).name  # a query by file name
    saved_args = ["--distances", str(distances), "--out", str(saved), "--queries", "3", name]
    assert main(["report", *common, *saved_args]) == 0
    fresh_args = ["--data-root", str(data), "--out", str(fresh), "--queries", "3", "1"]
    assert main(["report", *common, *fresh_args]) == 0
    capsys.readouterr()

    def without_source(page: str) -> str:
        return re.sub(r"<dt>distances</dt><dd>[^<]*</dd>", "", page)

    assert without_source(saved.read_text()) == without_source(fresh.read_text())

    assert (
        main(
            [
                "report",
                "--checkpoint",
                str(other),
                "--distances",
                str(distances),
                "--out",
                str(tmp_path / "x.html"),
            ]
        )
        == 2
    )
    assert "computed by another model" in capsys.readouterr().err
    assert (
        main(
            [
                "report",
                *common,
                "--distances",
                str(distances),
                "--out",
                str(tmp_path / "x.html"),
                "--positions",
                "8",
            ]
        )
        == 2
    )
    assert "--positions: 8 is outside 0..7" in capsys.readouterr().err
    assert (
        main(
            [
                "report",
                *common,
                "--distances",
                str(distances),
                "--out",
                str(tmp_path / "x.html"),
                "--queries",
                "nope.jpg",
            ]
        )
        == 2
    )
    assert "--queries: no image named 'nope.jpg'" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(page: Path, profile: Path, *extra: str) -> str:
    """Headless Chromium on ``page`` with ``extra`` flags; its standard output."""
    done = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def loaded_counts(dom: str) -> dict[str, str]:
    """The page's own count attributes on <body> (images, images loaded, overlays), as the
    browser left them after running the page's script."""
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None
    return dict(re.findall(r'(data-[a-z-]+)="(\d+)"', body.group(1)))


def reddish_pixels(shot: Path) -> int:
    """How many pixels of a screenshot have the attention colour."""
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    return int(((pixels[..., 0] > 180) & (pixels[..., 1] < 120) & (pixels[..., 2] < 90)).sum())


@pytest.mark.slow
@pytest.mark.skipif(
    chromium() is None,
    reason="headless Chromium is not installed (apt-get install -y chromium; .ci/run installs it)",
)
def test_page_renders_in_headless_chromium(evaluated, tmp_path) -> None:
    """Every image decodes, the overlays are there, and the screenshot shows red attention."""
    model, query, gallery, distances = evaluated
    content = build_report(
        model, query, gallery, distances, worst=2, top=4, attention_pairs=1, max_rank=10
    )
    page = tmp_path / "report.html"
    page.write_text(render_report(content))
    expected_images = page.read_text().count("<img ")
    expected_overlays = sum(
        (v.intra is not None) + (v.inter is not None)
        for p in content.pairs
        for d in p.directions
        for v in d.views
    )
    assert expected_overlays == 12  # one pair, two directions, three positions, two maps

    dom = run_chromium(page, tmp_path / "profile", "--dump-dom")
    assert loaded_counts(dom) == {
        "data-images": str(expected_images),
        "data-images-loaded": str(expected_images),
        "data-overlays": str(expected_overlays),
    }
    shot = tmp_path / "shot.png"
    run_chromium(page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2600")
    assert np.asarray(Image.open(shot).convert("RGB")).shape == (2600, 1200, 3)
    # The attention colour (red over the image) appears, so the overlays were painted.
    assert reddish_pixels(shot) > 500
