"""The layout iLIDS-VID and PRID-2011 share: one sequence per person and camera, 10 splits.

Both hold two camera folders with one folder of frames per person, and are evaluated on one of
10 standard random splits of the persons into halves: training uses both cameras of the
training persons; the query is the first camera's sequence of each test person, the gallery
the second camera's. Identities are numbered as the field's parser (torchreid) numbers them:
training persons 0..N-1 and test persons 0..M-1 by their position in the split's lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from duatm.data.datasets.base import DatasetFormatError, DatasetLayoutError, list_folder
from duatm.data.datasets.video_base import VideoReIDDataset, frame_length_note, list_frames
from duatm.data.records import TrackletRecord


class TwoCameraSplitDataset(VideoReIDDataset):
    """Base of iLIDS-VID and PRID-2011: subclasses set ``camera_dirs`` (relative to the dataset
    folder) and pass the chosen split's training and test person folder names to
    :meth:`build`."""

    num_splits = 10
    camera_dirs: ClassVar[tuple[str, str]]
    #: The split these records come from (0-based).
    split: int

    def camera_folder(self, camera: int) -> Path:
        return self.root / self.camera_dirs[camera]

    def persons(self, camera: int) -> list[str]:
        """Sorted person folder names seen by ``camera`` (0 or 1)."""
        folder = self.camera_folder(camera)
        if not folder.is_dir():
            raise DatasetLayoutError(f"{self.name}: camera folder not found: {folder}")
        return list_folder(folder)[1]

    def persons_in_both_cameras(self) -> list[str]:
        """Sorted person folder names, which both cameras must hold alike."""
        first, second = self.persons(0), self.persons(1)
        if first != second:
            odd = sorted(set(first) ^ set(second))[0]
            camera = self.camera_dirs[0] if odd in first else self.camera_dirs[1]
            raise DatasetFormatError(
                f"{self.name}: person {odd!r} has a sequence only in {self.root / camera}/; "
                "every person must have one in both cameras"
            )
        return first

    def check_split_index(self, split: int, num_splits: int, source: Path) -> None:
        if not 0 <= split < num_splits:
            raise DatasetFormatError(
                f"{self.name}: split {split} out of range: {source} holds {num_splits} splits "
                f"(data.split = 0..{num_splits - 1})"
            )

    def build(
        self,
        train_persons: Sequence[str],
        test_persons: Sequence[str],
        *,
        source: str,
        verbose: bool,
    ) -> None:
        """Make the records of one split and hand them to :class:`ReIDDataset`."""
        train = [
            self.sequence(person, pid, camera)
            for pid, person in enumerate(train_persons)
            for camera in (0, 1)
        ]
        query = [self.sequence(person, pid, 0) for pid, person in enumerate(test_persons)]
        gallery = [self.sequence(person, pid, 1) for pid, person in enumerate(test_persons)]
        notes = [
            f"split {self.split} of {source}: {len(train_persons)} training and "
            f"{len(test_persons)} test persons",
            frame_length_note((("train", train), ("query", query), ("gallery", gallery))),
        ]
        super().__init__(train, query, gallery, notes=notes, verbose=verbose)

    def sequence(self, person: str, pid: int, camera: int) -> TrackletRecord:
        """The frames of ``person`` seen by ``camera``, in file-name order."""
        folder = self.camera_folder(camera) / person
        if not folder.is_dir():
            raise DatasetFormatError(
                f"{self.name}: no sequence folder {folder} for person {person!r} of the split"
            )
        frames = list_frames(folder)[0]
        if not frames:
            raise DatasetFormatError(f"{self.name}: sequence folder without frames: {folder}")
        return TrackletRecord(tuple(str(folder / name) for name in frames), pid, camera)
