"""Is my DuATM still attending? Numbers that show a matcher degenerating into average pooling.

A dual attention matcher whose attention rows are uniform computes, for every element, the mean
of its own sequence against the mean of the other one: exactly the AvePool distance, at many
times the cost. That degeneration is invisible in CMC / mAP alone, so every evaluation reports:

* ``intra_entropy`` / ``inter_entropy`` (nats): mean entropy of the intra-sequence (refinement)
  and inter-sequence (alignment) attention rows, with their 5th percentiles (``*_p5``: the
  sharpest rows); ``uniform_entropy`` = log S is the value of uniform rows, 0 is one-hot.
* ``element_cosine``: mean cosine between two different elements of one sequence. Near 1 the
  sequence has collapsed onto one vector and there is nothing left to align.
* ``rank_corr_meanvec``: per query, the Spearman rank correlation between the matcher's
  distances and the Euclidean distances of the same sequences' mean vectors, averaged over
  queries. Near 1 the matcher ranks the gallery like average pooling of its own features.
* ``meanvec_mAP`` (whole-matrix evaluations of attending matchers): the mAP of the same
  sequences ranked by the Euclidean distance of their mean vectors. The matcher's mAP minus
  this is what the attention earns over mean pooling of the very features it was given.

See docs/design.md#diagnostics for how to read them. Everything is computed on random samples
of items, pairs and queries (fixed generator), so the cost is bounded on any gallery size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from scipy.stats import rankdata
from torch import Tensor

from duatm.models.matching import DualAttentionMatcher

#: Diagnostic names in the order they are printed and logged.
DIAGNOSTIC_NAMES = (
    "intra_entropy",
    "intra_entropy_p5",
    "inter_entropy",
    "inter_entropy_p5",
    "uniform_entropy",
    "element_cosine",
    "rank_corr_meanvec",
)

MEANVEC_MAP = "meanvec_mAP"
#: What evaluations report: :data:`DIAGNOSTIC_NAMES`, and :data:`MEANVEC_MAP` where the whole
#: query x gallery matrix is ranked in one place (not in the blockwise evaluation).
REPORTED_DIAGNOSTICS = (*DIAGNOSTIC_NAMES, MEANVEC_MAP)


@torch.inference_mode()
def matcher_diagnostics(
    matcher: DualAttentionMatcher,
    query: Tensor | Sequence[Tensor],
    gallery: Tensor | Sequence[Tensor],
    distances: Tensor | None = None,
    *,
    max_items: int = 512,
    max_pairs: int = 1024,
    max_queries: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Attention sharpness, sequence collapse and agreement with mean pooling of a trained
    matcher on query (Q, S, D) and gallery (G, S, D) sequences and their (Q, G) ``distances``.

    Sequences of different lengths (video tracklets of every frame) come as sequences of
    (S_k, D) tensors; they are then taken item by item and pair by pair, ``distances`` is
    required, and ``uniform_entropy`` is the mean over the sampled inter-sequence rows (intra
    where the mode has none) of the log of the length each row attends over: the entropy
    uniform rows would have on average.

    The matcher must be in eval mode (BatchNorm with running statistics), as in evaluation.
    Attention entropies are NaN where the mode has no such attention (none for ``avgpool``, no
    inter for ``intra``, no intra for ``inter``). Without ``distances`` the matcher computes
    those of the sampled queries.
    """
    generator = torch.Generator().manual_seed(seed)
    if not (isinstance(query, Tensor) and isinstance(gallery, Tensor)) and distances is None:
        raise ValueError("sequences of different lengths need their distances")
    items = _concat(query, gallery)
    sampled = _pick(items, _sample(len(items), max_items, generator))
    out = {"element_cosine": _element_cosine(sampled)}
    out["rank_corr_meanvec"] = _rank_correlation_with_means(
        matcher, query, gallery, distances, max_queries, generator
    )
    nan = float("nan")
    intra = inter = torch.full((1,), nan)
    rows: list[Tensor | list[Tensor]] = []  # the sampled attention, for uniform_entropy
    if matcher.mode != "avgpool":
        a = _pick(query, torch.randint(len(query), (max_pairs,), generator=generator))
        b = _pick(gallery, torch.randint(len(gallery), (max_pairs,), generator=generator))
        own, cross = _attention(matcher, sampled, sampled), _attention(matcher, a, b)
        if own.intra_a is not None:
            intra = _row_entropies(own.intra_a)
            rows = [own.intra_a]
        if cross.inter_ab is not None and cross.inter_ba is not None:
            inter = torch.cat([_row_entropies(cross.inter_ab), _row_entropies(cross.inter_ba)])
            rows = [cross.inter_ab, cross.inter_ba]
    if isinstance(items, Tensor):
        out["uniform_entropy"] = math.log(items.shape[1])
    elif rows:  # the headline (inter, else intra) rows' mean log(length attended over)
        matrices = [w for mats in rows for w in mats]
        weighted = sum(w.shape[-2] * math.log(w.shape[-1]) for w in matrices)
        out["uniform_entropy"] = weighted / sum(w.shape[-2] for w in matrices)
    else:  # avgpool: no attention rows; log of a sampled item's length, on average
        out["uniform_entropy"] = sum(math.log(len(x)) for x in sampled) / len(sampled)
    out["intra_entropy"], out["intra_entropy_p5"] = _mean_and_p5(intra)
    out["inter_entropy"], out["inter_entropy_p5"] = _mean_and_p5(inter)
    return {name: float(out[name]) for name in DIAGNOSTIC_NAMES}


class _Attention(NamedTuple):
    """Attention matrices as a batch (equal lengths) or a list of one per pair."""

    intra_a: Tensor | list[Tensor] | None
    inter_ab: Tensor | list[Tensor] | None
    inter_ba: Tensor | list[Tensor] | None


def _attention(
    matcher: DualAttentionMatcher, a: Tensor | list[Tensor], b: Tensor | list[Tensor]
) -> _Attention:
    """The matcher's attention of pairs (a[k], b[k]): in one batch, or pair by pair."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        got = matcher.attention(a, b)
        return _Attention(got.intra_a, got.inter_ab, got.inter_ba)
    pairs = [matcher.attention(x[None], y[None]) for x, y in zip(a, b, strict=True)]
    first = pairs[0]
    return _Attention(
        *(
            None if getattr(first, name) is None else [getattr(p, name)[0] for p in pairs]
            for name in ("intra_a", "inter_ab", "inter_ba")
        )
    )


def _concat(a: Tensor | Sequence[Tensor], b: Tensor | Sequence[Tensor]) -> Tensor | list[Tensor]:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.cat([a, b])
    return [*a, *b]


def _pick(items: Tensor | Sequence[Tensor], index: Tensor) -> Tensor | list[Tensor]:
    if isinstance(items, Tensor):
        return items[index]
    return [items[i] for i in index.tolist()]


def _mean_vectors(items: Tensor | Sequence[Tensor]) -> Tensor:
    """(N, D) mean element of every item, in float32."""
    if isinstance(items, Tensor):
        return items.float().mean(1)
    return torch.stack([x.float().mean(0) for x in items])


def _sample(n: int, k: int, generator: torch.Generator) -> Tensor:
    return torch.arange(n) if n <= k else torch.randperm(n, generator=generator)[:k]


def _row_entropy(attention: Tensor) -> Tensor:
    """Entropy in nats of every attention row, flattened."""
    return -(attention * attention.clamp_min(1e-30).log()).sum(-1).flatten()


def _row_entropies(attention: Tensor | list[Tensor]) -> Tensor:
    """:func:`_row_entropy` of a batch of attention matrices or of a list of them."""
    if isinstance(attention, Tensor):
        return _row_entropy(attention)
    return torch.cat([_row_entropy(w) for w in attention])


def _mean_and_p5(values: Tensor) -> tuple[float, float]:
    return float(values.mean()), float(torch.quantile(values.double(), 0.05))


def _element_cosine(sequences: Tensor | Sequence[Tensor]) -> float:
    """Mean over items of the mean cosine between distinct elements of one sequence."""
    if not isinstance(sequences, Tensor):
        per_item = [_element_cosine(x[None]) for x in sequences if len(x) >= 2]
        return sum(per_item) / len(per_item) if per_item else float("nan")
    x = torch.nn.functional.normalize(sequences.float(), dim=-1)
    length = x.shape[1]
    if length < 2:
        return float("nan")
    gram_sum = (x @ x.transpose(1, 2)).sum((1, 2)) - length  # off-diagonal sum per item
    return float((gram_sum / (length * (length - 1))).mean())


def _rank_correlation_with_means(
    matcher: DualAttentionMatcher,
    query: Tensor | Sequence[Tensor],
    gallery: Tensor | Sequence[Tensor],
    distances: Tensor | None,
    max_queries: int,
    generator: torch.Generator,
) -> float:
    """Mean over sampled queries of Spearman(matcher distances, mean-vector distances)."""
    if len(gallery) < 2:
        return float("nan")
    rows = _sample(len(query), max_queries, generator)
    pooled = torch.cdist(_mean_vectors(_pick(query, rows)), _mean_vectors(gallery).contiguous())
    if distances is None:
        assert isinstance(query, Tensor) and isinstance(gallery, Tensor)
        chosen = matcher.pairwise(query[rows], gallery)
    else:
        chosen = distances[rows]
    return float(_spearman_rows(chosen.double().cpu(), pooled.double().cpu()).nanmean())


def _spearman_rows(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Spearman correlation (tied values share their mean rank)."""
    ra = torch.from_numpy(rankdata(a.numpy(), axis=1))
    rb = torch.from_numpy(rankdata(b.numpy(), axis=1))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))


def format_diagnostics(record: Mapping[str, Any]) -> str:
    """One console line of the diagnostics in ``record`` ("" when it has none)."""
    if "element_cosine" not in record:
        return ""
    parts = []
    if not all(math.isnan(record[name]) for name in ("intra_entropy", "inter_entropy")):
        parts.append(
            f"attention entropy intra {record['intra_entropy']:.2f} (p5 "
            f"{record['intra_entropy_p5']:.2f}), inter {record['inter_entropy']:.2f} (p5 "
            f"{record['inter_entropy_p5']:.2f}) of {record['uniform_entropy']:.2f} for uniform"
        )
    parts.append(f"element cosine {record['element_cosine']:.2f}")
    parts.append(f"rank corr. with mean pooling {record['rank_corr_meanvec']:.2f}")
    if MEANVEC_MAP in record:
        parts.append(f"mAP with mean pooling of the same features {100 * record[MEANVEC_MAP]:.1f}")
    return "diagnostics: " + "; ".join(parts)
