"""The dataset base class shared by image and video re-id datasets, and its errors."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Generic

from duatm.data.records import RecordT, count_cams, count_pids, relabel_pids

#: File extensions read as images (case-insensitive); other files are reported as skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

#: How many names of skipped files a summary lists before it just counts.
MAX_LISTED_NAMES = 5


class DatasetError(Exception):
    """Any problem with a dataset on disk; catch this to report all of them alike."""


class DatasetLayoutError(DatasetError, FileNotFoundError):
    """A dataset folder or file that must exist is missing."""


class DatasetFormatError(DatasetError, ValueError):
    """Dataset files exist but their content breaks the expected format."""


def is_image_name(name: str) -> bool:
    """Whether a file name has one of the image extensions."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_folder(folder: Path) -> tuple[list[str], list[str]]:
    """Sorted names of the files and of the sub-folders in ``folder``, for a deterministic order."""
    with os.scandir(folder) as entries:
        entries = list(entries)
    files = sorted(e.name for e in entries if not e.is_dir())
    folders = sorted(e.name for e in entries if e.is_dir())
    return files, folders


class ReIDDataset(Generic[RecordT]):
    """Train, query and gallery records of one re-id dataset.

    Subclasses parse their layout and hand the records to ``__init__``, which relabels the
    training identities to 0..N-1 (sorted by original id, so the classifier head has N outputs)
    and keeps query and gallery ids as they are, since evaluation only compares them.
    """

    name: ClassVar[str] = "reid"
    #: What one record is, for the summary column ("images" or "tracklets").
    unit: ClassVar[str] = "images"
    #: How many standard train/test splits the dataset defines (``data.split`` picks one).
    num_splits: ClassVar[int] = 1

    def __init__(
        self,
        train: Sequence[RecordT],
        query: Sequence[RecordT],
        gallery: Sequence[RecordT],
        *,
        skipped: Mapping[str, Sequence[str]] | None = None,
        notes: Sequence[str] = (),
        verbose: bool = True,
    ) -> None:
        self.train: list[RecordT] = relabel_pids(train)
        self.query: list[RecordT] = list(query)
        self.gallery: list[RecordT] = list(gallery)
        #: Names of files that were not read because they do not follow the naming scheme,
        #: keyed by the folder they were found in (relative to the dataset root).
        self.skipped: dict[str, tuple[str, ...]] = {
            folder: tuple(names) for folder, names in (skipped or {}).items() if names
        }
        self.notes: tuple[str, ...] = tuple(notes)
        if verbose:
            print(self.summary())

    @property
    def num_train_pids(self) -> int:
        """Number of training identities (the classifier's output size)."""
        return count_pids(self.train)

    @property
    def num_train_cams(self) -> int:
        """Number of distinct cameras in the training split."""
        return count_cams(self.train)

    @property
    def num_skipped(self) -> int:
        """Total number of files left unread because of their names."""
        return sum(len(names) for names in self.skipped.values())

    def summary(self) -> str:
        """A table of ids, items and cameras per split, then what was skipped or left out."""
        header = ("subset", "# ids", f"# {self.unit}", "# cameras")
        rows = [
            (subset, str(count_pids(recs)), str(len(recs)), str(count_cams(recs)))
            for subset, recs in (
                ("train", self.train),
                ("query", self.query),
                ("gallery", self.gallery),
            )
        ]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

        def line(cells: Sequence[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
            return " | ".join((first, *rest))

        out = [f"{self.name} dataset", line(header), "-+-".join("-" * w for w in widths)]
        out += [line(row) for row in rows]
        for folder, names in self.skipped.items():
            listed = ", ".join(names[:MAX_LISTED_NAMES])
            more = (
                f", ... ({len(names) - MAX_LISTED_NAMES} more)"
                if len(names) > MAX_LISTED_NAMES
                else ""
            )
            out.append(
                f"skipped {len(names)} file(s) in {folder} not matching the naming scheme: "
                f"{listed}{more}"
            )
        out += self.notes
        return "\n".join(out)
