"""Build a dataset from its name, as configs and the command line give it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from duatm.data.datasets.base import ReIDDataset
from duatm.data.datasets.dukemtmcreid import DukeMTMCreID
from duatm.data.datasets.image_folder import ImageFolderDataset
from duatm.data.datasets.market1501 import Market1501
from duatm.data.datasets.mars import MARS

#: Dataset classes by config name; a new dataset is one more entry here.
DATASETS: dict[str, type[ReIDDataset[Any]]] = {
    "market1501": Market1501,
    "dukemtmcreid": DukeMTMCreID,
    "imagefolder": ImageFolderDataset,
    "mars": MARS,
}


def build_dataset(name: str, root: str | Path, **kwargs: Any) -> ReIDDataset[Any]:
    """Instantiate the dataset registered as ``name`` (case-insensitive) on ``root``."""
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[key](root, **kwargs)
