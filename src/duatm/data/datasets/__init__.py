"""Re-id datasets: parsers of the published layouts and of the user's own folders."""

from duatm.data.datasets.base import (
    DatasetError,
    DatasetFormatError,
    DatasetLayoutError,
    ReIDDataset,
)
from duatm.data.datasets.bounding_box import BoundingBoxDataset
from duatm.data.datasets.dukemtmcreid import DukeMTMCreID
from duatm.data.datasets.dukemtmcvidreid import DukeMTMCVidReID
from duatm.data.datasets.ilidsvid import ILIDSVID
from duatm.data.datasets.image_folder import ImageFolderDataset
from duatm.data.datasets.market1501 import Market1501
from duatm.data.datasets.mars import MARS
from duatm.data.datasets.prid2011 import PRID2011
from duatm.data.datasets.registry import DATASETS, build_dataset
from duatm.data.datasets.video_base import VideoReIDDataset

__all__ = [
    "DATASETS",
    "ILIDSVID",
    "MARS",
    "PRID2011",
    "BoundingBoxDataset",
    "DatasetError",
    "DatasetFormatError",
    "DatasetLayoutError",
    "DukeMTMCVidReID",
    "DukeMTMCreID",
    "ImageFolderDataset",
    "Market1501",
    "ReIDDataset",
    "VideoReIDDataset",
    "build_dataset",
]
