"""The Market-1501 family layout: three flat split folders of ``PPPP_cC...`` named images.

Market-1501 and DukeMTMC-reID share it and differ only in their camera and id ranges, their
official folder name and archive, which subclasses set as class attributes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, NamedTuple

from duatm.data.datasets.base import (
    DatasetFormatError,
    DatasetLayoutError,
    ReIDDataset,
    is_image_name,
    list_folder,
)
from duatm.data.records import ImageRecord

# Leading signed identity, then "_c" and the 1-based camera number; the rest is free.
_NAME_RE = re.compile(r"^(-?\d+)_c(\d+)")

JUNK_PID = -1
DISTRACTOR_PID = 0


class ParsedFolder(NamedTuple):
    """Records read from one split folder, plus what was not turned into a record."""

    records: list[ImageRecord]
    skipped: list[str]
    unusable: list[str]
    junk: int
    distractors: int


class BoundingBoxDataset(ReIDDataset[ImageRecord]):
    """Base for datasets laid out as ``bounding_box_train/``, ``query/``, ``bounding_box_test/``.

    Identity -1 (junk detections) is left out of every split; identity 0 (distractors) stays in
    the gallery, where it only adds false candidates, and is left out of training because it is
    not one person. Files whose names do not follow the scheme are counted and listed in the
    summary, never dropped silently.
    """

    splits: ClassVar[dict[str, str]] = {
        "train": "bounding_box_train",
        "query": "query",
        "gallery": "bounding_box_test",
    }
    distractor_pids: ClassVar[frozenset[int]] = frozenset({DISTRACTOR_PID})
    official_dir: ClassVar[str]
    archive: ClassVar[str]
    num_cameras: ClassVar[int]
    max_pid: ClassVar[int]

    def __init__(self, root: str | Path, verbose: bool = True) -> None:
        self.root = self.resolve_root(root)
        parsed = {subset: self.parse_folder(subset) for subset in self.splits}
        notes = [
            f"left out pid {JUNK_PID} (junk) in {self.splits[subset]}/: {p.junk} image(s)"
            for subset, p in parsed.items()
            if p.junk
        ]
        if parsed["train"].distractors:
            notes.append(
                f"left out pid {DISTRACTOR_PID} (distractors) in {self.splits['train']}/: "
                f"{parsed['train'].distractors} image(s)"
            )
        super().__init__(
            parsed["train"].records,
            parsed["query"].records,
            parsed["gallery"].records,
            skipped={f"{self.splits[s]}/": p.skipped for s, p in parsed.items()},
            unusable={f"{self.splits[s]}/": p.unusable for s, p in parsed.items()},
            notes=notes,
            verbose=verbose,
        )

    @classmethod
    def resolve_root(cls, root: str | Path) -> Path:
        """The folder holding the split folders: ``root`` itself or its official sub-folder."""
        root = Path(root).expanduser()
        expected = ", ".join(f"{folder}/" for folder in cls.splits.values())
        hint = (
            f"{cls.name} expects a folder holding {expected} "
            f"(unpack the official {cls.archive}, which creates {cls.official_dir}/; "
            "or write the built-in SynthPed there in this layout: duatm synth --out ROOT)"
        )
        if not root.is_dir():
            raise DatasetLayoutError(f"{cls.name} root not found: {root}; {hint}")
        for candidate in (root, root / cls.official_dir):
            if all((candidate / folder).is_dir() for folder in cls.splits.values()):
                return candidate
        # Name the folder the user most likely meant: the official sub-folder when it exists.
        base = root / cls.official_dir if (root / cls.official_dir).is_dir() else root
        missing = [f"{f}/" for f in cls.splits.values() if not (base / f).is_dir()]
        raise DatasetLayoutError(
            f"{cls.name} split folder(s) missing in {base}: {', '.join(missing)}; {hint}"
        )

    def parse_folder(self, subset: str) -> ParsedFolder:
        """Records of one split folder in sorted file-name order, validated against the ranges."""
        folder = self.root / self.splits[subset]
        names, subfolders, unusable = list_folder(folder)
        records: list[ImageRecord] = []
        skipped = [f"{sub}/" for sub in subfolders]
        junk = distractors = 0
        for name in names:
            match = _NAME_RE.match(name)
            if match is None or not is_image_name(name):
                skipped.append(name)
                continue
            pid, camera = int(match.group(1)), int(match.group(2))
            self.check_range(folder / name, "pid", pid, JUNK_PID, self.max_pid)
            self.check_range(folder / name, "camera", camera, 1, self.num_cameras)
            if pid == JUNK_PID:
                junk += 1
            elif pid == DISTRACTOR_PID and subset == "train":
                distractors += 1
            else:
                records.append(ImageRecord(str(folder / name), pid, camera - 1))
        if not records:
            raise DatasetFormatError(
                f"{self.name}: no usable images in {folder} ({len(names)} file(s) there, "
                f"{len(skipped)} not matching the naming scheme, {junk} junk, "
                f"{len(unusable)} not regular files)"
            )
        return ParsedFolder(records, skipped, unusable, junk, distractors)

    def check_range(self, path: Path, field: str, value: int, low: int, high: int) -> None:
        """Reject a value read from a file name that this dataset cannot contain."""
        if not low <= value <= high:
            raise DatasetFormatError(
                f"{self.name}: {field} {value} out of range in file name {path} "
                f"(expected {low}..{high})"
            )
