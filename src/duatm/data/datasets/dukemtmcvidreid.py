"""DukeMTMC-VideoReID (Wu et al., CVPR 2018; videos of Ristani et al., ECCVW 2016)."""

from __future__ import annotations

import re
from pathlib import Path

from duatm.data.datasets.base import DatasetFormatError, list_folder
from duatm.data.datasets.video_base import VideoReIDDataset, frame_length_note, list_frames
from duatm.data.records import TrackletRecord

# Identity, optional "_", "C" and the 1-based camera: 0001_C6_F0099_X30823.jpg (current
# naming) or 0001C6F0099X30823.jpg (the first release's).
_FRAME_RE = re.compile(r"^(\d+)_?C(\d+)")
NUM_CAMERAS = 8
SPLITS = ("train", "query", "gallery")


class DukeMTMCVidReID(VideoReIDDataset):
    """DukeMTMC-VideoReID: 1,404 identities that cross cameras plus 408 distractors, 8 cameras.

    ``root`` holds ``train/``, ``query/`` and ``gallery/`` as unpacked from
    ``DukeMTMC-VideoReID.zip`` (a parent folder holding ``DukeMTMC-VideoReID/`` also works,
    as does torchreid's ``dukemtmc-vidreid/``). Each split holds one folder per identity
    (``PPPP/``), each identity one folder per tracklet (``TTTT/``), each tracklet its frames
    ``PPPP_CC_FFFFF_X....jpg``; the camera comes from the names and must be the same for every
    frame of a tracklet. Every frame of a tracklet is kept, in file-name order (torchreid
    instead looks frames up by the numbers 1..n of an n-frame tracklet and drops the frames of
    a tracklet whose numbering does not start at 1; ``docs/design.md#video-datasets``).
    Expected after parsing: train 702 ids / 2,196 tracklets; query 702 ids / 702 tracklets;
    gallery 1,110 ids / 2,636 tracklets.
    """

    name = "dukemtmcvidreid"
    layout = tuple(f"{split}/" for split in SPLITS)
    official_dirs = ("DukeMTMC-VideoReID", "dukemtmc-vidreid/DukeMTMC-VideoReID")
    download = (
        "unpack DukeMTMC-VideoReID.zip from github.com/Yu-Wu/DukeMTMC-VideoReID, which creates "
        "DukeMTMC-VideoReID/"
    )

    def __init__(self, root: str | Path, verbose: bool = True) -> None:
        self.root = self.resolve_root(root)
        parsed = {split: self.parse_split(split) for split in SPLITS}
        super().__init__(
            parsed["train"][0],
            parsed["query"][0],
            parsed["gallery"][0],
            skipped={f"{split}/": parsed[split][1] for split in SPLITS},
            notes=[frame_length_note([(split, parsed[split][0]) for split in SPLITS])],
            verbose=verbose,
        )

    def parse_split(self, split: str) -> tuple[list[TrackletRecord], list[str]]:
        """Tracklets of one split in sorted (identity, tracklet) order, and skipped entries."""
        folder = self.root / split
        stray, identities, unusable = list_folder(folder)
        skipped = [*stray, *unusable]
        records: list[TrackletRecord] = []
        for identity in identities:
            if not identity.isdigit():
                skipped.append(f"{identity}/")
                continue
            files, tracklets, unusable = list_folder(folder / identity)
            skipped += [f"{identity}/{name}" for name in (*files, *unusable)]
            for tracklet in tracklets:
                records.append(self.tracklet(folder / identity / tracklet, int(identity)))
                skipped += [
                    f"{identity}/{tracklet}/{name}"
                    for name in list_frames(folder / identity / tracklet)[1]
                ]
        if not records:
            raise DatasetFormatError(
                f"{self.name}: no tracklets in {folder} (expected {split}/PPPP/TTTT/*.jpg)"
            )
        return records, skipped

    def tracklet(self, folder: Path, pid: int) -> TrackletRecord:
        """One tracklet folder: its frames, checked to be of ``pid`` and of one camera."""
        frames = list_frames(folder)[0]
        if not frames:
            raise DatasetFormatError(f"{self.name}: tracklet folder without frames: {folder}")
        cameras = set()
        for name in frames:
            match = _FRAME_RE.match(name)
            if match is None:
                raise DatasetFormatError(
                    f"{self.name}: frame name {folder / name} does not start with "
                    "PPPP_C<camera> (e.g. 0001_C6_F0099_X30823.jpg)"
                )
            if int(match.group(1)) != pid:
                raise DatasetFormatError(
                    f"{self.name}: frame {folder / name} names pid {int(match.group(1))} "
                    f"inside the folder of pid {pid}"
                )
            camera = int(match.group(2))
            if not 1 <= camera <= NUM_CAMERAS:
                raise DatasetFormatError(
                    f"{self.name}: camera {camera} out of range in file name {folder / name} "
                    f"(expected 1..{NUM_CAMERAS})"
                )
            cameras.add(camera)
        if len(cameras) > 1:
            raise DatasetFormatError(
                f"{self.name}: tracklet {folder} mixes cameras {sorted(cameras)}"
            )
        return TrackletRecord(tuple(str(folder / name) for name in frames), pid, cameras.pop() - 1)
