"""A saved gallery index: everything a search needs from the gallery, extracted once.

Why: extracting a gallery is by far the slowest step of a search, and the matcher's per-item
work (Eq. 1 filter, intra refinement, Gram matrix; docs/design.md#per-item-work) is the same for
every query. An index keeps both, plus one pooled vector per item for the first-stage
shortlist, the records, and the fingerprint of the model that made it, so that a query is
never compared with a gallery of another model.

File layout (a ``torch.save`` dict, read back with ``weights_only=True``; version
:data:`INDEX_VERSION`): ``format`` (:data:`INDEX_FORMAT`), ``version``, ``duatm_version``,
``fingerprint``, ``checkpoint``, ``flip``, ``dtype``, ``prepared`` (the fields of
:class:`~duatm.models.matching.PreparedSequences`: (N, S, D) tensors in ``dtype``, the smaller
per-item ones in float32, unused ones ``None``), ``pooled`` (N, D) float32 mean refined vectors,
``paths`` (list of str), ``pids`` and ``camids`` ((N,) int64; -1 where unknown).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from duatm import __version__
from duatm.api import TrainedModel
from duatm.atomic import atomic_open
from duatm.data.records import ImageRecord
from duatm.engine.checkpoint import CheckpointError, check_plain, load_checkpoint
from duatm.engine.progress import Progress
from duatm.models.matching import PreparedSequences

INDEX_FORMAT = "duatm-gallery-index"
#: Bumped when the layout changes; an index of another version is refused with a clear error.
INDEX_VERSION = 2
INDEX_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# The (N, S, D) fields of PreparedSequences, stored in the index dtype.
_SEQUENCE_FIELDS = ("x", "scaled_query", "reference")
# Images extracted and prepared at a time while indexing: bounds the float32 working set.
_BUILD_CHUNK = 4096


class GalleryIndexError(CheckpointError):
    """An index that cannot be used: not an index, another version, or made by another model.
    (A kind of checkpoint error: an index is a weights-only file read like a checkpoint.)"""


@dataclass(frozen=True)
class GalleryIndex:
    """A gallery ready to search: prepared sequences, pooled vectors and records.

    ``prepared`` holds the sequences (``prepared.x``) and the matcher's per-item tensors in
    the storage ``dtype``; :meth:`select` gives float32 copies of some items for the matcher.
    After :func:`load_index` the tensors are mapped from the file, so a search reads only the
    items it scores.
    """

    prepared: PreparedSequences
    pooled: Tensor
    paths: list[str]
    pids: Tensor
    camids: Tensor
    fingerprint: str
    checkpoint: str
    flip: bool
    dtype: str

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, indices: Tensor, device: torch.device | None = None) -> PreparedSequences:
        """Prepared tensors of the items at ``indices`` (1-D int64), as float32 on ``device``."""
        return _map_tensors(self.prepared, lambda t: _computable(t[indices], device))

    def slice(self, start: int, stop: int, device: torch.device | None = None) -> PreparedSequences:
        """Prepared tensors of items ``start:stop``, as float32 on ``device``."""
        return _map_tensors(self.prepared, lambda t: _computable(t[start:stop], device))

    def subset(self, indices: Tensor) -> GalleryIndex:
        """The items at ``indices`` (1-D int64) as an index of their own, in the same storage."""
        rows = indices.tolist()
        return dataclasses.replace(
            self,
            prepared=_map_tensors(self.prepared, lambda t: t[indices]),
            pooled=self.pooled[indices],
            paths=[self.paths[i] for i in rows],
            pids=self.pids[indices],
            camids=self.camids[indices],
        )

    def records(self, indices: Sequence[int] | Tensor) -> list[ImageRecord]:
        """The records of the items at ``indices``."""
        return [
            ImageRecord(self.paths[i], int(self.pids[i]), int(self.camids[i]))
            for i in (indices.tolist() if isinstance(indices, Tensor) else indices)
        ]

    def float32_bytes_per_item(self) -> int:
        """Bytes of one item's prepared tensors once :meth:`select` made them float32."""
        tensors = [t for t in _fields(self.prepared).values() if t is not None]
        return sum(t[:1].numel() for t in tensors) * 4

    def nbytes(self) -> int:
        """Bytes of the tensors (what an exact search over the whole gallery reads)."""
        tensors = [t for t in _fields(self.prepared).values() if t is not None]
        return sum(t.nbytes for t in [*tensors, self.pooled, self.pids, self.camids])


def pooled_vectors(prepared: PreparedSequences) -> Tensor:
    """(N, D) float32: each item's mean refined element (``reference``: the intra-refined
    sequence of Eq. 3, or the sequence itself where a mode has no refinement). The first stage
    ranks gallery items by the Euclidean distance of these vectors, which on a trained model's
    sequences ranks the DuATM top-10 among the first 100 of 10,000 items
    (docs/design.md#search-first-stage, benchmarks/search.py)."""
    elements = prepared.x if prepared.reference is None else prepared.reference
    return elements.float().mean(1)


def build_index(
    model: TrainedModel,
    records: Sequence[ImageRecord],
    *,
    dtype: str = "float32",
    flip: bool | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> GalleryIndex:
    """Extract and prepare every record's image with ``model``, in ``dtype`` storage; images
    are extracted a chunk at a time, so memory holds one chunk in float32 and the index."""
    flip = model.config.eval.flip if flip is None else flip
    bar = Progress(total=len(records), desc="index", unit="img", enabled=progress)

    def chunks() -> Iterator[Tensor]:
        for start in range(0, len(records), _BUILD_CHUNK):
            part = records[start : start + _BUILD_CHUNK]
            yield model.extract([r.path for r in part], flip=flip, num_workers=num_workers)
            bar.update(len(part))

    with bar:
        return index_sequences(model, chunks(), records, dtype=dtype, flip=flip)


def index_sequences(
    model: TrainedModel,
    chunks: Iterable[Tensor],
    records: Sequence[ImageRecord],
    *,
    dtype: str = "float32",
    flip: bool = False,
) -> GalleryIndex:
    """An index of already extracted sequences, given as consecutive (n, S, D) chunks that
    together hold one sequence per record (what :func:`build_index` and the search benchmark
    feed it). The storage is allocated once, so peak memory is the index plus one chunk."""
    if dtype not in INDEX_DTYPES:
        raise GalleryIndexError(
            f"index dtype must be one of {', '.join(INDEX_DTYPES)}; got {dtype!r}"
        )
    if not records:
        raise GalleryIndexError("an index needs at least one gallery item; got none")
    storage: dict[str, Tensor | None] = {}
    pooled = torch.empty(0)
    filled = 0
    for sequences in chunks:
        stop = filled + len(sequences)
        if stop > len(records):
            raise GalleryIndexError(f"more sequences than the {len(records)} records")
        prepared = model.prepare(sequences)
        part = _fields(_stored(prepared, INDEX_DTYPES[dtype]))
        if not storage:
            storage = {
                name: None if t is None else t.new_empty((len(records), *t.shape[1:]))
                for name, t in part.items()
            }
            pooled = torch.empty(len(records), sequences.shape[-1])
        for name, t in part.items():
            target = storage[name]
            if target is not None and t is not None:
                target[filled:stop] = t
        pooled[filled:stop] = pooled_vectors(prepared).cpu()
        filled = stop
    if filled != len(records):
        raise GalleryIndexError(f"{filled} sequences for {len(records)} records")
    return GalleryIndex(
        prepared=PreparedSequences(**storage),
        pooled=pooled,
        paths=[str(r.path) for r in records],
        pids=torch.tensor([r.pid for r in records], dtype=torch.int64),
        camids=torch.tensor([r.camid for r in records], dtype=torch.int64),
        fingerprint=model.fingerprint,
        checkpoint=str(model.checkpoint),
        flip=flip,
        dtype=dtype,
    )


def save_index(index: GalleryIndex, path: str | os.PathLike[str]) -> Path:
    """Write ``index`` to ``path`` atomically (the old file survives any failure)."""
    state: dict[str, Any] = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "duatm_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fingerprint": index.fingerprint,
        "checkpoint": index.checkpoint,
        "flip": index.flip,
        "dtype": index.dtype,
        "prepared": {
            name: None if t is None else t.contiguous()
            for name, t in _fields(index.prepared).items()
        },
        "pooled": index.pooled.contiguous(),
        "paths": list(index.paths),
        "pids": index.pids,
        "camids": index.camids,
    }
    check_plain(state)
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)
    return Path(path)


def load_index(path: str | os.PathLike[str], *, mmap: bool = True) -> GalleryIndex:
    """Read an index written by :func:`save_index` (weights-only; tensors mapped from the file
    unless ``mmap=False``). Raises :class:`GalleryIndexError` naming the file and what is wrong."""
    state = load_checkpoint(path, mmap=mmap, kind="index")
    if state.get("format") != INDEX_FORMAT:
        what = "a training checkpoint" if "model" in state and "config" in state else "another file"
        raise GalleryIndexError(
            f"{path} is not a duatm gallery index ({what}); make one with duatm index"
        )
    if state.get("version") != INDEX_VERSION:
        raise GalleryIndexError(
            f"{path} is a gallery index of format version {state.get('version')!r}; this duatm "
            f"({__version__}) reads version {INDEX_VERSION}: rebuild it with duatm index"
        )
    known = {f.name for f in dataclasses.fields(PreparedSequences)}
    prepared = state["prepared"]
    if set(prepared) != known:
        raise GalleryIndexError(
            f"{path}: its prepared tensors ({', '.join(sorted(prepared))}) are not the ones this "
            f"matcher uses ({', '.join(sorted(known))}): rebuild it with duatm index"
        )
    return GalleryIndex(
        prepared=PreparedSequences(**prepared),
        pooled=state["pooled"],
        paths=state["paths"],
        pids=state["pids"],
        camids=state["camids"],
        fingerprint=state["fingerprint"],
        checkpoint=state["checkpoint"],
        flip=state["flip"],
        dtype=state["dtype"],
    )


def check_same_model(
    index: GalleryIndex, model: TrainedModel, index_path: str | os.PathLike[str]
) -> None:
    """Refuse to search ``index`` with queries from a model other than the one that built it:
    the distances between two models' sequences mean nothing."""
    if index.fingerprint != model.fingerprint:
        raise GalleryIndexError(
            f"{index_path} was built by another model (fingerprint {index.fingerprint[:12]}, "
            f"from {index.checkpoint}) than {model.checkpoint} (fingerprint "
            f"{model.fingerprint[:12]}); rebuild the index with duatm index --checkpoint "
            f"{model.checkpoint}"
        )


def _fields(prepared: PreparedSequences) -> dict[str, Tensor | None]:
    return {f.name: getattr(prepared, f.name) for f in dataclasses.fields(prepared)}


def _map_tensors(prepared: PreparedSequences, fn: Any) -> PreparedSequences:
    return PreparedSequences(
        **{name: None if t is None else fn(t) for name, t in _fields(prepared).items()}
    )


def _computable(t: Tensor, device: torch.device | None) -> Tensor:
    """A stored tensor as the matcher takes it: on ``device``, floating point as float32."""
    return t.to(device=device, dtype=torch.float32 if t.is_floating_point() else t.dtype)


def _stored(prepared: PreparedSequences, storage: torch.dtype) -> PreparedSequences:
    """On the CPU; the (N, S, D) sequence tensors (the bulk) in the storage dtype, the smaller
    per-item ones (Gram matrices, norms) kept in float32, integer ones (lengths) as they are."""
    return PreparedSequences(
        **{
            name: None
            if t is None
            else t.cpu()
            if not t.is_floating_point()
            else t.cpu().to(storage if name in _SEQUENCE_FIELDS else torch.float32)
            for name, t in _fields(prepared).items()
        }
    )
