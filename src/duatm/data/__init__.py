"""Data: records, dataset parsers, pixel pipelines, identity batch sampling, SynthPed.

Only the record types are imported here, so ``import duatm.data`` stays cheap; the rest lives
in ``duatm.data.datasets``, ``.transforms``, ``.image_dataset``, ``.samplers`` and ``.synthped``.
"""

from duatm.data.records import ImageRecord, TrackletRecord

__all__ = ["ImageRecord", "TrackletRecord"]
