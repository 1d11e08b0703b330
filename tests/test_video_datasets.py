"""Video dataset parsers on miniature trees in each official layout, record by record against a
transcription of the parsing rules of torchreid (the parsers the field uses), and bad trees.

Each ``torchreid_*`` function below is written from torchreid's rules (deep-person-reid,
``torchreid/data/datasets/video/``), independently of our parser, so the comparison can fail.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from duatm.config import ConfigError, load_config
from duatm.data.datasets import (
    DATASETS,
    ILIDSVID,
    MARS,
    PRID2011,
    DatasetError,
    DatasetFormatError,
    DatasetLayoutError,
    DukeMTMCVidReID,
    build_dataset,
)
from duatm.data.records import TrackletRecord
from duatm.engine.builders import load_dataset

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
    with pytest.raises(DatasetLayoutError, match=r"missing in .*: bbox_test/, info/; mars expects"):
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
        (
            lambda t: t.__setitem__((3, 0), 12),
            r"tracks_test_info\.mat row 4: frames 12\.\.10: start after end",
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
        ({"query_IDX": np.asarray([[1, 2]])}, r"no query tracklets \(every query track is junk"),
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
    video = ["data.dataset=mars", "model.kind=video"]
    assert load_config(None, video).data.split == 0
    with pytest.raises(ConfigError, match=r"data\.split must be 0 \(dataset mars has one split\)"):
        load_config(None, [*video, "data.split=2"])


# --- DukeMTMC-VideoReID --------------------------------------------------------------------

# split -> pid -> tracklet folder -> (camera, frame numbers, naming)
DUKE = {
    "train": {
        1: {"0001": (2, range(1, 4), "new"), "0002": (5, range(1, 3), "new")},
        23: {"0001": (1, range(1, 5), "old")},
        7140: {"0004": (6, range(1, 3), "new")},
    },
    "query": {5: {"0001": (3, range(1, 3), "new")}, 100: {"0001": (8, range(1, 4), "new")}},
    "gallery": {
        5: {"0002": (4, range(1, 4), "new"), "0003": (6, range(2, 6), "new")},  # starts at 2
        100: {"0002": (7, range(1, 3), "old")},
        5000: {"0001": (1, range(1, 3), "new")},  # a distractor identity
    },
}


def duke_frame(pid: int, camera: int, frame: int, naming: str) -> str:
    if naming == "old":
        return f"{pid:04d}C{camera}F{frame:04d}X{30000 + frame:05d}.jpg"
    return f"{pid:04d}_C{camera}_F{frame:04d}_X{30000 + frame:05d}.jpg"


def write_duke(root: Path) -> Path:
    for split, identities in DUKE.items():
        (root / split).mkdir(parents=True)
        for pid, tracklets in identities.items():
            for tracklet, (camera, frames, naming) in tracklets.items():
                for f in frames:
                    touch(
                        root / split / f"{pid:04d}" / tracklet / duke_frame(pid, camera, f, naming)
                    )
    return root


def torchreid_duke_video(root: Path) -> dict[str, list[Raw]]:
    """torchreid's DukeMTMCVidReID rules: identity folders globbed, pid = int(folder name);
    training pids relabelled by enumerating ``set``; for a tracklet folder of n .jpg files the
    frames are, for i = 1..n, the first file matching ``*F{i:04d}*.jpg`` (a missing number is
    skipped with a warning); camid from the first frame: name[5] (old naming, no "_") or
    name[6], minus 1."""
    out = {}
    for split in ("train", "query", "gallery"):
        pdirs = glob.glob(os.path.join(root, split, "*"))
        pid2label = {
            pid: label for label, pid in enumerate({int(os.path.basename(p)) for p in pdirs})
        }
        tracklets = []
        for pdir in pdirs:
            pid = int(os.path.basename(pdir))
            if split == "train":
                pid = pid2label[pid]
            for tdir in glob.glob(os.path.join(pdir, "*")):
                num_imgs = len(glob.glob(os.path.join(tdir, "*.jpg")))
                paths = []
                for idx in range(num_imgs):
                    found = glob.glob(os.path.join(tdir, "*F" + str(idx + 1).zfill(4) + "*.jpg"))
                    if found:
                        paths.append(found[0])
                name = os.path.basename(paths[0])
                camid = int(name[5]) - 1 if name.find("_") == -1 else int(name[6]) - 1
                tracklets.append((tuple(paths), pid, camid))
        out[split] = tracklets
    return out


def test_duke_video_agrees_with_torchreid_but_keeps_every_frame(tmp_path: Path) -> None:
    root = write_duke(tmp_path / "DukeMTMC-VideoReID")
    ours = DukeMTMCVidReID(tmp_path, verbose=False)  # the parent of the official folder
    theirs = torchreid_duke_video(root)
    late_start = str(root / "gallery" / "0005" / "0003")
    for split in ("train", "query", "gallery"):
        mine = sorted(as_raw(getattr(ours, split)))  # torchreid's order is the file system's
        other = sorted(theirs[split])
        assert len(mine) == len(other) == sum(len(t) for t in DUKE[split].values())
        for (paths, _, camid), (their_paths, _, their_camid) in zip(mine, other, strict=True):
            assert list(paths) == sorted(paths)  # file-name order
            if paths[0].startswith(late_start):
                # torchreid looks up F0001..F0004 for these 4 frames: it loses F0005.
                assert their_paths == paths[:-1]
                assert paths[-1].endswith("_F0005_X30005.jpg")
            else:
                assert their_paths == paths
            assert camid == their_camid
        if split == "train":
            assert_same_up_to_label_names(mine, other)
        else:
            assert [pid for _, pid, _ in mine] == [pid for _, pid, _ in other]
    assert [(r.pid, r.camid) for r in ours.train] == [(0, 1), (0, 4), (1, 0), (2, 5)]
    assert sorted({r.pid for r in ours.gallery}) == [5, 100, 5000]


def test_duke_video_lists_what_it_skips(tmp_path: Path, capsys) -> None:
    root = write_duke(tmp_path)
    touch(root / "query" / "readme.txt")
    (root / "query" / "extras").mkdir()
    touch(root / "gallery" / "0005" / "0002" / "Thumbs.db")
    touch(root / "gallery" / "0005" / "list.txt")
    ours = DukeMTMCVidReID(root)
    out = capsys.readouterr().out
    assert "skipped 2 file(s) in query/ not matching the naming scheme: readme.txt, extras/" in out
    assert "0005/0002/Thumbs.db" in out and "0005/list.txt" in out
    assert len(ours.gallery) == 4


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda r: (r / "train" / "0001" / "0009").mkdir(),
            r"tracklet folder without frames: .*train/0001/0009$",
        ),
        (
            lambda r: touch(r / "query" / "0005" / "0001" / "0006_C3_F0003_X1.jpg"),
            r"frame .*0005/0001/0006_C3_F0003_X1\.jpg names pid 6 inside the folder of pid 5",
        ),
        (
            lambda r: touch(r / "query" / "0005" / "0001" / "0005_C9_F0003_X1.jpg"),
            r"camera 9 out of range in file name .*0005_C9_F0003_X1\.jpg \(expected 1\.\.8\)",
        ),
        (
            lambda r: touch(r / "query" / "0005" / "0001" / "0005_C4_F0003_X1.jpg"),
            r"tracklet .*query/0005/0001 mixes cameras \[3, 4\]",
        ),
        (
            lambda r: touch(r / "query" / "0005" / "0001" / "frame3.jpg"),
            r"frame name .*frame3\.jpg does not start with PPPP_C<camera>",
        ),
        (
            lambda r: shutil.rmtree(r / "gallery"),
            r"missing in .*: gallery/; dukemtmcvidreid expects .*DukeMTMC-VideoReID\.zip",
        ),
    ],
)
def test_duke_video_bad_trees_are_named(tmp_path: Path, make, message: str) -> None:
    root = write_duke(tmp_path)
    make(root)
    with pytest.raises(DatasetError, match=message):
        DukeMTMCVidReID(root, verbose=False)


# --- iLIDS-VID and PRID-2011 ---------------------------------------------------------------


def write_sequences(camera_dir: Path, persons: Sequence[str], prefix: str, rng) -> None:
    for person in persons:
        for _ in range(int(rng.integers(2, 6))):
            touch(camera_dir / person / f"{prefix}{person}_{int(rng.integers(100, 999)):05d}.png")


ILIDS_PERSONS = [f"person{n:03d}" for n in (1, 2, 4, 7, 11, 12, 19, 30)]


def write_ilids(root: Path, num_splits: int = 10) -> Path:
    rng = np.random.default_rng(0)
    sequences = root / "i-LIDS-VID" / "sequences"
    write_sequences(sequences / "cam1", ILIDS_PERSONS, "cam1_", rng)
    write_sequences(sequences / "cam2", ILIDS_PERSONS, "cam2_", rng)
    ls_set = np.stack([rng.permutation(len(ILIDS_PERSONS)) + 1 for _ in range(num_splits)])
    (root / "train-test people splits").mkdir()
    # The archive's matrix: one row per split, 1-based person indices, stored as doubles.
    savemat(
        root / "train-test people splits" / "train_test_splits_ilidsvid.mat",
        {"ls_set": ls_set.astype(np.float64)},
    )
    return root


def torchreid_two_camera(
    camera_dirs: tuple[Path, Path], train_dirs: Sequence[str], test_dirs: Sequence[str]
) -> dict[str, list[Raw]]:
    """torchreid's process_data/process_dir of iLIDSVID and PRID2011: pid = position in the
    split's list; per person the first camera's *.png sequence (camid 0) then the second's
    (camid 1); query = first camera of the test persons, gallery = second camera.
    torchreid keeps glob's (file-system) frame order; it is sorted here for the comparison."""

    def process(dirnames: Sequence[str], cams: tuple[int, ...]) -> list[Raw]:
        dirname2pid = {dirname: i for i, dirname in enumerate(dirnames)}
        out = []
        for dirname in dirnames:
            for cam in cams:
                img_names = glob.glob(os.path.join(camera_dirs[cam], dirname, "*.png"))
                assert len(img_names) > 0
                out.append((tuple(sorted(img_names)), dirname2pid[dirname], cam))
        return out

    return {
        "train": process(train_dirs, (0, 1)),
        "query": process(test_dirs, (0,)),
        "gallery": process(test_dirs, (1,)),
    }


def torchreid_ilids(root: Path, split_id: int) -> dict[str, list[Raw]]:
    """torchreid's iLIDSVID split preparation: ls_set rows; the first half of a row are the
    test persons, the rest the training persons, each sorted, as 1-based indices into the
    sorted cam1 person folders (torchreid also asserts the real 10 x 300 shape)."""
    mat = loadmat(root / "train-test people splits" / "train_test_splits_ilidsvid.mat")["ls_set"]
    half = mat.shape[1] // 2
    cam1 = root / "i-LIDS-VID" / "sequences" / "cam1"
    cam2 = root / "i-LIDS-VID" / "sequences" / "cam2"
    person_dirs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(cam1, "*")))
    assert set(person_dirs) == {os.path.basename(p) for p in glob.glob(os.path.join(cam2, "*"))}
    train_idxs = [int(i) - 1 for i in sorted(mat[split_id, half:])]
    test_idxs = [int(i) - 1 for i in sorted(mat[split_id, :half])]
    return torchreid_two_camera(
        (cam1, cam2), [person_dirs[i] for i in train_idxs], [person_dirs[i] for i in test_idxs]
    )


@pytest.mark.parametrize("split", [0, 3, 9])
def test_ilids_agrees_with_torchreid_on_every_split(tmp_path: Path, split: int) -> None:
    root = write_ilids(tmp_path / "ilids-vid")
    ours = ILIDSVID(tmp_path, split=split, verbose=False)
    theirs = torchreid_ilids(root, split)
    assert as_raw(ours.train) == theirs["train"]
    assert as_raw(ours.query) == theirs["query"]
    assert as_raw(ours.gallery) == theirs["gallery"]
    assert (len(ours.train), len(ours.query), len(ours.gallery)) == (8, 4, 4)


def test_ilids_splits_differ_and_are_chosen_by_config(tmp_path: Path) -> None:
    root = write_ilids(tmp_path)
    first = ILIDSVID(root, split=0, verbose=False)
    other = ILIDSVID(root, split=1, verbose=False)
    assert {r.paths for r in first.query} != {r.paths for r in other.query}
    cfg = load_config(
        None, ["data.dataset=ilidsvid", "model.kind=video", f"data.root={root}", "data.split=1"]
    )
    assert as_raw(load_dataset(cfg, verbose=False).query) == as_raw(other.query)
    assert build_dataset("ilidsvid", root, split=1, verbose=False).train == other.train
    with pytest.raises(ConfigError, match=r"data\.split must be an integer in 0\.\.9"):
        load_config(None, ["data.dataset=ilidsvid", "model.kind=video", "data.split=10"])
    with pytest.raises(ValueError, match="dataset mars has one split; got split=2"):
        build_dataset("mars", root, split=2)


def test_ilids_summary_names_the_split(tmp_path: Path, capsys) -> None:
    ILIDSVID(write_ilids(tmp_path), split=2)
    out = capsys.readouterr().out
    assert out.startswith("ilidsvid dataset\n")
    assert (
        "split 2 of train-test people splits/train_test_splits_ilidsvid.mat: 4 training and 4 test persons"
        in out
    )


def ilids_mat(root: Path) -> Path:
    return root / "train-test people splits" / "train_test_splits_ilidsvid.mat"


@pytest.mark.parametrize(
    ("make", "split", "message"),
    [
        (lambda r: ilids_mat(r).unlink(), 0, r"iLIDS-VID split file not found: .*ilidsvid\.mat$"),
        (
            lambda r: savemat(ilids_mat(r), {"ls_set": np.ones((10, 8))}),
            4,
            r"ilidsvid\.mat: row 5 of 'ls_set' is not a permutation of the person indices 1\.\.8",
        ),
        (
            lambda r: savemat(ilids_mat(r), {"ls_set": np.ones((10, 7))}),
            0,
            r"'ls_set' must be a splits x persons matrix with one column per person folder "
            r"\(8 in .*cam1/\), got shape \(10, 7\)",
        ),
        (lambda r: None, 10, r"split 10 out of range: .*ilidsvid\.mat holds 10 splits"),
        (
            lambda r: shutil.rmtree(r / "i-LIDS-VID" / "sequences" / "cam2" / "person007"),
            0,
            r"person 'person007' has a sequence only in .*cam1/",
        ),
        (
            lambda r: shutil.rmtree(r / "i-LIDS-VID" / "sequences" / "cam2"),
            0,
            r"camera folder not found: .*sequences/cam2$",
        ),
    ],
)
def test_ilids_bad_trees_are_named(tmp_path: Path, make, split: int, message: str) -> None:
    root = write_ilids(tmp_path)
    make(root)
    with pytest.raises(DatasetError, match=message):
        ILIDSVID(root, split=split, verbose=False)


PRID_BOTH = [f"person_{n:04d}" for n in range(1, 9)]


def write_prid(root: Path, num_splits: int = 10) -> Path:
    rng = np.random.default_rng(1)
    shots = root / "prid_2011" / "multi_shot"
    write_sequences(shots / "cam_a", [*PRID_BOTH, "person_0009"], "", rng)  # 9 only in A
    write_sequences(shots / "cam_b", [*PRID_BOTH, "person_0010", "person_0011"], "", rng)
    splits = []
    for _ in range(num_splits):
        order = [PRID_BOTH[i] for i in rng.permutation(len(PRID_BOTH))]
        splits.append({"train": order[:3], "test": order[3:6]})  # lists in no sorted order
    (root / "splits_prid2011.json").write_text(json.dumps(splits))
    return root


def torchreid_prid(root: Path, split_id: int) -> dict[str, list[Raw]]:
    """torchreid's PRID2011: the split file's lists taken as they are (not sorted)."""
    split = json.loads((root / "splits_prid2011.json").read_text())[split_id]
    shots = root / "prid_2011" / "multi_shot"
    return torchreid_two_camera((shots / "cam_a", shots / "cam_b"), split["train"], split["test"])


@pytest.mark.parametrize("split", [0, 7])
def test_prid_agrees_with_torchreid(tmp_path: Path, split: int) -> None:
    root = write_prid(tmp_path / "prid2011")
    ours = PRID2011(tmp_path, split=split, verbose=False)
    theirs = torchreid_prid(root, split)
    assert as_raw(ours.train) == theirs["train"]
    assert as_raw(ours.query) == theirs["query"]
    assert as_raw(ours.gallery) == theirs["gallery"]
    assert (len(ours.train), len(ours.query), len(ours.gallery)) == (6, 3, 3)
    assert DATASETS["prid2011"] is PRID2011


def prid_splits(root: Path) -> Path:
    return root / "splits_prid2011.json"


@pytest.mark.parametrize(
    ("make", "split", "message"),
    [
        (
            lambda r: prid_splits(r).unlink(),
            0,
            r"PRID-2011 split file not found: .*splits_prid2011\.json; the archive has no "
            r"splits: .*torchreid's dataset guide",
        ),
        (lambda r: prid_splits(r).write_text("{"), 0, r"splits_prid2011\.json: not a JSON file"),
        (lambda r: prid_splits(r).write_text("[]"), 0, r"expected a non-empty list of splits"),
        (
            lambda r: prid_splits(r).write_text('[{"train": ["person_0001"]}]'),
            0,
            r"split 0: expected an object with \"train\" and \"test\" lists",
        ),
        (
            lambda r: prid_splits(r).write_text(
                '[{"train": ["person_0001"], "test": ["person_0001"]}]'
            ),
            0,
            r"split 0: 'person_0001' is in both train and test",
        ),
        (
            lambda r: prid_splits(r).write_text(
                '[{"train": ["person_0009"], "test": ["person_0001"]}]'
            ),
            0,
            r"no sequence folder .*cam_b/person_0009 for person 'person_0009' of the split",
        ),
        (lambda r: None, 10, r"split 10 out of range: .*splits_prid2011\.json holds 10 splits"),
        (
            lambda r: shutil.rmtree(r / "prid_2011"),
            0,
            r"prid2011: missing in .*: prid_2011/; prid2011 expects",
        ),
    ],
)
def test_prid_bad_trees_are_named(tmp_path: Path, make, split: int, message: str) -> None:
    root = write_prid(tmp_path)
    make(root)
    with pytest.raises(DatasetError, match=message):
        PRID2011(root, split=split, verbose=False)
