"""Build a dataset from its name, as configs and the command line give it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from duatm.data.datasets.base import ReIDDataset
from duatm.data.datasets.dukemtmcreid import DukeMTMCreID
from duatm.data.datasets.dukemtmcvidreid import DukeMTMCVidReID
from duatm.data.datasets.ilidsvid import ILIDSVID
from duatm.data.datasets.image_folder import ImageFolderDataset
from duatm.data.datasets.market1501 import Market1501
from duatm.data.datasets.mars import MARS
from duatm.data.datasets.prid2011 import PRID2011

DATASETS: dict[str, type[ReIDDataset[Any]]] = {
    "market1501": Market1501,
    "dukemtmcreid": DukeMTMCreID,
    "imagefolder": ImageFolderDataset,
    "mars": MARS,
    "dukemtmcvidreid": DukeMTMCVidReID,
    "ilidsvid": ILIDSVID,
    "prid2011": PRID2011,
}
"""Dataset classes by config name (``data.dataset``); a new dataset is one more entry here."""


def build_dataset(
    name: str, root: str | Path, *, split: int = 0, **kwargs: Any
) -> ReIDDataset[Any]:
    """Instantiate the dataset registered as ``name`` (case-insensitive) on ``root``.

    ``split`` picks one of the standard train/test splits of the datasets that define several
    (``num_splits > 1``: iLIDS-VID, PRID-2011); the others have one, split 0.
    """
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    dataset = DATASETS[key]
    if dataset.num_splits > 1:
        kwargs["split"] = split
    elif split != 0:
        raise ValueError(f"dataset {key} has one split; got split={split}")
    return dataset(root, **kwargs)
