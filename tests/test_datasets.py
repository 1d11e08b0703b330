"""Dataset parsers on miniature trees with the real naming schemes, and ImageDataset."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from duatm.data.datasets import (
    DATASETS,
    DatasetError,
    DatasetFormatError,
    DatasetLayoutError,
    DukeMTMCreID,
    ImageFolderDataset,
    Market1501,
    ReIDDataset,
    build_dataset,
)
from duatm.data.image_dataset import ImageDataset
from duatm.data.records import ImageRecord, TrackletRecord
from duatm.data.transforms import ImageReadError, build_test_transform, build_train_transform

MARKET_FILES = {
    "bounding_box_train": [
        "0010_c6s4_002452_02.jpg",
        "0002_c1s1_000451_03.jpg",
        "0007_c3s3_015725_01.jpg",
        "0002_c2s1_000301_01.jpg",
        "0000_c1s1_000001_00.jpg",  # distractor: not a training identity
        "-1_c1s1_000002_00.jpg",  # junk
        "Thumbs.db",
        "bad.jpg",
    ],
    "query": [
        "0005_c4s2_000001_00.jpg",
        "0003_c1s1_000551_00.jpg",
        "Thumbs.db",
    ],
    "bounding_box_test": [
        "0003_c2s1_000001_00.jpg",
        "0005_c5s3_000020_01.jpg",
        "0000_c1s1_000100_00.jpg",  # distractor: stays in the gallery
        "-1_c3s1_000007_00.jpg",  # junk
        "0005_c4s2_000002_00.jpg",
        "notes.txt",
    ],
}

DUKE_FILES = {
    "bounding_box_train": ["0001_c2_f0046182.jpg", "5000_c8_f0001234.jpg", "0001_c7_f0046999.jpg"],
    "query": ["0005_c1_f0000001.jpg", "random.jpg"],
    "bounding_box_test": ["0005_c3_f0000100.jpg", "0012_c8_f0000200.jpg"],
}


def write_image(path: Path, color: tuple[int, int, int] = (200, 100, 50)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), color).save(path)


def make_tree(root: Path, files: dict[str, list[str]]) -> Path:
    for folder, names in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            if name.endswith(".jpg"):
                write_image(root / folder / name)
            else:
                (root / folder / name).write_bytes(b"not an image")
    return root


def rec(root: Path, folder: str, name: str, pid: int, camid: int) -> ImageRecord:
    return ImageRecord(str(root / folder / name), pid, camid)


def table_rows(summary: str) -> dict[str, list[str]]:
    """Summary table rows keyed by subset, as stripped cells."""
    rows = {}
    for line in summary.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 4 and cells[0] in ("subset", "train", "query", "gallery"):
            rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture
def market(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "market", MARKET_FILES)


def test_market_records_are_exact_sorted_and_relabelled(market: Path) -> None:
    ds = Market1501(market, verbose=False)
    tr, q, g = "bounding_box_train", "query", "bounding_box_test"
    # Sorted file names; original ids 2, 7, 10 become 0, 1, 2; junk and the distractor are out.
    assert ds.train == [
        rec(market, tr, "0002_c1s1_000451_03.jpg", 0, 0),
        rec(market, tr, "0002_c2s1_000301_01.jpg", 0, 1),
        rec(market, tr, "0007_c3s3_015725_01.jpg", 1, 2),
        rec(market, tr, "0010_c6s4_002452_02.jpg", 2, 5),
    ]
    assert ds.query == [
        rec(market, q, "0003_c1s1_000551_00.jpg", 3, 0),
        rec(market, q, "0005_c4s2_000001_00.jpg", 5, 3),
    ]
    assert ds.gallery == [
        rec(market, g, "0000_c1s1_000100_00.jpg", 0, 0),
        rec(market, g, "0003_c2s1_000001_00.jpg", 3, 1),
        rec(market, g, "0005_c4s2_000002_00.jpg", 5, 3),
        rec(market, g, "0005_c5s3_000020_01.jpg", 5, 4),
    ]
    assert (ds.num_train_pids, ds.num_train_cams) == (3, 4)
    assert ds.name == "market1501"
    assert isinstance(ds, ReIDDataset)


def test_market_reports_skipped_files_and_left_out_ids(market: Path) -> None:
    ds = Market1501(market, verbose=False)
    assert ds.skipped == {
        "bounding_box_train/": ("Thumbs.db", "bad.jpg"),
        "query/": ("Thumbs.db",),
        "bounding_box_test/": ("notes.txt",),
    }
    assert ds.num_skipped == 4
    text = ds.summary()
    assert table_rows(text) == {
        "subset": ["# ids", "# images", "# cameras"],
        "train": ["3", "4", "4"],
        "query": ["2", "2", "2"],
        "gallery": ["3", "4", "4"],
    }
    assert "skipped 2 file(s) in bounding_box_train/ not matching the naming scheme: " in text
    assert "Thumbs.db, bad.jpg" in text
    assert "left out pid -1 (junk) in bounding_box_train/: 1 image(s)" in text
    assert "left out pid -1 (junk) in bounding_box_test/: 1 image(s)" in text
    assert "left out pid 0 (distractors) in bounding_box_train/: 1 image(s)" in text


def test_summary_lists_a_few_names_then_counts(tmp_path: Path) -> None:
    files = {k: list(v) for k, v in MARKET_FILES.items()}
    files["query"] += [f"stray{i}.jpg" for i in range(7)]
    ds = Market1501(make_tree(tmp_path, files), verbose=False)
    line = next(s for s in ds.summary().splitlines() if "in query/" in s)
    assert line.startswith("skipped 8 file(s) in query/")
    assert line.endswith("Thumbs.db, stray0.jpg, stray1.jpg, stray2.jpg, stray3.jpg, ... (3 more)")


def test_verbose_prints_the_summary(market: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = Market1501(market)
    assert capsys.readouterr().out == ds.summary() + "\n"
    Market1501(market, verbose=False)
    assert capsys.readouterr().out == ""


def test_market_accepts_parent_of_official_folder(tmp_path: Path) -> None:
    make_tree(tmp_path / "Market-1501-v15.09.15", MARKET_FILES)
    ds = Market1501(tmp_path, verbose=False)
    assert ds.root == tmp_path / "Market-1501-v15.09.15"
    assert ds.train[0].path.startswith(str(tmp_path / "Market-1501-v15.09.15"))


def test_duke_records_cameras_up_to_8_and_large_ids(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "DukeMTMC-reID", DUKE_FILES)
    ds = DukeMTMCreID(tmp_path, verbose=False)
    tr = "bounding_box_train"
    assert ds.train == [
        rec(root, tr, "0001_c2_f0046182.jpg", 0, 1),
        rec(root, tr, "0001_c7_f0046999.jpg", 0, 6),
        rec(root, tr, "5000_c8_f0001234.jpg", 1, 7),
    ]
    assert ds.query == [rec(root, "query", "0005_c1_f0000001.jpg", 5, 0)]
    assert [(r.pid, r.camid) for r in ds.gallery] == [(5, 2), (12, 7)]
    assert ds.skipped == {"query/": ("random.jpg",)}


def test_missing_root_names_path_folders_and_archive(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetLayoutError) as info:
        Market1501(missing, verbose=False)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in msg
    for part in (
        "bounding_box_train/",
        "query/",
        "bounding_box_test/",
        "Market-1501-v15.09.15.zip",
    ):
        assert part in msg


def test_missing_split_names_it_and_the_archive(tmp_path: Path) -> None:
    files = {k: v for k, v in DUKE_FILES.items() if k != "query"}
    root = make_tree(tmp_path, files)
    with pytest.raises(DatasetLayoutError, match=r"missing in .*: query/;") as info:
        DukeMTMCreID(root, verbose=False)
    assert "DukeMTMC-reID.zip" in str(info.value)
    assert "bounding_box_train/" not in str(info.value).split(";")[0]


@pytest.mark.parametrize(
    ("name", "field", "expected"),
    [
        ("0003_c7s1_000001_00.jpg", "camera 7", "1..6"),
        ("0003_c0s1_000001_00.jpg", "camera 0", "1..6"),
        ("1502_c1s1_000001_00.jpg", "pid 1502", "-1..1501"),
        ("-2_c1s1_000001_00.jpg", "pid -2", "-1..1501"),
    ],
)
def test_market_out_of_range_names_file_field_and_range(
    tmp_path: Path, name: str, field: str, expected: str
) -> None:
    files = {k: list(v) for k, v in MARKET_FILES.items()}
    files["bounding_box_test"].append(name)
    root = make_tree(tmp_path, files)
    with pytest.raises(DatasetFormatError) as info:
        Market1501(root, verbose=False)
    msg = str(info.value)
    assert str(root / "bounding_box_test" / name) in msg
    assert field in msg
    assert f"expected {expected}" in msg


def test_duke_camera_9_is_out_of_range(tmp_path: Path) -> None:
    files = {k: list(v) for k, v in DUKE_FILES.items()}
    files["query"].append("0005_c9_f0000002.jpg")
    with pytest.raises(DatasetFormatError, match=r"camera 9 .*0005_c9_f0000002\.jpg.*1\.\.8"):
        DukeMTMCreID(make_tree(tmp_path, files), verbose=False)


@pytest.mark.parametrize("contents", [[], ["Thumbs.db"], ["-1_c1s1_000001_00.jpg"]])
def test_empty_split_names_the_folder(tmp_path: Path, contents: list[str]) -> None:
    files = {k: list(v) for k, v in MARKET_FILES.items()}
    files["query"] = contents
    root = make_tree(tmp_path, files)
    with pytest.raises(DatasetFormatError, match="no usable images in") as info:
        Market1501(root, verbose=False)
    assert str(root / "query") in str(info.value)


def test_build_dataset_by_name(market: Path) -> None:
    ds = build_dataset("Market1501", market, verbose=False)
    assert isinstance(ds, Market1501)
    assert {"market1501", "dukemtmcreid", "imagefolder", "mars"} <= set(DATASETS)
    with pytest.raises(ValueError, match="unknown dataset 'cuhk03'; available: dukemtmcreid, "):
        build_dataset("cuhk03", market)


# ---- ImageFolderDataset -------------------------------------------------------------------


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    root = tmp_path / "mine"
    for rel in [
        "train/zoe/c1_001.jpg",
        "train/zoe/c2_002.jpg",
        "train/adam/c3_001.jpg",
        "query/p10/c1_a.jpg",
        "query/p2/c2_a.jpg",
        "gallery/p2/c1_b.jpg",
        "gallery/p9/c2_b.png",
        "gallery/p10/c2_c.jpg",
    ]:
        write_image(root / rel)
    (root / "train" / "readme.txt").write_text("stray")
    (root / "gallery" / "p9" / "notes.txt").write_text("stray")
    return root


def test_image_folder_ids_cameras_and_skips(folder_root: Path) -> None:
    ds = ImageFolderDataset(folder_root, verbose=False)
    r = folder_root
    # Train names sorted (adam, zoe) -> 0, 1.
    assert ds.train_identities == ("adam", "zoe")
    assert ds.train == [
        rec(r, "train/adam", "c3_001.jpg", 0, 2),
        rec(r, "train/zoe", "c1_001.jpg", 1, 0),
        rec(r, "train/zoe", "c2_002.jpg", 1, 1),
    ]
    # Query and gallery share one numbering over the sorted union of names.
    assert ds.test_identities == ("p10", "p2", "p9")
    assert ds.query == [rec(r, "query/p10", "c1_a.jpg", 0, 0), rec(r, "query/p2", "c2_a.jpg", 1, 1)]
    assert ds.gallery == [
        rec(r, "gallery/p10", "c2_c.jpg", 0, 1),
        rec(r, "gallery/p2", "c1_b.jpg", 1, 0),
        rec(r, "gallery/p9", "c2_b.png", 2, 1),
    ]
    assert ds.skipped == {"train/": ("readme.txt",), "gallery/": ("p9/notes.txt",)}
    assert build_dataset("imagefolder", folder_root, verbose=False).gallery == ds.gallery


def test_image_folder_cameras_csv_wins_over_names(folder_root: Path) -> None:
    (folder_root / "cameras.csv").write_text(
        "path,camid\n./train/adam/c3_001.jpg,7\nquery/p2/c2_a.jpg,4\n"
    )
    ds = ImageFolderDataset(folder_root, verbose=False)
    assert [r.camid for r in ds.train] == [7, 0, 1]
    assert [r.camid for r in ds.query] == [0, 4]


def test_image_folder_custom_pattern_and_explicit_csv(tmp_path: Path) -> None:
    for rel in ["train/a/cam03-x.jpg", "query/b/cam01-x.jpg", "gallery/b/noname.jpg"]:
        write_image(tmp_path / rel)
    (tmp_path / "cams.csv").write_text("path,camid\ngallery/b/noname.jpg,1\n")
    ds = ImageFolderDataset(
        tmp_path, camera_pattern=r"cam(\d+)", cameras_csv="cams.csv", verbose=False
    )
    assert [r.camid for r in ds.train + ds.query + ds.gallery] == [2, 0, 1]


def test_image_folder_without_camera_names_the_file(folder_root: Path) -> None:
    write_image(folder_root / "gallery" / "p2" / "nocam.jpg")
    with pytest.raises(DatasetFormatError, match=r"no camera for image .*nocam\.jpg"):
        ImageFolderDataset(folder_root, verbose=False)


def test_image_folder_rejects_camera_zero_in_name(folder_root: Path) -> None:
    write_image(folder_root / "query" / "p2" / "c0_z.jpg")
    with pytest.raises(DatasetFormatError, match=r"camera '0' in file name .*c0_z\.jpg"):
        ImageFolderDataset(folder_root, verbose=False)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("file,cam\nx.jpg,1\n", "expected a header with columns path,camid"),
        ("path,camid\nquery/p2/c2_a.jpg,-1\n", "line 2: camid must be a non-negative integer"),
        ("path,camid\na.jpg,1\n./a.jpg,2\n", "line 3: path 'a.jpg' listed twice"),
    ],
)
def test_image_folder_bad_csv(folder_root: Path, table: str, message: str) -> None:
    (folder_root / "cameras.csv").write_text(table)
    with pytest.raises(DatasetFormatError, match=message):
        ImageFolderDataset(folder_root, verbose=False)


def test_image_folder_layout_errors(tmp_path: Path, folder_root: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="imagefolder root not found"):
        ImageFolderDataset(tmp_path / "nothing", verbose=False)
    with pytest.raises(DatasetLayoutError, match="camera table not found"):
        ImageFolderDataset(folder_root, cameras_csv="none.csv", verbose=False)
    with pytest.raises(ValueError, match="exactly one group"):
        ImageFolderDataset(folder_root, camera_pattern=r"c\d+", verbose=False)
    for path in (folder_root / "query").rglob("*"):
        if path.is_file():
            path.unlink()
    with pytest.raises(
        DatasetFormatError, match=re.escape(f"no images in {folder_root / 'query'}")
    ):
        ImageFolderDataset(folder_root, verbose=False)
    for path in sorted((folder_root / "query").rglob("*"), reverse=True):
        path.rmdir()
    (folder_root / "query").rmdir()
    with pytest.raises(DatasetError, match=r"split folder.* missing in .*: query/"):
        ImageFolderDataset(folder_root, verbose=False)


# ---- ImageDataset --------------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def noise_jpeg(path: Path) -> None:
    """A JPEG big enough that truncating it keeps the header readable."""
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (64, 32, 3), dtype=torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def test_image_dataset_items(market: Path) -> None:
    records = Market1501(market, verbose=False).query
    ds = ImageDataset(records, build_test_transform(8, 4))
    item = ds[1]
    assert set(item) == {"image", "pid", "camid", "index"}
    assert (item["pid"], item["camid"], item["index"]) == (5, 3, 1)
    assert item["image"].shape == (3, 8, 4)
    assert item["image"].dtype == torch.uint8
    assert ds.pids == [3, 5]
    assert ds.camids == [0, 3]
    assert len(ds) == 2


def test_image_dataset_raises_naming_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "b.jpg"
    noise_jpeg(bad)
    truncate(bad)
    ds = ImageDataset([ImageRecord(str(bad), 1, 0)], build_test_transform(8, 4))
    with pytest.raises(ImageReadError, match=re.escape(f"cannot read image {bad}")):
        ds[0]


def test_image_dataset_skip_broken_reports_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = [tmp_path / f"good{i}.jpg" for i in range(3)]
    for path in good:
        noise_jpeg(path)
    truncated, garbage = tmp_path / "trunc.jpg", tmp_path / "garbage.jpg"
    noise_jpeg(truncated)
    truncate(truncated)
    garbage.write_bytes(b"GIF? no")
    paths = [good[0], truncated, good[1], garbage, good[2]]
    records = [ImageRecord(str(p), pid, 0) for pid, p in enumerate(paths)]
    with caplog.at_level(logging.WARNING, logger="duatm.data.image_dataset"):
        ds = ImageDataset(records, build_test_transform(8, 4), skip_broken=True)
    assert [s.path for s in ds.skipped] == [str(truncated), str(garbage)]
    assert ds.pids == [0, 2, 4]
    assert [ds[i]["pid"] for i in range(len(ds))] == [0, 2, 4]
    assert f"skipped 2 unreadable image(s) of 5: {truncated}, {garbage}" in caplog.text


def test_image_dataset_rejects_tracklets() -> None:
    with pytest.raises(TypeError, match="item 0 is TrackletRecord"):
        ImageDataset([TrackletRecord(("a.jpg",), 0, 0)], build_test_transform(8, 4))


def test_cached_images_give_the_same_tensors_as_decoding(tmp_path: Path) -> None:
    paths = [tmp_path / f"img{i}.jpg" for i in range(3)]
    for path in paths:
        noise_jpeg(path)
    records = [ImageRecord(str(p), i, 0) for i, p in enumerate(paths)]
    test = build_test_transform(16, 8)
    cached = ImageDataset(records, test, cache=True)
    assert cached.cached is not None
    assert cached.cached.shape == (3, 3, 16, 8) and cached.cached.dtype == torch.uint8
    for i in range(3):
        assert torch.equal(cached[i]["image"], ImageDataset(records, test)[i]["image"])
    # The random augmentation draws the same numbers whether or not the pixels were cached.
    train = build_train_transform(16, 8, pad=3, flip_prob=0.5, random_erasing=0.5)
    torch.manual_seed(7)
    from_cache = [ImageDataset(records, train, cache=True)[i]["image"] for i in range(3)]
    torch.manual_seed(7)
    from_disk = [ImageDataset(records, train)[i]["image"] for i in range(3)]
    for a, b in zip(from_cache, from_disk, strict=True):
        assert torch.equal(a, b)


def test_cache_fails_on_broken_file_or_skips_it(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    noise_jpeg(good)
    noise_jpeg(bad)
    truncate(bad)
    records = [ImageRecord(str(good), 0, 0), ImageRecord(str(bad), 1, 0)]
    with pytest.raises(ImageReadError, match=re.escape(f"cannot read image {bad}")):
        ImageDataset(records, build_test_transform(8, 4), cache=True)
    ds = ImageDataset(records, build_test_transform(8, 4), cache=True, skip_broken=True)
    assert ds.pids == [0] and [s.path for s in ds.skipped] == [str(bad)]
    assert ds.cached is not None and ds.cached.shape == (1, 3, 8, 4)
