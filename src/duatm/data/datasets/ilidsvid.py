"""iLIDS-VID (Wang et al., ECCV 2014)."""

from __future__ import annotations

from pathlib import Path

from duatm.data.datasets.base import DatasetFormatError
from duatm.data.datasets.two_camera import TwoCameraSplitDataset
from duatm.data.datasets.video_base import as_integers, load_mat_variable

SPLIT_FILE = "train-test people splits/train_test_splits_ilidsvid.mat"
SPLIT_VARIABLE = "ls_set"


class ILIDSVID(TwoCameraSplitDataset):
    """iLIDS-VID: 300 persons, one sequence in each of 2 cameras (23 to 192 frames).

    ``root`` holds ``i-LIDS-VID/`` (sequences in ``i-LIDS-VID/sequences/cam1|cam2/personNNN/``)
    and ``train-test people splits/`` as unpacked from ``iLIDS-VID.tar`` (a parent folder
    holding torchreid's ``ilids-vid/`` also works). The splits come from the archive's
    ``train_test_splits_ilidsvid.mat``: row ``split`` of ``ls_set`` (10 x 300) is a permutation
    of the 1-based indices of the person folders in sorted order; its first half are the test
    persons, the rest the training persons (Wang et al.), each taken in sorted order.
    Expected after parsing, any split: train 150 ids / 300 sequences; query 150 / 150;
    gallery 150 / 150.
    """

    name = "ilidsvid"
    layout = ("i-LIDS-VID/", "train-test people splits/")
    official_dirs = ("ilids-vid", "iLIDS-VID")
    camera_dirs = ("i-LIDS-VID/sequences/cam1", "i-LIDS-VID/sequences/cam2")
    download = (
        "unpack iLIDS-VID.tar from the iLIDS-VID page of Queen Mary University of London, "
        "which holds i-LIDS-VID/ and train-test people splits/"
    )

    def __init__(self, root: str | Path, split: int = 0, verbose: bool = True) -> None:
        self.root = self.resolve_root(root)
        self.split = split
        mat = self.require_file(self.root / SPLIT_FILE, "iLIDS-VID split file")
        persons = self.persons_in_both_cameras()
        table = load_mat_variable(mat, SPLIT_VARIABLE)
        if table.ndim != 2 or table.shape[1] != len(persons):
            raise DatasetFormatError(
                f"{mat}: {SPLIT_VARIABLE!r} must be a splits x persons matrix with one column "
                f"per person folder ({len(persons)} in {self.camera_dirs[0]}/), "
                f"got shape {table.shape}"
            )
        table = as_integers(table, mat, SPLIT_VARIABLE)
        self.check_split_index(split, table.shape[0], mat)
        row = table[split].tolist()
        if sorted(row) != list(range(1, len(persons) + 1)):
            raise DatasetFormatError(
                f"{mat}: row {split + 1} of {SPLIT_VARIABLE!r} is not a permutation of the "
                f"person indices 1..{len(persons)}"
            )
        half = len(persons) // 2
        self.build(
            [persons[i - 1] for i in sorted(row[half:])],
            [persons[i - 1] for i in sorted(row[:half])],
            source=f"{SPLIT_FILE}",
            verbose=verbose,
        )
