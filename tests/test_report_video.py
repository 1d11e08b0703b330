"""`duatm report` on a video checkpoint: tracklets as frame strips, attention as weights over the
frames of the matched clips (equal-length clips and whole tracklets), the CLI with saved
distances, and the page in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_tiny_checkpoint
from duatm.api import load
from duatm.cli import main
from duatm.data.datasets import MARS
from duatm.data.synthped_video import write_video_synthped
from duatm.data.transforms import read_image
from duatm.engine.builders import build_test_loader
from duatm.engine.evaluator import evaluate_split
from duatm.report import build_report, render_report
from duatm.report.page import FrameAttentionDirection
from test_report import chromium, loaded_counts, reddish_pixels, run_chromium

CLIP = 4  # evaluation clip length: the 2- and 3-frame tracklets loop
VIDEO = ("model.kind=video", "data.dataset=mars", f"data.test_clip_len={CLIP}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("video_report")
    data = write_video_synthped(
        root / "data",
        num_ids=6,
        num_cameras=2,
        height=32,
        width=16,
        min_frames=2,
        max_frames=9,
        num_distractors=0,
        num_junk=0,
    )
    return data, write_tiny_checkpoint(root / "video.pt", data, overrides=VIDEO)


def evaluated(setup, mode: str):
    data, checkpoint = setup
    model = load(checkpoint, "cpu", overrides=[f"data.test_clip_mode={mode}"])
    dataset = MARS(data, verbose=False)
    query = build_test_loader(model.config, dataset.query)
    gallery = build_test_loader(model.config, dataset.gallery)
    evaluation = evaluate_split(
        model.module, query, gallery, model.device, max_rank=5, progress=False
    )
    return model, dataset.query, dataset.gallery, evaluation.distances


def clip_frames(num_frames: int, mode: str) -> list[int]:
    """The evaluation clip, written out: every frame, or CLIP from the first, looping."""
    return list(range(num_frames)) if mode == "all" else [k % num_frames for k in range(CLIP)]


def own_sequence(model, paths: list[str]) -> torch.Tensor:
    pixels = torch.stack([model.transform.prepare(read_image(p)) for p in paths])
    return model.module.extract_sequences(pixels[None])  # (1, T, D)


def strips(page: str) -> list[tuple[str, int, int]]:
    """(classes, data-frames, number of frame images) of every tracklet figure of the page."""
    found = re.findall(
        r'<figure class="([^"]*) tracklet" data-frames="(\d+)"><div class="stack strip">'
        r"(.*?)</div>",
        page,
    )
    return [(classes, int(n), inner.count('<img class="frame"')) for classes, n, inner in found]


def test_ranked_lists_show_tracklets_as_frame_strips_marked_by_identity(setup) -> None:
    model, query, gallery, distances = evaluated(setup, "clip")
    content = build_report(model, query, gallery, distances, worst=3, top=4, max_rank=5)
    dist = distances.numpy()
    assert len(content.queries) == 3
    for q in content.queries:
        kept = [
            g
            for g in np.argsort(dist[q.index], kind="stable")
            if not (
                gallery[g].pid == query[q.index].pid and gallery[g].camid == query[q.index].camid
            )
        ]
        assert [r.index for r in q.ranked] == [int(g) for g in kept[:4]]
        for shown in (q.item, *(r.item for r in q.ranked)):
            assert shown.image == shown.frames[0].image
        for r in q.ranked:
            record = gallery[r.index]
            assert r.match == (record.pid == query[q.index].pid)
            n = len(record.paths)
            assert r.item.num_frames == n
            expected = (
                list(range(n)) if n <= 4 else [0, round((n - 1) / 3), round(2 * (n - 1) / 3), n - 1]
            )
            assert [f.index for f in r.item.frames] == expected
    page = render_report(content)
    figures = strips(page)
    expected = [
        (cls, len(item.frames))
        for q in content.queries
        for cls, item in [("query", q.item)]
        + [("ranked " + ("true" if r.match else "false"), r.item) for r in q.ranked]
    ]
    assert [(cls, n) for cls, n, _ in figures] == expected
    assert all(n == images for _, n, images in figures)
    # Each strip's caption gives the tracklet's length.
    assert f"<br>{content.queries[0].item.num_frames} frames</figcaption>" in page


@pytest.mark.parametrize("mode", ["clip", "all"])
def test_attention_is_drawn_over_the_frames_of_the_matched_clips(setup, mode) -> None:
    model, query, gallery, distances = evaluated(setup, mode)
    # A pair of different lengths, so that all-mode clips differ in length too.
    qi = 0
    gi = next(g for g, r in enumerate(gallery) if len(r.paths) != len(query[qi].paths))
    content = build_report(
        model, query, gallery, distances, queries=[qi], pairs=[(qi, gi)], max_rank=5
    )
    (pair,) = content.pairs
    q_frames = clip_frames(len(query[qi].paths), mode)
    g_frames = clip_frames(len(gallery[gi].paths), mode)
    xq = own_sequence(model, [query[qi].paths[i] for i in q_frames])
    xg = own_sequence(model, [gallery[gi].paths[i] for i in g_frames])
    with torch.no_grad():
        att = model.module.matcher.attention(xq, xg)
    forward, backward = pair.directions
    assert isinstance(forward, FrameAttentionDirection)
    assert isinstance(backward, FrameAttentionDirection)
    assert [f.index for f in forward.source_frames] == q_frames
    assert [f.index for f in forward.target_frames] == g_frames
    assert [f.index for f in backward.source_frames] == g_frames
    for direction, intra, inter, length in (
        (forward, att.intra_a, att.inter_ab, len(q_frames)),
        (backward, att.intra_b, att.inter_ba, len(g_frames)),
    ):
        assert [v.position for v in direction.views] == sorted({0, length // 2, length - 1})
        for view in direction.views:
            np.testing.assert_allclose(view.intra, intra[0, view.position].numpy(), atol=1e-6)
            np.testing.assert_allclose(view.inter, inter[0, view.position].numpy(), atol=1e-6)
    assert pair.distance == pytest.approx(float(distances[qi, gi]))
    assert pair.match == (query[qi].pid == gallery[gi].pid)

    page = render_report(content)
    weighted = re.findall(
        r'<div class="weighted-strip" data-kind="(intra|inter)">.*?<div class="frames">(.*?)'
        r"</div></div>(?=<div class=\"weighted-strip\"|</div>)",
        page,
    )
    assert len(weighted) == 2 * sum(len(d.views) for d in pair.directions)
    for kind, strip in weighted:
        weights = [float(w) for w in re.findall(r'data-weight="([0-9.]+)"', strip)]
        assert len(weights) == strip.count('<img class="frame"') > 0
        assert sum(weights) == pytest.approx(1.0, abs=1e-4)
        assert all(k == kind for k in re.findall(r'class="frame-weight" data-kind="(\w+)"', strip))
    matrices = re.findall(r'<img class="attention-matrix" data-kind="(intra|inter)"', page)
    assert matrices == ["intra", "inter", "intra", "inter"]


def test_out_of_range_time_step_is_refused_naming_the_clip(setup) -> None:
    model, query, gallery, distances = evaluated(setup, "clip")
    with pytest.raises(ValueError, match=r"time step 4 is outside 0\.\.3 \(query 0's clip"):
        build_report(model, query, gallery, distances, pairs=[(0, 0)], positions=[4], max_rank=5)


@pytest.mark.slow
def test_cli_video_report_fresh_equals_saved_distances(setup, tmp_path, capsys) -> None:
    data, checkpoint = setup
    common = ["--checkpoint", str(checkpoint), "--no-progress", "--set", "eval.max_rank=5"]
    distances = tmp_path / "d.pt"
    evaluate = [
        "evaluate",
        *common,
        "--data-root",
        str(data),
        "--results",
        str(tmp_path / "r.json"),
    ]
    assert main([*evaluate, "--save-distances", str(distances)]) == 0
    name = Path(MARS(data, verbose=False).query[1].paths[0]).name  # a tracklet by its first frame
    fresh, saved = tmp_path / "fresh.html", tmp_path / "saved.html"
    assert main(["report", *common, "--distances", str(distances), "--out", str(saved),
                 "--queries", "2", name]) == 0  # fmt: skip
    assert main(["report", *common, "--data-root", str(data), "--out", str(fresh),
                 "--queries", "2", "1"]) == 0  # fmt: skip
    capsys.readouterr()

    def without_source(page: str) -> str:
        return re.sub(r"<dt>distances</dt><dd>[^<]*</dd>", "", page)

    page = fresh.read_text()
    assert without_source(saved.read_text()) == without_source(page)
    assert "clips of 4 frames" in page and "gallery tracklets" in page
    assert re.findall(r'<div class="ranking" data-query="(\d+)">', page) == ["2", "1"]
    assert [cls for cls, _, _ in strips(page)].count("query") == 2
    bad = ["report", *common, "--distances", str(distances), "--out", str(tmp_path / "x.html")]
    assert main([*bad, "--positions", "4"]) == 2
    assert "--positions: 4 is outside 0..3 (time steps of a clip)" in capsys.readouterr().err
    assert main([*bad, "--queries", "nope.jpg"]) == 2
    assert "no tracklet whose first frame is 'nope.jpg'" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    chromium() is None,
    reason="headless Chromium is not installed (apt-get install -y chromium; .ci/run installs it)",
)
def test_video_page_renders_in_headless_chromium(setup, tmp_path) -> None:
    """Every frame decodes, the heat maps and weight bars are there, and red is painted."""
    model, query, gallery, distances = evaluated(setup, "all")
    content = build_report(
        model, query, gallery, distances, worst=2, top=4, attention_pairs=1, max_rank=5
    )
    page = tmp_path / "report.html"
    page.write_text(render_report(content))
    expected_images = page.read_text().count("<img ")

    dom = run_chromium(page, tmp_path / "profile", "--dump-dom")
    assert loaded_counts(dom) == {
        "data-images": str(expected_images),
        "data-images-loaded": str(expected_images),
        "data-overlays": "0",  # video has no overlays on images: weights sit under the frames
    }
    assert dom.count('class="attention-matrix"') == 4  # one pair, two directions, two maps
    assert dom.count('class="frame-weight"') > 0
    shot = tmp_path / "shot.png"
    run_chromium(page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2600")
    # The attention colour (heat maps and weight bars) was painted.
    assert reddish_pixels(shot) > 500
