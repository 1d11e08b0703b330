"""A validation split carved from the training identities, for model selection without the test set.

Why: choosing a checkpoint (or a recipe) by its test-set mAP reports an optimistic number. The
held-out identities leave training entirely (no image of them is trained on) and are split into
a query and a gallery like a test set, so selecting on them measures generalisation to unseen
people, which is what the test set measures, without looking at it.

The carve is deterministic: it depends on the training records and ``seed`` only (not on the
training seed), so every run of a recipe, whatever its seed, is selected on the same people.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic

import numpy as np

from duatm.data.records import RecordT, relabel_pids


@dataclass(frozen=True)
class ValidationSplit(Generic[RecordT]):
    """Training records without the held-out identities (relabelled 0..N-1), and the held-out
    identities as a query / gallery pair (labels as in the original training split)."""

    train: list[RecordT]
    query: list[RecordT]
    gallery: list[RecordT]


def validation_identity_count(setting: float, num_ids: int) -> int:
    """How many identities ``data.val_identities`` asks for: an int is a count, a fraction in
    (0, 1) a share of the training identities (rounded, at least 2 when nonzero)."""
    if setting <= 0:
        return 0
    if setting < 1:
        return max(2, round(setting * num_ids))
    return int(setting)


def carve_validation(
    train: Sequence[RecordT], num_ids: int, *, seed: int = 0
) -> ValidationSplit[RecordT]:
    """Hold ``num_ids`` training identities out as a validation query / gallery split.

    The held-out identities are a run of ``num_ids`` neighbouring identity numbers among the
    eligible ones (from a start drawn with ``seed``, wrapping round), not a random scatter: a
    data set numbers people as it collects or generates them, so neighbours share conditions,
    and people who look alike stay together (SynthPed's look-alike groups are consecutive
    numbers). A scattered carve breaks such groups apart and gives a validation split far
    easier than the test split, which then cannot tell recipes apart
    (docs/design.md#model-selection).

    Only identities seen by at least two cameras, and by one of them at least twice, can be
    held out: the protocol removes same-camera matches, so every validation query needs a
    gallery image of its identity from another camera. For each held-out identity, the first
    image (in record order) of every camera that has two or more is a query; every other image
    goes to the gallery, so every query is valid.

    Raises ValueError when fewer such identities exist than asked for, or when so many are held
    out that fewer than two identities would be left to train on.
    """
    by_pid: dict[int, list[RecordT]] = defaultdict(list)
    for record in train:
        by_pid[record.pid].append(record)
    eligible = sorted(pid for pid, recs in by_pid.items() if _can_validate(recs))
    if num_ids > len(eligible):
        raise ValueError(
            f"cannot hold out {num_ids} validation identities: only {len(eligible)} training "
            "identities appear in two or more cameras, twice in one of them"
        )
    if len(by_pid) - num_ids < 2:
        raise ValueError(
            f"holding out {num_ids} of {len(by_pid)} training identities leaves fewer than two "
            "to train on"
        )
    start = int(np.random.default_rng(seed).integers(len(eligible)))
    held_out = {eligible[(start + i) % len(eligible)] for i in range(num_ids)}
    query: list[RecordT] = []
    gallery: list[RecordT] = []
    for pid in sorted(held_out):
        per_camera = Counter(r.camid for r in by_pid[pid])
        asked: set[int] = set()
        for record in by_pid[pid]:
            if per_camera[record.camid] >= 2 and record.camid not in asked:
                asked.add(record.camid)
                query.append(record)
            else:
                gallery.append(record)
    remaining = [r for r in train if r.pid not in held_out]
    return ValidationSplit(relabel_pids(remaining), query, gallery)


def _can_validate(records: Sequence[RecordT]) -> bool:
    per_camera = Counter(r.camid for r in records)
    return len(per_camera) >= 2 and max(per_camera.values()) >= 2
