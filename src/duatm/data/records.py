"""Plain records that every dataset produces and every loader consumes.

A record is what the library knows about one item: where its pixels are, who it shows and which
camera saw it. Images and video tracklets share ``pid`` and ``camid`` so dataset bookkeeping
(relabelling, counting, summaries) is written once for both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One person image: file path, identity and 0-based camera index."""

    path: str
    pid: int
    camid: int


@dataclass(frozen=True, slots=True)
class TrackletRecord:
    """One video tracklet: frame paths in temporal order, identity and 0-based camera index."""

    paths: tuple[str, ...]
    pid: int
    camid: int


RecordT = TypeVar("RecordT", ImageRecord, TrackletRecord)


def relabel_pids(records: Sequence[RecordT]) -> list[RecordT]:
    """Map identities to 0..N-1 in sorted order of the original ids, as classifiers need."""
    mapping = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [replace(r, pid=mapping[r.pid]) for r in records]


def count_pids(records: Iterable[ImageRecord | TrackletRecord]) -> int:
    """Number of distinct identities."""
    return len({r.pid for r in records})


def count_cams(records: Iterable[ImageRecord | TrackletRecord]) -> int:
    """Number of distinct cameras."""
    return len({r.camid for r in records})
