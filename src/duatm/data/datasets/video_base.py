"""What the video re-id parsers share: root resolution, .mat reading, frame listing, summaries.

Every parser turns its published layout into :class:`~duatm.data.records.TrackletRecord` items
(frame paths in file-name order, pid, 0-based camid) and fails with one line naming the file
when the tree is not what the layout promises. What each parser keeps, drops and why is
written in ``docs/design.md#video-datasets``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from duatm.data.datasets.base import (
    DatasetFormatError,
    DatasetLayoutError,
    ReIDDataset,
    is_image_name,
    list_folder,
)
from duatm.data.records import TrackletRecord


class VideoReIDDataset(ReIDDataset[TrackletRecord]):
    """Base of the video datasets: records are tracklets, the root is found like the images'.

    Subclasses set ``layout`` (the entries the dataset folder holds), ``official_dirs`` (names
    of that folder under a parent the user may give instead, e.g. the archive's top folder or
    torchreid's folder name) and ``download`` (where the files come from, for error messages).
    """

    unit = "tracklets"
    layout: ClassVar[tuple[str, ...]]
    official_dirs: ClassVar[tuple[str, ...]] = ()
    download: ClassVar[str]

    @classmethod
    def resolve_root(cls, root: str | Path) -> Path:
        """The folder holding every entry of ``layout``: ``root`` or one of its official folders."""
        root = Path(root).expanduser()
        expected = ", ".join(cls.layout)
        hint = f"{cls.name} expects a folder holding {expected} ({cls.download})"
        if not root.is_dir():
            raise DatasetLayoutError(f"{cls.name} root not found: {root}; {hint}")
        candidates = [root, *(root / name for name in cls.official_dirs)]
        for candidate in candidates:
            if all((candidate / entry).exists() for entry in cls.layout):
                return candidate
        # Name the folder the user most likely meant: an official sub-folder when one exists.
        base = next((c for c in candidates[1:] if c.is_dir()), root)
        missing = [entry for entry in cls.layout if not (base / entry).exists()]
        raise DatasetLayoutError(f"{cls.name}: missing in {base}: {', '.join(missing)}; {hint}")

    @staticmethod
    def require_file(path: Path, what: str) -> Path:
        """``path`` itself, or a one-line error saying what the missing file is."""
        if not path.is_file():
            raise DatasetLayoutError(f"{what} not found: {path}")
        return path


def frame_length_note(splits: Sequence[tuple[str, Sequence[TrackletRecord]]]) -> str:
    """One summary line: frames per tracklet (min / median / max) of each split."""
    parts = []
    for subset, records in splits:
        lengths = [len(r.paths) for r in records]
        if lengths:
            median = statistics.median(lengths)
            parts.append(f"{subset} {min(lengths)} / {median:g} / {max(lengths)}")
    return "frames per tracklet (min / median / max): " + "; ".join(parts)


def list_frames(folder: Path) -> tuple[list[str], list[str]]:
    """Image file names of a tracklet folder in sorted (temporal) order, and the other entries
    (entries that are not regular files, e.g. a FIFO named like a frame, among them: never
    read)."""
    files, subfolders, unusable = list_folder(folder)
    frames = [name for name in files if is_image_name(name)]
    others = [name for name in files if not is_image_name(name)] + [f"{s}/" for s in subfolders]
    return frames, others + unusable


def load_mat_variable(path: Path, variable: str) -> np.ndarray:
    """One variable of a MATLAB (v5) file, as the kits ship them; errors name file and variable."""
    # scipy is only needed by the .mat-based layouts; import it when one is read.
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        contents = loadmat(str(path))
    except (MatReadError, ValueError, TypeError, OSError, NotImplementedError) as err:
        raise DatasetFormatError(f"{path}: not a readable MATLAB .mat file ({err})") from err
    if variable not in contents:
        found = ", ".join(sorted(k for k in contents if not k.startswith("__"))) or "none"
        raise DatasetFormatError(
            f"{path}: variable {variable!r} not found (variables there: {found})"
        )
    return np.asarray(contents[variable])


def as_integers(values: np.ndarray, path: Path, variable: str) -> np.ndarray:
    """``values`` as int64, refusing anything that is not a whole number (MATLAB stores doubles)."""
    if values.size and not np.issubdtype(values.dtype, np.number):
        raise DatasetFormatError(
            f"{path}: {variable!r} must be numeric, got MATLAB type {values.dtype}"
        )
    as_float = values.astype(np.float64)
    bad = ~np.isfinite(as_float) | (as_float != np.round(as_float))
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        one_based = tuple(i + 1 for i in first)
        raise DatasetFormatError(
            f"{path}: {variable!r} must hold integers, found {as_float[first]} at (1-based) "
            f"index {one_based}"
        )
    return as_float.astype(np.int64)
