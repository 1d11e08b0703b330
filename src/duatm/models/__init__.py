"""duatm.models: backbones, sequence extractors, the matcher and the DuATM network."""

from duatm.models.backbones import BACKBONE_NAMES, PretrainedWeightsError, build_backbone
from duatm.models.duatm import DuATM
from duatm.models.extractor import ImageSequenceExtractor, VideoSequenceExtractor

__all__ = [
    "BACKBONE_NAMES",
    "DuATM",
    "ImageSequenceExtractor",
    "PretrainedWeightsError",
    "VideoSequenceExtractor",
    "build_backbone",
]
