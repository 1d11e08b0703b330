"""Video dataset parsers on miniature trees in each official layout, record by record against a
transcription of the parsing rules of torchreid (the parsers the field uses), and bad trees.

Each ``torchreid_*`` function below is written from torchreid's rules (deep-person-reid,
``torchreid/data/datasets/video/``), independently of our parser, so the comparison can fail.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from duatm.config import ConfigError, load_config
from duatm.data.datasets import (
    DATASETS,
    MARS,
    DatasetFormatError,
    DatasetLayoutError,
    build_dataset,
)
from duatm.data.records import TrackletRecord

Raw = tuple[tuple[str, ...], int, int]  # torchreid's (img_paths, pid, camid)


def as_raw(records: Sequence[TrackletRecord]) -> list[Raw]:
    return [(r.paths, r.pid, r.camid) for r in records]


def assert_same_up_to_label_names(ours: Sequence[Raw], theirs: Sequence[Raw]) -> None:
    """Equal record by record, except that training labels may be named differently: torchreid
    numbers identities in ``set`` iteration order, we in sorted order of the original ids."""
    assert len(ours) == len(theirs)
    mapping: dict[int, int] = {}
    for (paths, pid, camid), (their_paths, their_pid, their_camid) in zip(
        ours, theirs, strict=True
    ):
        assert (paths, camid) == (their_paths, their_camid)
        assert mapping.setdefault(pid, their_pid) == their_pid
    assert len(set(mapping.values())) == len(mapping)  # a bijection


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


# --- MARS ----------------------------------------------------------------------------------

# (pid, camera, frames) per tracklet of each split, in the kit's order (sorted by name).
MARS_TRAIN = [(3, 1, 4), (3, 2, 2), (7, 1, 3), (7, 1, 5), (7, 4, 1), (12, 6, 2)]
MARS_TEST = [
    (-1, 1, 2),  # junk: left out
    (-1, 3, 1),
    (0, 2, 3),  # distractor: stays in the gallery
    (2, 1, 4),
    (2, 3, 2),
    (2, 3, 3),
    (5, 1, 1),
    (5, 5, 6),
    (9, 2, 2),
]
MARS_QUERY_IDX = [7, 4, 8]  # 1-based rows of the test tracks, not in order


def mars_name(pid: int, camera: int, tracklet: int, frame: int) -> str:
    folder = "00-1" if pid == -1 else f"{pid:04d}"
    return f"{folder}C{camera}T{tracklet:04d}F{frame:03d}.jpg"


def write_mars_split(
    root: Path, home: str, tracks: Sequence[tuple[int, int, int]]
) -> tuple[list[str], np.ndarray]:
    """Frames on disk, the name list and the track-info matrix of one split."""
    names: list[str] = []
    rows = []
    counters: dict[tuple[int, int], int] = {}
    for pid, camera, frames in tracks:
        tracklet = counters[pid, camera] = counters.get((pid, camera), 0) + 1
        start = len(names) + 1
        for f in range(1, frames + 1):
            name = mars_name(pid, camera, tracklet, f)
            names.append(name)
            touch(root / home / name[:4] / name)
        rows.append([start, len(names), pid, camera])
    # The kit stores integer matrices (torchreid slices the name list with them).
    return names, np.asarray(rows, dtype=np.int32)


def write_mars(
    root: Path,
    train: Sequence[tuple[int, int, int]] = MARS_TRAIN,
    test: Sequence[tuple[int, int, int]] = MARS_TEST,
    query_idx: Sequence[int] = MARS_QUERY_IDX,
) -> Path:
    info = root / "info"
    info.mkdir(parents=True)
    train_names, train_tracks = write_mars_split(root, "bbox_train", train)
    test_names, test_tracks = write_mars_split(root, "bbox_test", test)
    (info / "train_name.txt").write_text("\n".join(train_names) + "\n")
    (info / "test_name.txt").write_text("\n".join(test_names) + "\n")
    savemat(info / "tracks_train_info.mat", {"track_train_info": train_tracks})
    savemat(info / "tracks_test_info.mat", {"track_test_info": test_tracks})
    # A 1 x Q row vector, as the kit's query_IDX.
    savemat(info / "query_IDX.mat", {"query_IDX": np.asarray([query_idx], dtype=np.int32)})
    return root


def torchreid_mars(root: Path) -> dict[str, list[Raw]]:
    """torchreid's Mars rules: name lists read line by line (trailing whitespace stripped);
    query rows = query_IDX - 1; gallery = every test row not among them; a row's frames are
    names[start - 1 : end] under HOME/name[:4]/; pid -1 rows skipped; camid = camera - 1;
    training pids relabelled by enumerating ``set`` of the training pids."""

    def names(path: Path) -> list[str]:
        with open(path) as handle:
            return [line.rstrip() for line in handle]

    def process(
        names: list[str], meta: np.ndarray, home: str, relabel: bool
    ) -> list[tuple[tuple[str, ...], int, int]]:
        pid2label = {pid: label for label, pid in enumerate(set(meta[:, 2].tolist()))}
        out = []
        for start, end, pid, camid in meta.tolist():
            if pid == -1:
                continue
            assert 1 <= camid <= 6
            img_names = names[start - 1 : end]
            assert len({n[:4] for n in img_names}) == 1
            assert len({n[5] for n in img_names}) == 1
            paths = tuple(os.path.join(str(root), home, n[:4], n) for n in img_names)
            out.append((paths, pid2label[pid] if relabel else pid, camid - 1))
        return out

    info = root / "info"
    track_train = loadmat(info / "tracks_train_info.mat")["track_train_info"]
    track_test = loadmat(info / "tracks_test_info.mat")["track_test_info"]
    query_idx = loadmat(info / "query_IDX.mat")["query_IDX"].squeeze() - 1
    gallery_idx = [i for i in range(track_test.shape[0]) if i not in query_idx]
    test_names = names(info / "test_name.txt")
    return {
        "train": process(names(info / "train_name.txt"), track_train, "bbox_train", True),
        "query": process(test_names, track_test[query_idx, :], "bbox_test", False),
        "gallery": process(test_names, track_test[gallery_idx, :], "bbox_test", False),
    }


@pytest.fixture
def mars(tmp_path: Path) -> Path:
    return write_mars(tmp_path / "MARS")


def test_mars_agrees_with_torchreid_record_by_record(mars: Path) -> None:
    ours = MARS(mars, verbose=False)
    theirs = torchreid_mars(mars)
    assert_same_up_to_label_names(as_raw(ours.train), theirs["train"])
    assert as_raw(ours.query) == theirs["query"]
    assert as_raw(ours.gallery) == theirs["gallery"]
    assert (len(ours.train), len(ours.query), len(ours.gallery)) == (6, 3, 4)


def test_mars_records_in_detail(mars: Path) -> None:
    ours = MARS(mars, verbose=False)
    # Training ids 3, 7, 12 become 0, 1, 2 in sorted order; cameras are 0-based.
    assert [(r.pid, r.camid, len(r.paths)) for r in ours.train] == [
        (0, 0, 4),
        (0, 1, 2),
        (1, 0, 3),
        (1, 0, 5),
        (1, 3, 1),
        (2, 5, 2),
    ]
    assert ours.train[3].paths == tuple(
        str(mars / "bbox_train" / "0007" / f"0007C1T0002F{f:03d}.jpg") for f in range(1, 6)
    )
    # Queries in query_IDX order; the gallery keeps the distractor, drops the two junk rows.
    assert [(r.pid, r.camid) for r in ours.query] == [(5, 0), (2, 0), (5, 4)]
    assert [(r.pid, r.camid) for r in ours.gallery] == [(0, 1), (2, 2), (2, 2), (9, 1)]
    assert ours.num_train_pids == 3


def test_mars_summary_counts_tracklets_and_junk(mars: Path, capsys) -> None:
    MARS(mars)
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "mars dataset"
    assert "# tracklets" in out
    assert "left out pid -1 (junk) tracklets: train 0, query 0, gallery 2" in out
    assert "frames per tracklet (min / median / max): train 1 / 2.5 / 5; query 1 / 4 / 6" in out
    table = {line.split("|")[0].strip(): line for line in out.splitlines() if "|" in line}
    assert [c.strip() for c in table["gallery"].split("|")] == ["gallery", "3", "4", "2"]


def test_mars_accepts_the_parent_folder_and_is_registered(tmp_path: Path) -> None:
    write_mars(tmp_path / "mars")
    assert len(MARS(tmp_path, verbose=False).train) == 6
    assert DATASETS["mars"] is MARS
    assert len(build_dataset("MARS", tmp_path / "mars", verbose=False).query) == 3


def test_mars_missing_root_or_folders_name_them_and_the_download(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetLayoutError, match=r"mars root not found: .*nowhere.*MARS-evaluation"
    ):
        MARS(tmp_path / "nowhere")
    (tmp_path / "bbox_train").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"missing in .*: bbox_test, info; mars expects"):
        MARS(tmp_path)


@pytest.mark.parametrize(
    "name", ["train_name.txt", "tracks_train_info.mat", "tracks_test_info.mat", "query_IDX.mat"]
)
def test_mars_missing_info_file_is_named(mars: Path, name: str) -> None:
    (mars / "info" / name).unlink()
    with pytest.raises(DatasetLayoutError, match=rf"not found: .*info/{name}$"):
        MARS(mars, verbose=False)


def rewrite_tracks(mars: Path, edit) -> None:
    path = mars / "info" / "tracks_test_info.mat"
    tracks = loadmat(path)["track_test_info"]
    edit(tracks)
    savemat(path, {"track_test_info": tracks})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.__setitem__((3, 1), 99),
            r"tracks_test_info\.mat row 4: frames 7\.\.99 out of range 1\.\.24 "
            r"\(the lines of .*test_name\.txt\)",
        ),
        (
            lambda t: t.__setitem__((3, 0), 0),
            r"row 4: frames 0\.\.10 out of range",
        ),
        (
            lambda t: t.__setitem__((3, 3), 7),
            r"tracks_test_info\.mat row 4: camera 7 out of range \(expected 1\.\.6\)",
        ),
        (
            lambda t: t.__setitem__((3, 2), 5),
            r"test_name\.txt line 7: frame '0002C1T0001F001\.jpg' is not of pid 5 camera 1 as "
            r".*tracks_test_info\.mat row 4 says",
        ),
        (
            lambda t: t.__setitem__((3, 2), -3),
            r"row 4: pid -3, expected -1 \(junk\) or >= 0",
        ),
    ],
)
def test_mars_bad_track_rows_are_named(mars: Path, edit, message: str) -> None:
    rewrite_tracks(mars, edit)
    with pytest.raises(DatasetFormatError, match=message):
        MARS(mars, verbose=False)


def test_mars_frame_listed_but_absent_is_named(mars: Path) -> None:
    (mars / "bbox_test" / "0005" / "0005C5T0001F004.jpg").unlink()
    with pytest.raises(
        DatasetLayoutError,
        match=r"frame listed in .*test_name\.txt line 20 but absent: "
        r".*bbox_test/0005/0005C5T0001F004\.jpg$",
    ):
        MARS(mars, verbose=False)


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        ({"query_IDX": np.asarray([[1, 10]])}, r"holds 10, out of range 1\.\.9 \(the rows of"),
        ({"query_IDX": np.asarray([[4, 5, 4]])}, r"'query_IDX' lists track 4 twice"),
        ({"query_IDX": np.asarray([[4.5]])}, r"must hold integers, found 4\.5"),
        ({"query_IDX": np.ones((2, 2))}, r"must be a vector, got shape \(2, 2\)"),
        ({"queries": np.asarray([[4]])}, r"variable 'query_IDX' not found \(variables there: "),
    ],
)
def test_mars_bad_query_index_is_named(mars: Path, contents: dict, message: str) -> None:
    savemat(mars / "info" / "query_IDX.mat", contents)
    with pytest.raises(DatasetFormatError, match=rf"query_IDX\.mat: .*{message}"):
        MARS(mars, verbose=False)


def test_mars_bad_mat_files_are_named(mars: Path) -> None:
    savemat(mars / "info" / "tracks_train_info.mat", {"track_train_info": np.ones((3, 5))})
    with pytest.raises(DatasetFormatError, match=r"must be an N x 4 matrix .*got shape \(3, 5\)"):
        MARS(mars, verbose=False)
    (mars / "info" / "tracks_train_info.mat").write_text("not a mat file")
    with pytest.raises(DatasetFormatError, match=r"tracks_train_info\.mat: not a readable MATLAB"):
        MARS(mars, verbose=False)


def test_mars_accepts_double_matrices(mars: Path) -> None:
    # MATLAB's default type is double; whole numbers stored as doubles parse the same.
    for name, variable in (("tracks_train_info", "track_train_info"), ("query_IDX", "query_IDX")):
        path = mars / "info" / f"{name}.mat"
        savemat(path, {variable: loadmat(path)[variable].astype(np.float64)})
    ours = MARS(mars, verbose=False)
    assert [(r.pid, r.camid) for r in ours.query] == [(5, 0), (2, 0), (5, 4)]
    assert len(ours.train) == 6


def test_config_split_is_checked_against_the_dataset() -> None:
    assert load_config(None, ["data.dataset=mars"]).data.split == 0
    with pytest.raises(ConfigError, match=r"data\.split must be 0 \(dataset mars has one split\)"):
        load_config(None, ["data.dataset=mars", "data.split=2"])
