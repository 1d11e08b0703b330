"""MARS (Zheng et al., ECCV 2016): the video benchmark of the paper (Table 1, Table 7)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from duatm.data.datasets.base import DatasetFormatError, DatasetLayoutError, list_folder
from duatm.data.datasets.video_base import (
    VideoReIDDataset,
    as_integers,
    frame_length_note,
    load_mat_variable,
)
from duatm.data.records import TrackletRecord

#: A track-info row: 1-based first and last index into the name list, identity, 1-based camera.
TRACK_COLUMNS = ("start", "end", "pid", "camera")
NUM_CAMERAS = 6
JUNK_PID = -1


class MARS(VideoReIDDataset):
    """MARS: 1,261 identities, 6 cameras, 20,478 tracklets of detected and tracked boxes.

    ``root`` holds ``bbox_train/`` and ``bbox_test/`` (unpacked from ``bbox_train.zip`` and
    ``bbox_test.zip`` of the MARS project page) and ``info/`` (the folder of the official MARS
    evaluation kit: ``train_name.txt``, ``test_name.txt``, ``tracks_train_info.mat``,
    ``tracks_test_info.mat``, ``query_IDX.mat``). A parent folder holding ``mars/`` (torchreid's
    folder name) or ``MARS/`` also works.

    Frames are named ``PPPPCcTttttFfff.jpg`` (identity, camera, tracklet, frame) and live in
    ``bbox_*/PPPP/``. A track-info row ``[start, end, pid, camera]`` selects names ``start..end``
    (1-based, inclusive) of the split's name list; ``query_IDX`` lists the query rows of the
    test tracks (1-based) and the gallery is every other test track. Tracks of pid -1 (junk)
    are left out everywhere; pid 0 (distractors) stays in the gallery. Frames keep the order of
    the name list, which is file-name order in the kit. Expected after parsing: train 625 ids /
    8,298 tracklets (509,914 frames); query 1,980 tracklets; gallery 9,330 tracklets.
    """

    name = "mars"
    distractor_pids = frozenset({0})
    layout = ("bbox_train/", "bbox_test/", "info/")
    official_dirs = ("mars", "MARS")
    download = (
        "unpack bbox_train.zip and bbox_test.zip from the MARS project page and put the info/ "
        "folder of the MARS evaluation kit (github.com/liangzheng06/MARS-evaluation) beside "
        "them; or write video SynthPed there: duatm synth --video --out ROOT"
    )

    def __init__(self, root: str | Path, verbose: bool = True) -> None:
        self.root = self.resolve_root(root)
        info = self.root / "info"
        train_names_path = self.require_file(info / "train_name.txt", "MARS name list")
        test_names_path = self.require_file(info / "test_name.txt", "MARS name list")
        train_mat = self.require_file(info / "tracks_train_info.mat", "MARS track info")
        test_mat = self.require_file(info / "tracks_test_info.mat", "MARS track info")
        query_mat = self.require_file(info / "query_IDX.mat", "MARS query index")
        train_names = read_names(train_names_path)
        test_names = read_names(test_names_path)
        train_tracks = read_tracks(train_mat, "track_train_info")
        test_tracks = read_tracks(test_mat, "track_test_info")
        query_rows = read_query_rows(query_mat, "query_IDX", len(test_tracks), test_mat)
        is_query = set(query_rows)
        gallery_rows = [row for row in range(len(test_tracks)) if row not in is_query]

        self._listings: dict[str, frozenset[str]] = {}
        train_split = _Split("bbox_train", train_names, train_names_path, train_tracks, train_mat)
        test_split = _Split("bbox_test", test_names, test_names_path, test_tracks, test_mat)
        train, train_junk = self.tracklets(train_split, range(len(train_tracks)))
        query, query_junk = self.tracklets(test_split, query_rows)
        gallery, gallery_junk = self.tracklets(test_split, gallery_rows)
        for subset, records, source in (
            ("train", train, train_mat),
            ("query", query, query_mat),
            ("gallery", gallery, test_mat),
        ):
            if not records:
                raise DatasetFormatError(
                    f"{source}: no {subset} tracklets (every {subset} track is junk, or there "
                    "are none)"
                )
        notes = []
        if train_junk + query_junk + gallery_junk:
            notes.append(
                f"left out pid {JUNK_PID} (junk) tracklets: train {train_junk}, "
                f"query {query_junk}, gallery {gallery_junk}"
            )
        notes.append(frame_length_note((("train", train), ("query", query), ("gallery", gallery))))
        super().__init__(train, query, gallery, notes=notes, verbose=verbose)

    def tracklets(self, split: _Split, rows: Iterable[int]) -> tuple[list[TrackletRecord], int]:
        """The records of track rows ``rows`` (0-based) of one split, and how many were junk."""
        records: list[TrackletRecord] = []
        junk = 0
        for row in rows:
            start, end, pid, camera = (int(v) for v in split.tracks[row])
            where = f"{split.mat} row {row + 1}"
            if start > end:
                raise DatasetFormatError(f"{where}: frames {start}..{end}: start after end")
            if not 1 <= start <= end <= len(split.names):
                raise DatasetFormatError(
                    f"{where}: frames {start}..{end} out of range 1..{len(split.names)} "
                    f"(the lines of {split.names_path})"
                )
            if pid == JUNK_PID:
                junk += 1
                continue
            if pid < 0:
                raise DatasetFormatError(f"{where}: pid {pid}, expected {JUNK_PID} (junk) or >= 0")
            if not 1 <= camera <= NUM_CAMERAS:
                raise DatasetFormatError(
                    f"{where}: camera {camera} out of range (expected 1..{NUM_CAMERAS})"
                )
            names = split.names[start - 1 : end]
            prefix = f"{pid:04d}C{camera}"
            for line, name in enumerate(names, start):
                if not name.startswith(prefix):
                    raise DatasetFormatError(
                        f"{split.names_path} line {line}: frame {name!r} is not of pid {pid} "
                        f"camera {camera} as {where} says (expected a name starting {prefix})"
                    )
            folder = os.path.join(self.root, split.home, prefix[:4])
            present = self.listing(folder)
            for line, name in enumerate(names, start):
                if name not in present:
                    raise DatasetLayoutError(
                        f"frame listed in {split.names_path} line {line} but absent: "
                        f"{os.path.join(folder, name)}"
                    )
            # One join per tracklet, not per frame: MARS lists 1.2 million frames.
            head = os.path.join(folder, "")
            records.append(TrackletRecord(tuple(head + n for n in names), pid, camera - 1))
        return records, junk

    def listing(self, folder: str) -> frozenset[str]:
        """File names in ``folder`` (empty when it does not exist), listed once per folder."""
        if folder not in self._listings:
            path = Path(folder)
            self._listings[folder] = (
                frozenset(list_folder(path)[0]) if path.is_dir() else frozenset()
            )
        return self._listings[folder]


class _Split(NamedTuple):
    """One split's name list and track-info matrix, with the files they came from."""

    home: str
    names: Sequence[str]
    names_path: Path
    tracks: np.ndarray
    mat: Path


def read_names(path: Path) -> list[str]:
    """The lines of a name list, trailing whitespace removed (line k is frame index k)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"{path}: not a text file of frame names ({err})") from err
    return [line.rstrip() for line in text.splitlines()]


def read_tracks(path: Path, variable: str) -> np.ndarray:
    """The N x 4 track-info matrix [start, end, pid, camera] of one split, as int64."""
    tracks = load_mat_variable(path, variable)
    if tracks.ndim != 2 or tracks.shape[1] != len(TRACK_COLUMNS):
        raise DatasetFormatError(
            f"{path}: {variable!r} must be an N x {len(TRACK_COLUMNS)} matrix "
            f"[{', '.join(TRACK_COLUMNS)}], got shape {tracks.shape}"
        )
    return as_integers(tracks, path, variable)


def read_query_rows(path: Path, variable: str, num_tracks: int, tracks_path: Path) -> list[int]:
    """The 0-based test-track rows that are queries, from the kit's 1-based index vector."""
    index = load_mat_variable(path, variable)
    if sum(size > 1 for size in index.shape) > 1:
        raise DatasetFormatError(f"{path}: {variable!r} must be a vector, got shape {index.shape}")
    rows: list[int] = []
    seen: set[int] = set()
    for value in as_integers(index, path, variable).ravel().tolist():
        if not 1 <= value <= num_tracks:
            raise DatasetFormatError(
                f"{path}: {variable!r} holds {value}, out of range 1..{num_tracks} "
                f"(the rows of {tracks_path})"
            )
        if value in seen:
            raise DatasetFormatError(f"{path}: {variable!r} lists track {value} twice")
        seen.add(value)
        rows.append(value - 1)
    return rows
