"""DukeMTMC-reID (Zheng et al., ICCV 2017; images from Ristani et al., ECCVW 2016)."""

from __future__ import annotations

from duatm.data.datasets.bounding_box import BoundingBoxDataset


class DukeMTMCreID(BoundingBoxDataset):
    """DukeMTMC-reID: 1,404 identities that cross cameras plus 408 distractors, 8 cameras.

    ``root`` holds ``bounding_box_train/``, ``query/`` and ``bounding_box_test/`` as unpacked from
    ``DukeMTMC-reID.zip`` (a parent folder holding ``DukeMTMC-reID/`` also works).
    Names are ``PPPP_cC_fFFFFFFF.jpg``: identity, camera C, frame.
    Expected after parsing: train 702 ids / 16,522 images; query 702 ids / 2,228 images;
    gallery 1,110 ids / 17,661 images.
    """

    name = "dukemtmcreid"
    official_dir = "DukeMTMC-reID"
    archive = "DukeMTMC-reID.zip"
    num_cameras = 8
    # Identities are 4-digit numbers (the largest in the release is 7140).
    max_pid = 9999
