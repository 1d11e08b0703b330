"""A re-id dataset from the user's own images, one folder per identity."""

from __future__ import annotations

import csv
import re
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from duatm.data.datasets.base import (
    DatasetFormatError,
    DatasetLayoutError,
    ReIDDataset,
    is_image_name,
    list_folder,
)
from duatm.data.records import ImageRecord

SPLITS = ("train", "query", "gallery")
DEFAULT_CAMERAS_CSV = "cameras.csv"


class ScannedSplit(NamedTuple):
    """What one split folder holds: (identity name, image path) pairs, skipped entries and
    entries that are not regular files or folders (see ``FolderListing``)."""

    images: list[tuple[str, Path]]
    skipped: list[str]
    unusable: list[str]


class ImageFolderDataset(ReIDDataset[ImageRecord]):
    """Images sorted into one folder per identity, for data that is not a published benchmark.

    Layout:

        root/train/<identity>/<image files>
        root/query/<identity>/<image files>
        root/gallery/<identity>/<image files>
        root/cameras.csv            (optional)

    Identities are folder names and may be any string. Training identities are numbered
    0..N-1 in sorted order of their names (``train_identities[k]`` is the name of pid k).
    Query and gallery identities are numbered together, 0..M-1 in sorted order of the union of
    their names, so a name means the same pid in both (``test_identities[k]`` is the name of
    pid k); gallery identities absent from the query act as distractors.

    Every image needs a camera, because evaluation drops same-camera matches:

    * ``cameras.csv`` (or the file named by ``cameras_csv``, relative to ``root``) has the header
      ``path,camid``; ``path`` is relative to ``root`` with ``/`` separators
      (``query/alice/001.jpg``) and ``camid`` is the 0-based camera index. It wins over the name.
    * otherwise the file name is searched with ``camera_pattern`` (default ``c(\\d+)``, one
      group); that number is 1-based as in Market-1501 (``c1`` is camid 0).

    A file that gets a camera from neither raises
    [`DatasetFormatError`][duatm.data.datasets.DatasetFormatError] naming it.
    Image files are ``.jpg``, ``.jpeg``, ``.png``, ``.bmp``; other files, and files or folders
    out of place, are listed in the summary as skipped.
    """

    name = "imagefolder"

    def __init__(
        self,
        root: str | Path,
        *,
        camera_pattern: str = r"c(\d+)",
        cameras_csv: str | Path | None = None,
        verbose: bool = True,
    ) -> None:
        self.root = Path(root).expanduser()
        self.check_layout(self.root)
        pattern = re.compile(camera_pattern)
        if pattern.groups != 1:
            raise ValueError(
                f"camera_pattern must have exactly one group capturing the camera number, "
                f"got {camera_pattern!r} with {pattern.groups}"
            )
        self.camera_pattern = pattern
        self.csv_cameras = self.read_cameras_csv(cameras_csv)

        train, query, gallery = (self.scan_split(split) for split in SPLITS)
        self.train_identities = tuple(sorted({ident for ident, _ in train.images}))
        self.test_identities = tuple(
            sorted({ident for ident, _ in query.images} | {ident for ident, _ in gallery.images})
        )
        train_ids = {name: pid for pid, name in enumerate(self.train_identities)}
        test_ids = {name: pid for pid, name in enumerate(self.test_identities)}
        super().__init__(
            [self.make_record(path, train_ids[ident]) for ident, path in train.images],
            [self.make_record(path, test_ids[ident]) for ident, path in query.images],
            [self.make_record(path, test_ids[ident]) for ident, path in gallery.images],
            skipped={
                f"{split}/": found.skipped
                for split, found in zip(SPLITS, (train, query, gallery), strict=True)
            },
            unusable={
                f"{split}/": found.unusable
                for split, found in zip(SPLITS, (train, query, gallery), strict=True)
            },
            verbose=verbose,
        )

    @staticmethod
    def check_layout(root: Path) -> None:
        """Fail early, naming the expected layout, when the root or a split folder is missing."""
        layout = ", ".join(f"{split}/<identity>/<images>" for split in SPLITS)
        if not root.is_dir():
            raise DatasetLayoutError(f"imagefolder root not found: {root}; expected {layout}")
        missing = [f"{split}/" for split in SPLITS if not (root / split).is_dir()]
        if missing:
            raise DatasetLayoutError(
                f"imagefolder split folder(s) missing in {root}: {', '.join(missing)}; "
                f"expected {layout}"
            )

    def read_cameras_csv(self, cameras_csv: str | Path | None) -> dict[str, int]:
        """Map root-relative posix paths to 0-based camids; empty when there is no table."""
        if cameras_csv is None:
            path = self.root / DEFAULT_CAMERAS_CSV
            if not path.is_file():
                return {}
        else:
            path = self.root / cameras_csv
            if not path.is_file():
                raise DatasetLayoutError(f"camera table not found: {path}")
        try:
            return self._parse_cameras_csv(path)
        except UnicodeDecodeError as err:
            raise DatasetFormatError(
                f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                f"{err.start}); save the camera table as UTF-8 CSV"
            ) from err
        except csv.Error as err:
            raise DatasetFormatError(f"{path}: not a valid CSV file ({err})") from err

    @staticmethod
    def _parse_cameras_csv(path: Path) -> dict[str, int]:
        cameras: dict[str, int] = {}
        # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first column name.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"path", "camid"} <= set(reader.fieldnames):
                raise DatasetFormatError(
                    f"{path}: expected a header with columns path,camid, got {reader.fieldnames}"
                )
            for row in reader:
                where = f"{path} line {reader.line_num}"
                key = normalise_relpath(row["path"] or "")
                camid = (row["camid"] or "").strip()
                if not (camid.isascii() and camid.isdigit()):
                    raise DatasetFormatError(
                        f"{where}: camid must be a non-negative integer, got {camid!r}"
                    )
                if key in cameras:
                    raise DatasetFormatError(f"{where}: path {key!r} listed twice")
                cameras[key] = int(camid)
        return cameras

    def scan_split(self, split: str) -> ScannedSplit:
        """Images of one split in sorted (identity, file name) order, and skipped entries."""
        folder = self.root / split
        stray_files, identities, unusable = list_folder(folder)
        images: list[tuple[str, Path]] = []
        skipped = list(stray_files)
        for ident in identities:
            files, subfolders, odd = list_folder(folder / ident)
            skipped += [f"{ident}/{sub}/" for sub in subfolders]
            unusable += [f"{ident}/{name}" for name in odd]
            for name in files:
                if is_image_name(name):
                    images.append((ident, folder / ident / name))
                else:
                    skipped.append(f"{ident}/{name}")
        if not images:
            raise DatasetFormatError(
                f"imagefolder: no images in {folder} (expected {split}/<identity>/<images>)"
            )
        return ScannedSplit(images, skipped, unusable)

    def make_record(self, path: Path, pid: int) -> ImageRecord:
        """The record of one image, with its camera from the table or from its name."""
        return ImageRecord(str(path), pid, self.camera_of(path))

    def camera_of(self, path: Path) -> int:
        """0-based camera of an image: ``cameras.csv`` first, then the file-name pattern."""
        key = path.relative_to(self.root).as_posix()
        if key in self.csv_cameras:
            return self.csv_cameras[key]
        match = self.camera_pattern.search(path.name)
        if match is None:
            raise DatasetFormatError(
                f"no camera for image {path}: not listed in a camera table under {self.root} "
                f"and its name does not match camera_pattern {self.camera_pattern.pattern!r}"
            )
        number = match.group(1)
        if not number.isdigit() or int(number) < 1:
            raise DatasetFormatError(
                f"camera {number!r} in file name {path}: camera numbers in names are 1-based "
                f"integers (c1 = camid 0); list other schemes in {DEFAULT_CAMERAS_CSV}"
            )
        return int(number) - 1


def normalise_relpath(path: str) -> str:
    """A table path in the form used for lookups: posix separators, no leading ``./``."""
    return PurePosixPath(path.strip().replace("\\", "/")).as_posix()
