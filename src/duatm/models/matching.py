"""The dual attention matching block (DuATM, Si et al. CVPR 2018, Sec. 3.2, Eq. 1-5).

Two entry points compute the same distance:

* ``forward(xa, xb)`` evaluates aligned pairs literally (it forms the refined and aligned
  vectors). It is the readable reference and what a naive evaluation would run per pair.
* ``pairwise(xq, xg)`` evaluates every query x gallery pair the way DESIGN §2 prescribes:
  the work that depends on one item (filter ``q``, intra-refined ``xbar``, Gram matrix) is done
  once per item by :meth:`DualAttentionMatcher.prepare`; the pair work is two batched matrix
  products per tile and direction, and the aligned vectors are never formed, because with
  ``P = softmax(q_a X_b^T)``::

      ||xbar_a^i - P_i X_b||^2 = ||xbar_a^i||^2 - 2 P_i (X_b xbar_a^i) + P_i G_b P_i^T

  where ``G_b = X_b X_b^T``. Tiles of the query x gallery grid keep memory under a budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

MATCHER_MODES = ("dual", "intra", "inter", "avgpool")

# Below this squared distance the square root is clamped: the expansion above cancels
# to rounding noise for (near-)identical sequences, and sqrt's gradient at 0 is infinite.
_MIN_SQUARED_DISTANCE = 1e-12

# Default tile budgets: a few MiB keep a CPU tile in cache; a GPU wants large launches.
DEFAULT_CPU_TILE_BYTES = 16 * 2**20
DEFAULT_CUDA_TILE_BYTES = 1 * 2**30


@dataclass(frozen=True)
class PreparedSequences:
    """Per-item tensors that ``pairwise`` reuses for every pair an item takes part in.

    ``x`` (N, S, D) are the sequences; ``query`` (N, S, D) the filtered vectors of Eq. 1;
    ``reference`` (N, S, D) the vectors each element is compared from (``xbar`` for dual and
    intra, ``x`` for inter); ``gram`` (N, S, S) is ``x x^T``; ``reference_sqnorm`` (N, S).
    Fields a mode does not use are ``None``.
    """

    x: Tensor
    query: Tensor | None = None
    reference: Tensor | None = None
    gram: Tensor | None = None
    reference_sqnorm: Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def slice(self, start: int, stop: int) -> PreparedSequences:
        """Items ``start:stop`` (views, no copy)."""
        return PreparedSequences(*(None if t is None else t[start:stop] for t in self._tensors()))

    def _tensors(self) -> tuple[Tensor | None, ...]:
        return (self.x, self.query, self.reference, self.gram, self.reference_sqnorm)


def _accumulation_dtype(t: Tensor) -> torch.dtype:
    """float32 for half-precision inputs (autocast), the input's own dtype otherwise."""
    return torch.promote_types(t.dtype, torch.float32)


def _safe_sqrt(squared: Tensor) -> Tensor:
    return squared.clamp_min(_MIN_SQUARED_DISTANCE).sqrt()


def _check_sequences(name: str, x: Tensor, dim: int) -> None:
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (N, S, {dim}); got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has sequence length 0; every item needs at least one element")


class DualAttentionMatcher(nn.Module):
    """Learned distance between two feature sequences (DESIGN §1; paper Table 2 ablations).

    Args:
        dim: element dimension D.
        mode: ``"dual"`` (Eq. 4), ``"inter"`` (alignment only), ``"intra"`` (refinement only,
            position i against position i) or ``"avgpool"`` (distance of mean vectors; the
            AvePool baseline, which has no transform layer: ``transform`` is ``None``).
    """

    def __init__(self, dim: int, mode: str = "dual") -> None:
        super().__init__()
        if mode not in MATCHER_MODES:
            raise ValueError(f"mode must be one of {MATCHER_MODES}; got {mode!r}")
        if dim <= 0:
            raise ValueError(f"dim must be positive; got {dim}")
        self.dim = dim
        self.mode = mode
        self.transform: nn.Sequential | None = (
            None
            if mode == "avgpool"
            else nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU())
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, mode={self.mode!r}"

    # ----------------------------------------------------------------- per-item work
    def _filter(self, *sequences: Tensor) -> list[Tensor]:
        """Eq. 1 on every element of the given sequences, as ONE BatchNorm batch."""
        assert self.transform is not None
        flat = torch.cat([x.reshape(-1, self.dim) for x in sequences])
        filtered = self.transform(flat)
        sizes = [x.shape[0] * x.shape[1] for x in sequences]
        return [f.view_as(x) for f, x in zip(filtered.split(sizes), sequences, strict=True)]

    @staticmethod
    def _attend(query: Tensor, keys: Tensor) -> Tensor:
        """Eq. 2-3: softmax(query . keys) weighted sum of keys, per item."""
        return torch.softmax(query @ keys.transpose(1, 2), dim=-1) @ keys

    def prepare(self, x: Tensor) -> PreparedSequences:
        """Per-item tensors of ``x`` (N, S, D); in training mode BN uses this batch's statistics."""
        _check_sequences("x", x, self.dim)
        if self.mode == "avgpool":
            return PreparedSequences(x)
        (query,) = self._filter(x)
        reference = x if self.mode == "inter" else self._attend(query, x)
        gram = None if self.mode == "intra" else x @ x.transpose(1, 2)
        return PreparedSequences(
            x=x,
            query=query,
            reference=reference,
            gram=gram,
            reference_sqnorm=reference.to(_accumulation_dtype(reference)).square().sum(-1),
        )

    # ----------------------------------------------------------------- aligned pairs
    def forward(self, xa: Tensor, xb: Tensor) -> Tensor:
        """Distances of aligned pairs: ``xa`` (N, Sa, D), ``xb`` (N, Sb, D) -> (N,)."""
        _check_sequences("xa", xa, self.dim)
        _check_sequences("xb", xb, self.dim)
        if xa.shape[0] != xb.shape[0]:
            raise ValueError(
                f"xa and xb must hold the same number of pairs; got {xa.shape[0]} and {xb.shape[0]}"
            )
        if self.mode == "avgpool":
            return torch.linalg.vector_norm(xa.mean(1) - xb.mean(1), dim=-1)
        if self.mode == "intra" and xa.shape[1] != xb.shape[1]:
            raise ValueError(
                f"mode 'intra' compares position i with position i and needs equal sequence "
                f"lengths; got {xa.shape[1]} and {xb.shape[1]}"
            )
        qa, qb = self._filter(xa, xb)
        if self.mode == "intra":
            d = torch.linalg.vector_norm(self._attend(qa, xa) - self._attend(qb, xb), dim=-1)
            return d.mean(-1)
        ref_a = xa if self.mode == "inter" else self._attend(qa, xa)
        ref_b = xb if self.mode == "inter" else self._attend(qb, xb)
        d_a = torch.linalg.vector_norm(ref_a - self._attend(qa, xb), dim=-1)  # Eq. 4
        d_b = torch.linalg.vector_norm(ref_b - self._attend(qb, xa), dim=-1)
        return d_a.mean(-1) / 2 + d_b.mean(-1) / 2  # Eq. 5

    # ----------------------------------------------------------------- all pairs
    def pairwise(
        self, xq: Tensor, xg: Tensor | None = None, *, max_tile_bytes: int | None = None
    ) -> Tensor:
        """The (Q, G) distance matrix of every ``xq`` (Q, Sq, D) against every ``xg`` (G, Sg, D).

        ``xg=None`` (or ``xg is xq``) compares a batch with itself and prepares it once, as
        training does. Differentiable when grad is enabled; without grad it runs in place.
        """
        prepared_q = self.prepare(xq)
        prepared_g = prepared_q if xg is None or xg is xq else self.prepare(xg)
        return self.pairwise_prepared(prepared_q, prepared_g, max_tile_bytes=max_tile_bytes)

    def pairwise_prepared(
        self,
        query: PreparedSequences,
        gallery: PreparedSequences,
        *,
        max_tile_bytes: int | None = None,
    ) -> Tensor:
        """``pairwise`` on tensors from :meth:`prepare` (e.g. a cached gallery index)."""
        num_q, len_q = query.x.shape[:2]
        num_g, len_g = gallery.x.shape[:2]
        if self.mode == "intra" and len_q != len_g:
            raise ValueError(
                f"mode 'intra' needs equal sequence lengths; got {len_q} (query) and {len_g} (gallery)"
            )
        grad = torch.is_grad_enabled()
        tile_q, tile_g = self._tile_shape(num_q, num_g, len_q, len_g, query.x, grad, max_tile_bytes)
        out = torch.empty(num_q, num_g, device=query.x.device, dtype=_accumulation_dtype(query.x))
        for q0 in range(0, num_q, tile_q):
            q_tile = query.slice(q0, q0 + tile_q)
            for g0 in range(0, num_g, tile_g):
                g_tile = gallery.slice(g0, g0 + tile_g)
                out[q0 : q0 + tile_q, g0 : g0 + tile_g] = self._tile_distances(q_tile, g_tile, grad)
        return out

    def _tile_shape(
        self,
        num_q: int,
        num_g: int,
        len_q: int,
        len_g: int,
        like: Tensor,
        grad: bool,
        max_tile_bytes: int | None,
    ) -> tuple[int, int]:
        """Largest near-square tile whose temporaries fit the byte budget."""
        if max_tile_bytes is None:
            max_tile_bytes = DEFAULT_CUDA_TILE_BYTES if like.is_cuda else DEFAULT_CPU_TILE_BYTES
        # Floats alive per pair: dual/inter hold a (2 Sq Sg) product and an (Sq Sg) Gram
        # product per direction; autograd keeps both directions' intermediates.
        per_pair = {"avgpool": 1, "intra": len_q}.get(self.mode, 3 * len_q * len_g)
        bytes_per_pair = 4 * per_pair * (4 if grad else 1)
        pairs = max(1, max_tile_bytes // bytes_per_pair)
        tile_q = min(num_q, max(1, math.isqrt(pairs)))
        tile_g = min(num_g, max(1, pairs // tile_q))
        return tile_q, tile_g

    def _tile_distances(
        self, query: PreparedSequences, gallery: PreparedSequences, grad: bool
    ) -> Tensor:
        if self.mode == "avgpool":
            return _euclidean(query.x.mean(1), gallery.x.mean(1))
        if self.mode == "intra":
            return _positionwise_distance(query, gallery)
        forward = _directed_distance(query, gallery, inplace=not grad)
        backward = _directed_distance(gallery, query, inplace=not grad)
        return forward / 2 + backward.T / 2


def _euclidean(a: Tensor, b: Tensor) -> Tensor:
    """(Na, D) x (Nb, D) -> (Na, Nb) Euclidean distances by the Gram expansion."""
    a, b = a.to(_accumulation_dtype(a)), b.to(_accumulation_dtype(b))
    sq = a.square().sum(-1)[:, None] + b.square().sum(-1)[None, :] - 2 * a @ b.T
    return _safe_sqrt(sq)


def _positionwise_distance(query: PreparedSequences, gallery: PreparedSequences) -> Tensor:
    """Intra mode: mean over positions i of ||xbar_a^i - xbar_b^i||, for all pairs."""
    assert query.reference is not None and gallery.reference is not None
    assert query.reference_sqnorm is not None and gallery.reference_sqnorm is not None
    dots = query.reference.transpose(0, 1) @ gallery.reference.permute(1, 2, 0)  # (S, Na, Nb)
    sq = (
        query.reference_sqnorm.T[:, :, None]
        + gallery.reference_sqnorm.T[:, None, :]
        - 2 * dots.to(_accumulation_dtype(dots))
    )
    return _safe_sqrt(sq).mean(0)


def _directed_distance(
    anchor: PreparedSequences, other: PreparedSequences, *, inplace: bool
) -> Tensor:
    """mean_i d_a^i for every (anchor a, other b) pair -> (Na, Nb).

    d_a^i = ||ref_a^i - sum_n P_in x_b^n||, P = softmax_n(q_a^i . x_b^n). The products are laid
    out (Nb, Na*Sa, Sb) so that the softmax runs over the contiguous last axis and the Gram term
    is one batched product; ``inplace`` reuses buffers when no gradient is needed.
    """
    assert anchor.query is not None and anchor.reference is not None
    assert anchor.reference_sqnorm is not None and other.gram is not None
    num_a, len_a, dim = anchor.x.shape
    rows = torch.cat([anchor.query.reshape(-1, dim), anchor.reference.reshape(-1, dim)])
    products = torch.matmul(rows, other.x.transpose(1, 2))  # (Nb, 2*Na*Sa, Sb)
    products = products.to(_accumulation_dtype(products))
    logits, cross = products.split(num_a * len_a, dim=1)
    shift = logits.amax(-1, keepdim=True)
    if inplace:
        weights = logits.sub_(shift).exp_()  # unnormalised softmax numerators
        cross_term = cross.mul_(weights).sum(-1)
        gram_term = torch.bmm(weights, other.gram.to(weights.dtype)).mul_(weights).sum(-1)
    else:
        weights = (logits - shift.detach()).exp()
        cross_term = (cross * weights).sum(-1)
        gram_term = (torch.bmm(weights, other.gram.to(weights.dtype)) * weights).sum(-1)
    norm = weights.sum(-1)
    squared = (
        anchor.reference_sqnorm.reshape(1, -1) - 2 * cross_term / norm + gram_term / norm.square()
    )
    return _safe_sqrt(squared).view(-1, num_a, len_a).mean(-1).T
