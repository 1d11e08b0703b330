"""Market-1501 (Zheng et al., ICCV 2015)."""

from __future__ import annotations

from duatm.data.datasets.bounding_box import BoundingBoxDataset


class Market1501(BoundingBoxDataset):
    """Market-1501: 1,501 identities seen by 6 cameras on a campus.

    ``root`` holds ``bounding_box_train/``, ``query/`` and ``bounding_box_test/`` as unpacked from
    ``Market-1501-v15.09.15.zip`` (a parent folder holding ``Market-1501-v15.09.15/`` also works).
    Names are ``PPPP_cCsS_FFFFFF_NN.jpg``: identity, camera C, sequence S, frame, box index.
    Expected after parsing: train 751 ids / 12,936 images; query 750 ids / 3,368 images;
    gallery 752 ids (with distractor id 0) / 15,913 images; junk id -1 left out.
    """

    name = "market1501"
    official_dir = "Market-1501-v15.09.15"
    archive = "Market-1501-v15.09.15.zip"
    num_cameras = 6
    max_pid = 1501
