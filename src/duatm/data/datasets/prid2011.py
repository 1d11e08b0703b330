"""PRID-2011 (Hirzer et al., SCIA 2011), multi-shot sequences."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from duatm.data.datasets.base import DatasetFormatError, DatasetLayoutError
from duatm.data.datasets.two_camera import TwoCameraSplitDataset

SPLIT_FILE = "splits_prid2011.json"


class PRID2011(TwoCameraSplitDataset):
    """PRID-2011: 385 persons in camera A and 749 in camera B, 200 of them in both.

    ``root`` holds ``prid_2011/`` (sequences in ``prid_2011/multi_shot/cam_a|cam_b/person_NNNN/``,
    as unpacked from ``prid_2011.zip``) and ``splits_prid2011.json`` (a parent folder holding
    torchreid's ``prid2011/`` also works). The archive has no splits: the 10 standard ones (178
    persons seen by both cameras with long enough sequences, halved into training and test) are
    the JSON file that torchreid's dataset guide distributes, a list of
    ``{"train": [person folders], "test": [person folders]}``. Identities are positions in
    those lists, as torchreid numbers them. Expected after parsing, any split: train 89 ids /
    178 sequences; query 89 / 89; gallery 89 / 89.
    """

    name = "prid2011"
    layout = ("prid_2011/",)
    official_dirs = ("prid2011",)
    camera_dirs = ("prid_2011/multi_shot/cam_a", "prid_2011/multi_shot/cam_b")
    download = (
        "unpack prid_2011.zip from the PRID 2011 page of TU Graz and put the standard splits, "
        f"{SPLIT_FILE} from torchreid's dataset guide (deep-person-reid), beside prid_2011/"
    )

    def __init__(self, root: str | Path, split: int = 0, verbose: bool = True) -> None:
        self.root = self.resolve_root(root)
        self.split = split
        path = self.root / SPLIT_FILE
        if not path.is_file():
            raise DatasetLayoutError(
                f"PRID-2011 split file not found: {path}; the archive has no splits: "
                f"{self.download}"
            )
        splits = read_splits(path)
        self.check_split_index(split, len(splits), path)
        train, test = splits[split]
        self.build(train, test, source=SPLIT_FILE, verbose=verbose)


def read_splits(path: Path) -> list[tuple[list[str], list[str]]]:
    """(train persons, test persons) of every split in a torchreid-format split file."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetFormatError(f"{path}: not a JSON file ({err})") from err
    if not isinstance(data, list) or not data:
        raise DatasetFormatError(
            f"{path}: expected a non-empty list of splits "
            '{"train": [person folders], "test": [person folders]}'
        )
    splits = []
    for index, entry in enumerate(data):
        where = f"{path}: split {index}"
        if not isinstance(entry, dict) or not {"train", "test"} <= set(entry):
            raise DatasetFormatError(f'{where}: expected an object with "train" and "test" lists')
        lists = []
        for key in ("train", "test"):
            names = entry[key]
            if (
                not isinstance(names, list)
                or not names
                or not all(isinstance(n, str) and n for n in names)
            ):
                raise DatasetFormatError(
                    f"{where}: {key!r} must be a non-empty list of folder names"
                )
            if len(set(names)) != len(names):
                raise DatasetFormatError(f"{where}: {key!r} lists a person twice")
            lists.append(names)
        both = sorted(set(lists[0]) & set(lists[1]))
        if both:
            raise DatasetFormatError(f"{where}: {both[0]!r} is in both train and test")
        splits.append((lists[0], lists[1]))
    return splits
