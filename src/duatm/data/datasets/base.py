"""The dataset base class shared by image and video re-id datasets, and its errors."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Generic, NamedTuple

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


class FolderListing(NamedTuple):
    """What one folder holds, each list sorted by name (for a deterministic order).

    ``files`` and ``folders`` follow symbolic links. ``unusable`` are entries that are neither a
    regular file nor a folder once links are followed (FIFOs, sockets, devices, dangling or
    looping links): opening a FIFO named ``x.jpg`` would block forever, so no reader may see
    them; each is listed as ``name (what it is)`` so a summary can say why it was left out.
    """

    files: list[str]
    folders: list[str]
    unusable: list[str]


def list_folder(folder: Path) -> FolderListing:
    """Sorted names of the regular files, the sub-folders and the unusable entries of ``folder``.

    Raises OSError (naming ``folder``) when the folder itself cannot be read.
    """
    files, folders, unusable = [], [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            kind = _entry_kind(entry)
            if kind == "file":
                files.append(entry.name)
            elif kind == "folder":
                folders.append(entry.name)
            else:
                unusable.append(f"{entry.name} ({kind})")
    return FolderListing(sorted(files), sorted(folders), sorted(unusable))


def _entry_kind(entry: os.DirEntry[str]) -> str:
    """ "file", "folder", or what makes the entry unusable, following symbolic links."""
    try:
        info = entry.stat(follow_symlinks=True)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop"
        if err.errno == errno.ENOENT and entry.is_symlink():
            return "dangling symbolic link"
        return f"unreadable: {err.strerror}"
    if stat.S_ISREG(info.st_mode):
        return "file"
    if stat.S_ISDIR(info.st_mode):
        return "folder"
    return _SPECIAL_KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")


_SPECIAL_KINDS = {
    stat.S_IFIFO: "FIFO, not a regular file",
    stat.S_IFSOCK: "socket, not a regular file",
    stat.S_IFCHR: "character device, not a regular file",
    stat.S_IFBLK: "block device, not a regular file",
}


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
    #: Query/gallery identities that are not one person (Market-1501's pid 0: detections of
    #: strangers). They stay in the gallery as false candidates; a query with one of them has
    #: no true match to find, so the protocol skips it (``rank_metrics(distractor_pids=...)``).
    distractor_pids: ClassVar[frozenset[int]] = frozenset()

    def __init__(
        self,
        train: Sequence[RecordT],
        query: Sequence[RecordT],
        gallery: Sequence[RecordT],
        *,
        skipped: Mapping[str, Sequence[str]] | None = None,
        unusable: Mapping[str, Sequence[str]] | None = None,
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
        #: Entries that are not regular files or folders (FIFOs, looping links, ...; see
        #: :class:`FolderListing`), by folder, each as ``name (what it is)``; never opened.
        self.unusable: dict[str, tuple[str, ...]] = {
            folder: tuple(names) for folder, names in (unusable or {}).items() if names
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
            out.append(
                f"skipped {len(names)} file(s) in {folder} not matching the naming scheme: "
                f"{_first_names(names)}"
            )
        for folder, names in self.unusable.items():
            out.append(
                f"skipped {len(names)} entr{'y' if len(names) == 1 else 'ies'} in {folder} "
                f"that are not regular files or folders: {_first_names(names)}"
            )
        out += self.notes
        return "\n".join(out)


def _first_names(names: Sequence[str]) -> str:
    """The first MAX_LISTED_NAMES names, then how many more."""
    more = len(names) - MAX_LISTED_NAMES
    return ", ".join(names[:MAX_LISTED_NAMES]) + (f", ... ({more} more)" if more > 0 else "")
