"""The dual attention matching block (DuATM, Si et al. CVPR 2018, Sec. 3.2, Eq. 1-5).

Two entry points compute the same distance:

* ``forward(xa, xb)`` evaluates aligned pairs literally (it forms the refined and aligned
  vectors). It is the readable reference and what a naive evaluation would run per pair.
* ``pairwise(xq, xg)`` evaluates every query x gallery pair as docs/design.md#matcher derives:
  the work that depends on one item (filter ``q``, intra-refined ``xbar``, Gram matrix) is done
  once per item by [`prepare`][duatm.models.matching.DualAttentionMatcher.prepare]; the pair work
  is two matrix products per tile and direction, and the aligned vectors are never formed
  (docs/design.md#norm-expansion), because with
  ``P = softmax(q_a X_b^T)``::

      ||xbar_a^i - P_i X_b||^2 = ||xbar_a^i||^2 + P_i (G_b P_i^T - 2 X_b xbar_a^i)

  where ``G_b = X_b X_b^T``. Tiles of the query x gallery grid keep memory under a budget.

Variable-length sequences (video tracklets of every frame) come as zero-padded batches with
per-item lengths; see :meth:`DualAttentionMatcher.pairwise` and docs/design.md#variable-length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

MATCHER_MODES = ("dual", "intra", "inter", "avgpool")
"""The matcher variants of the paper's Table 2 (docs/design.md#ablations)."""

ATTENTION_INITS = ("random", "identity")
"""How the filter layer W of Eq. 1 starts (docs/design.md#attention-init)."""

# The pairwise softmax runs in base 2 (exp2 is about twice as fast as exp on CPU), so the
# prepared filter vectors carry this factor: 2^(log2(e) q.x) = e^(q.x).
_LOG2E = math.log2(math.e)

# Below this squared distance the square root is clamped: the expansion above cancels
# to rounding noise for (near-)identical sequences, and sqrt's gradient at 0 is infinite.
_MIN_SQUARED_DISTANCE = 1e-12

# Default tile budgets: a CPU tile's two product buffers should stay in the last-level cache
# (8 MiB is 32 x 32 items at S = 32 in float32); a GPU wants large launches.
DEFAULT_CPU_TILE_BYTES = 8 * 2**20
DEFAULT_CUDA_TILE_BYTES = 1 * 2**30


class PairAttention(NamedTuple):
    """The attention weights DuATM computes for aligned pairs (a, b) (Eq. 2-3), each row a
    softmax that sums to 1; a matrix the matcher's mode does not use is ``None``.

    ``intra_a`` (N, Sa, Sa): row i is where element i of a looks within a to refine itself
    (xbar_a^i); ``intra_b`` (N, Sb, Sb) the same for b. ``inter_ab`` (N, Sa, Sb): row i is where
    element i of a looks in b to align it (xhat_b^i); ``inter_ba`` (N, Sb, Sa) the reverse.
    """

    intra_a: Tensor | None
    intra_b: Tensor | None
    inter_ab: Tensor | None
    inter_ba: Tensor | None


@dataclass(frozen=True)
class PreparedSequences:
    """Per-item tensors that ``pairwise`` reuses for every pair an item takes part in.

    ``x`` (N, S, D) are the sequences; ``scaled_query`` (N, S, D) the filtered vectors of Eq. 1
    times log2(e), so that their logits feed exp2; ``reference`` (N, S, D) the vectors each
    element is compared from (``xbar`` for dual and intra, ``x`` for inter); ``gram`` (N, S, S)
    is ``x x^T`` and ``reference_sqnorm`` (N, S), both in the accumulation dtype;
    ``max_query_norm`` and ``max_x_norm`` (N,) are each item's largest element norms of
    ``scaled_query`` and ``x``, which bound its logits. Fields a mode does not use are ``None``.

    ``lengths`` (N,) int64, on ``x``'s device, is set when the items have different lengths:
    item k is then ``x[k, :lengths[k]]`` and every per-item tensor is zero beyond it (padding
    never reaches a product, see docs/design.md#variable-length). ``None``: every item has
    length S.
    """

    x: Tensor
    scaled_query: Tensor | None = None
    reference: Tensor | None = None
    gram: Tensor | None = None
    reference_sqnorm: Tensor | None = None
    max_query_norm: Tensor | None = None
    max_x_norm: Tensor | None = None
    lengths: Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def slice(self, start: int, stop: int) -> PreparedSequences:
        """Items ``start:stop`` (views, no copy)."""
        return PreparedSequences(*(None if t is None else t[start:stop] for t in self._tensors()))

    def take(self, index: Tensor, length: int) -> PreparedSequences:
        """Items ``index`` (a copy) cut to their first ``length`` positions, which must hold every
        one of them; ``lengths`` is dropped when they all have that length (no masking needed)."""
        lengths = None
        if self.lengths is not None:
            lengths = self.lengths[index]
            if bool((lengths == length).all()):
                lengths = None
        return PreparedSequences(
            x=self.x[index, :length],
            scaled_query=_take(self.scaled_query, index, length),
            reference=_take(self.reference, index, length),
            gram=None if self.gram is None else self.gram[index, :length, :length],
            reference_sqnorm=_take(self.reference_sqnorm, index, length),
            max_query_norm=_take(self.max_query_norm, index, None),
            max_x_norm=_take(self.max_x_norm, index, None),
            lengths=lengths,
        )

    def _tensors(self) -> tuple[Tensor | None, ...]:
        return (
            self.x,
            self.scaled_query,
            self.reference,
            self.gram,
            self.reference_sqnorm,
            self.max_query_norm,
            self.max_x_norm,
            self.lengths,
        )


def _take(t: Tensor | None, index: Tensor, length: int | None) -> Tensor | None:
    if t is None:
        return None
    return t[index] if length is None else t[index, :length]


def _accumulation_dtype(t: Tensor) -> torch.dtype:
    """float32 for half-precision inputs (autocast), the input's own dtype otherwise."""
    return torch.promote_types(t.dtype, torch.float32)


def _safe_sqrt(squared: Tensor) -> Tensor:
    return squared.clamp_min(_MIN_SQUARED_DISTANCE).sqrt()


def _max_norm(x: Tensor) -> Tensor:
    """(N, S, D) -> (N,): each item's largest element norm, in the accumulation dtype."""
    return torch.linalg.vector_norm(x.to(_accumulation_dtype(x)), dim=-1).amax(-1)


def _check_pairs(xa: Tensor, xb: Tensor, dim: int) -> None:
    """Aligned pairs: two batches of sequences of element size ``dim`` with as many items."""
    _check_sequences("xa", xa, dim)
    _check_sequences("xb", xb, dim)
    if xa.shape[0] != xb.shape[0]:
        raise ValueError(
            f"xa and xb must hold the same number of pairs; got {xa.shape[0]} and {xb.shape[0]}"
        )


def _check_sequences(name: str, x: Tensor, dim: int) -> None:
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (N, S, {dim}); got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has sequence length 0; every item needs at least one element")


def _check_lengths(name: str, lengths: Tensor | None, x: Tensor) -> Tensor | None:
    """``lengths`` as int64 on ``x``'s device after checking it fits ``x`` (N, S, D), or None
    when every item has length S; raises ValueError naming ``name``."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths)
    num, size = x.shape[:2]
    if lengths.dim() != 1 or len(lengths) != num:
        raise ValueError(
            f"{name} must be a 1-D tensor with one length per item ({num}); "
            f"got shape {tuple(lengths.shape)}"
        )
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers; got dtype {lengths.dtype}")
    lengths = lengths.to(device=x.device, dtype=torch.int64)
    if num and not bool(((lengths >= 1) & (lengths <= size)).all()):
        low, high = int(lengths.min()), int(lengths.max())
        raise ValueError(
            f"{name} must lie in [1, {size}] (the padded length); got values from {low} to {high}"
        )
    if num == 0 or bool((lengths == size).all()):
        return None
    return lengths


def _valid_mask(lengths: Tensor, size: int) -> Tensor:
    """(N,) lengths -> (N, size) bool, True at the positions an item really has."""
    return torch.arange(size, device=lengths.device) < lengths[:, None]


def _length_tiles(lengths: list[int], max_rows: int) -> list[tuple[int, int, int]]:
    """Consecutive tiles ``(start, stop, length)`` over ``lengths`` sorted in decreasing order:
    each holds as many items as fit ``max_rows`` rows when padded to its first (longest) item,
    and at least one. Equal lengths S give tiles of ``max_rows // S`` items, as the
    equal-length path does."""
    tiles, start = [], 0
    while start < len(lengths):
        length = lengths[start]
        stop = min(len(lengths), start + max(1, max_rows // length))
        tiles.append((start, stop, length))
        start = stop
    return tiles


class DualAttentionMatcher(nn.Module):
    """Learned distance between two feature sequences (docs/design.md#matching; the paper's
    Table 2 ablations: docs/design.md#ablations).

    Args:
        dim: element dimension D.
        mode: ``"dual"`` (Eq. 4), ``"inter"`` (alignment only), ``"intra"`` (refinement only,
            position i against position i) or ``"avgpool"`` (distance of mean vectors; the
            AvePool baseline, which has no transform layer: ``transform`` is ``None``).
        attention_scale: factor on the filtered vectors q of Eq. 1, hence on every attention
            logit. 1 is the paper (the scale is learned only through W and BN); a larger value
            starts training from sharper attention (docs/design.md#attention-scale).
        attention_init: ``"random"`` (PyTorch's default for W, as the paper leaves it) or
            ``"identity"`` (W = I, b = 0: attention starts as content similarity, each element
            looking at the elements most like itself; docs/design.md#attention-init).
    """

    def __init__(
        self,
        dim: int,
        mode: str = "dual",
        *,
        attention_scale: float = 1.0,
        attention_init: str = "random",
    ) -> None:
        super().__init__()
        if mode not in MATCHER_MODES:
            raise ValueError(f"mode must be one of {MATCHER_MODES}; got {mode!r}")
        if dim <= 0:
            raise ValueError(f"dim must be positive; got {dim}")
        if not attention_scale > 0:
            raise ValueError(f"attention_scale must be positive; got {attention_scale}")
        if attention_init not in ATTENTION_INITS:
            raise ValueError(
                f"attention_init must be one of {ATTENTION_INITS}; got {attention_init!r}"
            )
        self.dim = dim
        self.mode = mode
        self.attention_scale = float(attention_scale)
        self.transform: nn.Sequential | None = (
            None
            if mode == "avgpool"
            else nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU())
        )
        if self.transform is not None and attention_init == "identity":
            nn.init.eye_(self.transform[0].weight)
            nn.init.zeros_(self.transform[0].bias)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, mode={self.mode!r}, attention_scale={self.attention_scale}"

    # ----------------------------------------------------------------- per-item work
    def _filter(self, *sequences: Tensor) -> list[Tensor]:
        """Eq. 1 on every element of the given sequences, as ONE BatchNorm batch."""
        assert self.transform is not None
        flat = torch.cat([x.reshape(-1, self.dim) for x in sequences])
        filtered = self.transform(flat)
        if self.attention_scale != 1.0:
            filtered = filtered * self.attention_scale
        sizes = [x.shape[0] * x.shape[1] for x in sequences]
        return [f.view_as(x) for f, x in zip(filtered.split(sizes), sequences, strict=True)]

    @staticmethod
    def _weights(query: Tensor, keys: Tensor) -> Tensor:
        """Eq. 2 and the softmax of Eq. 3: (N, Sq, Sk) attention of each query row over keys."""
        return torch.softmax(query @ keys.transpose(1, 2), dim=-1)

    def _filter_valid(self, x: Tensor, valid: Tensor) -> Tensor:
        """Eq. 1 on the ``valid`` (N, S) elements of ``x`` only, so that padding never enters
        a BatchNorm batch statistic; zero at padded positions."""
        assert self.transform is not None
        filtered = self.transform(x[valid])
        out = filtered.new_zeros(*x.shape[:2], filtered.shape[-1])
        out[valid] = filtered
        return out

    @staticmethod
    def _attend(query: Tensor, keys: Tensor, valid: Tensor | None = None) -> Tensor:
        """Eq. 2-3: softmax(query . keys) weighted sum of keys, per item. With ``valid`` (N, S)
        the softmax runs over an item's real keys only, and padded query rows give zero."""
        if valid is None:
            return DualAttentionMatcher._weights(query, keys) @ keys
        logits = (query @ keys.transpose(1, 2)).masked_fill(~valid[:, None, :], -math.inf)
        attended = torch.softmax(logits, dim=-1) @ keys
        return attended.masked_fill(~valid[:, :, None], 0.0)

    def prepare(self, x: Tensor, lengths: Tensor | None = None) -> PreparedSequences:
        """Per-item tensors of ``x`` (N, S, D); in training mode BN uses this batch's statistics.

        With ``lengths`` (N,), ``x`` is a zero-padded batch: item k is ``x[k, :lengths[k]]``, and
        whatever the padding holds is ignored. Padding common to all items is cut off, so equal
        lengths give exactly the tensors of the unpadded batch.
        """
        _check_sequences("x", x, self.dim)
        lengths = _check_lengths("lengths", lengths, x)
        valid = None
        if lengths is not None:
            shortest, longest = int(lengths.min()), int(lengths.max())
            x = x[:, :longest]
            if shortest == longest:
                lengths = None
            else:
                if self.mode == "intra":
                    raise ValueError(
                        "mode 'intra' compares position i with position i and needs equal "
                        f"sequence lengths; got lengths from {shortest} to {longest}"
                    )
                valid = _valid_mask(lengths, longest)
                x = x.masked_fill(~valid[:, :, None], 0.0)
        if self.mode == "avgpool":
            return PreparedSequences(x, lengths=lengths)
        if valid is None:
            (query,) = self._filter(x)
        else:
            query = self._filter_valid(x, valid)
        reference = x if self.mode == "inter" else self._attend(query, x, valid)
        dtype = _accumulation_dtype(reference)
        scaled_query = query * _LOG2E
        gram = None if self.mode == "intra" else (x @ x.transpose(1, 2)).to(dtype)
        return PreparedSequences(
            x=x,
            scaled_query=scaled_query,
            reference=reference,
            gram=gram,
            reference_sqnorm=reference.to(dtype).square().sum(-1),
            max_query_norm=_max_norm(scaled_query.detach()),
            max_x_norm=_max_norm(x.detach()),
            lengths=lengths,
        )

    # ----------------------------------------------------------------- aligned pairs
    def forward(self, xa: Tensor, xb: Tensor) -> Tensor:
        """Distances of aligned pairs: ``xa`` (N, Sa, D), ``xb`` (N, Sb, D) -> (N,)."""
        _check_pairs(xa, xb, self.dim)
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

    def attention(self, xa: Tensor, xb: Tensor) -> PairAttention:
        """The intra- and inter-sequence attention weights of aligned pairs ``xa`` (N, Sa, D),
        ``xb`` (N, Sb, D), as :meth:`forward` computes them (one BatchNorm batch of both
        sides), for looking at where the matcher looks (paper Fig. 8). ``avgpool`` has none."""
        _check_pairs(xa, xb, self.dim)
        if self.mode == "avgpool":
            raise ValueError("mode 'avgpool' compares mean vectors and has no attention weights")
        qa, qb = self._filter(xa, xb)
        refines = self.mode in ("dual", "intra")
        aligns = self.mode in ("dual", "inter")
        return PairAttention(
            intra_a=self._weights(qa, xa) if refines else None,
            intra_b=self._weights(qb, xb) if refines else None,
            inter_ab=self._weights(qa, xb) if aligns else None,
            inter_ba=self._weights(qb, xa) if aligns else None,
        )

    # ----------------------------------------------------------------- all pairs
    def pairwise(
        self,
        xq: Tensor,
        xg: Tensor | None = None,
        *,
        q_lengths: Tensor | None = None,
        g_lengths: Tensor | None = None,
        max_tile_bytes: int | None = None,
    ) -> Tensor:
        """The (Q, G) distance matrix of every ``xq`` (Q, Sq, D) against every ``xg`` (G, Sg, D).

        ``xg=None`` (or ``xg is xq`` with the same lengths) compares a batch with itself and
        prepares it once, as training does. Differentiable when grad is enabled; without grad it
        runs in place.

        ``q_lengths`` / ``g_lengths`` (1-D integer tensors) make ``xq`` / ``xg`` zero-padded
        batches of variable-length sequences: item k is ``x[k, :lengths[k]]``, and the result is
        that of the unpadded sequences (no padded position enters a softmax, a mean, a norm or a
        BatchNorm statistic; whatever the padding holds is ignored). Modes dual, inter and
        avgpool; intra needs equal lengths. Items are sorted by length and tiled so that the
        products stay large and nearly free of padding (docs/design.md#variable-length).
        """
        if xg is None and g_lengths is not None:
            raise ValueError("g_lengths given without xg; pass q_lengths to compare xq with itself")
        prepared_q = self.prepare(xq, q_lengths)
        if xg is None or (xg is xq and g_lengths is q_lengths):
            prepared_g = prepared_q
        else:
            prepared_g = self.prepare(xg, g_lengths)
        return self.pairwise_prepared(prepared_q, prepared_g, max_tile_bytes=max_tile_bytes)

    def pairwise_prepared(
        self,
        query: PreparedSequences,
        gallery: PreparedSequences,
        *,
        max_tile_bytes: int | None = None,
    ) -> Tensor:
        """``pairwise`` on tensors from
        [`prepare`][duatm.models.matching.DualAttentionMatcher.prepare] (e.g. a cached gallery
        index)."""
        if query.lengths is not None or gallery.lengths is not None:
            return self._pairwise_variable(query, gallery, max_tile_bytes)
        num_q, len_q = query.x.shape[:2]
        num_g, len_g = gallery.x.shape[:2]
        if self.mode == "intra" and len_q != len_g:
            raise ValueError(
                f"mode 'intra' needs equal sequence lengths; got {len_q} (query) and {len_g} (gallery)"
            )
        grad = torch.is_grad_enabled()
        dtype = _accumulation_dtype(query.x)
        if num_q == 0 or num_g == 0:
            return torch.zeros(num_q, num_g, device=query.x.device, dtype=dtype)
        tile_q, tile_g = self.tile_shape(
            num_q, num_g, len_q, len_g, query.x.device, dtype, grad, max_tile_bytes
        )
        out = torch.empty(num_q, num_g, device=query.x.device, dtype=dtype)
        attends = self.mode in ("dual", "inter")
        # Without autograd both directions of every tile reuse one pair of product buffers.
        workspace = (
            torch.empty(2, tile_q * len_q * tile_g * len_g, device=query.x.device, dtype=dtype)
            if attends and not grad
            else None
        )
        shift = attends and _logits_may_overflow(query, gallery, dtype)
        # A set against itself (a training batch): the direction b -> a of pair (a, b) is the
        # direction a -> b of pair (b, a), so one direction over the whole grid gives both.
        one_direction = attends and gallery is query
        for q0 in range(0, num_q, tile_q):
            q_tile = query.slice(q0, q0 + tile_q)
            for g0 in range(0, num_g, tile_g):
                g_tile = gallery.slice(g0, g0 + tile_g)
                if one_direction:
                    out[g0 : g0 + tile_g, q0 : q0 + tile_q] = _directed_distance(
                        q_tile, g_tile, workspace, shift
                    )
                else:
                    out[q0 : q0 + tile_q, g0 : g0 + tile_g] = self._tile_distances(
                        q_tile, g_tile, workspace, shift
                    )
        return (out + out.T) / 2 if one_direction else out

    def _pairwise_variable(
        self, query: PreparedSequences, gallery: PreparedSequences, max_tile_bytes: int | None
    ) -> Tensor:
        """``pairwise_prepared`` when some items are shorter than their batch's padded length.

        Both sides are sorted by decreasing length and cut into tiles of about the equal-length
        path's rows (items x padded length), each padded only to its own longest item: the
        products keep their size and carry little padding, and a tile of equal lengths needs
        no masking at all. The query tiles are gathered once (a copy of the query set), each
        gallery tile once; the result is put back in the callers' order.
        """
        device = query.x.device
        dtype = _accumulation_dtype(query.x)
        num_q, num_g = len(query), len(gallery)
        if self.mode == "avgpool":
            return _euclidean(_masked_mean(query), _masked_mean(gallery))
        if num_q == 0 or num_g == 0:
            return torch.zeros(num_q, num_g, device=device, dtype=dtype)
        grad = torch.is_grad_enabled()
        len_q, len_g = query.x.shape[1], gallery.x.shape[1]
        tile_q, tile_g = self.tile_shape(
            num_q, num_g, len_q, len_g, device, dtype, grad, max_tile_bytes
        )
        rows_q, rows_g = tile_q * len_q, tile_g * len_g
        one_direction = gallery is query
        order_q, tiles_q = _sorted_tiles(query, rows_q)
        order_g, tiles_g = (order_q, tiles_q) if one_direction else _sorted_tiles(gallery, rows_g)
        query_tiles = [query.take(order_q[a:b], length) for a, b, length in tiles_q]
        workspace = (
            torch.empty(2, rows_q * rows_g, device=device, dtype=dtype) if not grad else None
        )
        shift = _logits_may_overflow(query, gallery, dtype)
        out = torch.empty(num_q, num_g, device=device, dtype=dtype)
        for g0, g1, length in tiles_g:
            g_tile = gallery.take(order_g[g0:g1], length)
            for (q0, q1, _), q_tile in zip(tiles_q, query_tiles, strict=True):
                if one_direction:
                    out[g0:g1, q0:q1] = _directed_distance(q_tile, g_tile, workspace, shift)
                else:
                    out[q0:q1, g0:g1] = self._tile_distances(q_tile, g_tile, workspace, shift)
        if one_direction:
            out = (out + out.T) / 2
        # out[i, j] compares query order_q[i] with gallery order_g[j]; undo both sorts.
        return out[_inverse(order_q)[:, None], _inverse(order_g)[None, :]]

    def tile_shape(
        self,
        num_q: int,
        num_g: int,
        len_q: int,
        len_g: int,
        device: torch.device,
        dtype: torch.dtype,
        grad: bool,
        max_tile_bytes: int | None = None,
    ) -> tuple[int, int]:
        """(query items, gallery items) of the largest near-square tile whose temporaries fit
        the byte budget; public so that callers can see how ``pairwise`` will split the grid."""
        if max_tile_bytes is None:
            max_tile_bytes = (
                DEFAULT_CUDA_TILE_BYTES if device.type == "cuda" else DEFAULT_CPU_TILE_BYTES
            )
        # Values alive per pair: dual/inter write the logits and cross products (Sq Sg each)
        # into the shared workspace; autograd instead keeps about five such arrays per
        # direction. Intra holds the positionwise dot products and squared distances.
        if self.mode == "avgpool":
            per_pair = 1
        elif self.mode == "intra":
            per_pair = 2 * len_q
        else:
            per_pair = (10 if grad else 2) * len_q * len_g
        bytes_per_pair = per_pair * (torch.finfo(dtype).bits // 8)
        pairs = max(1, max_tile_bytes // bytes_per_pair)
        tile_q = min(num_q, max(1, math.isqrt(pairs)))
        tile_g = min(num_g, max(1, pairs // tile_q))
        return tile_q, tile_g

    def _tile_distances(
        self,
        query: PreparedSequences,
        gallery: PreparedSequences,
        workspace: Tensor | None,
        shift: bool,
    ) -> Tensor:
        if self.mode == "avgpool":
            return _euclidean(query.x.mean(1), gallery.x.mean(1))
        if self.mode == "intra":
            return _positionwise_distance(query, gallery)
        forward = _directed_distance(query, gallery, workspace, shift)  # (Ng, Nq)
        backward = _directed_distance(gallery, query, workspace, shift)  # (Nq, Ng)
        return forward.T / 2 + backward / 2


def _masked_mean(prepared: PreparedSequences) -> Tensor:
    """(N, D) mean of each item's own elements (the padding is zero, so a sum over S works)."""
    if prepared.lengths is None:
        return prepared.x.mean(1)
    return prepared.x.sum(1) / prepared.lengths[:, None].to(prepared.x.dtype)


def _sorted_tiles(
    prepared: PreparedSequences, max_rows: int
) -> tuple[Tensor, list[tuple[int, int, int]]]:
    """Item order by decreasing length (stable) and the tiles of :func:`_length_tiles` over it."""
    if prepared.lengths is None:
        num, size = prepared.x.shape[:2]
        order = torch.arange(num, device=prepared.x.device)
        return order, _length_tiles([size] * num, max_rows)
    order = torch.sort(prepared.lengths, descending=True, stable=True).indices
    return order, _length_tiles(prepared.lengths[order].tolist(), max_rows)


def _inverse(order: Tensor) -> Tensor:
    """The permutation that undoes ``order``."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return inverse


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


def _logits_may_overflow(
    query: PreparedSequences, gallery: PreparedSequences, dtype: torch.dtype
) -> bool:
    """Whether some base-2 logit |q'.x| of a pair may exceed half the exponent range of dtype.

    Below that bound (Cauchy-Schwarz: |q'.x| <= ||q'|| ||x||) exp2 of the raw logits neither
    overflows nor loses a term that matters next to the largest one (float32: 2^+-64 against
    2^-126), so the softmax can skip its max shift, a full pass over the logits.
    """
    if len(query) == 0 or len(gallery) == 0:
        return False
    assert query.max_query_norm is not None and query.max_x_norm is not None
    assert gallery.max_query_norm is not None and gallery.max_x_norm is not None
    bound = torch.maximum(
        query.max_query_norm.max() * gallery.max_x_norm.max(),
        gallery.max_query_norm.max() * query.max_x_norm.max(),
    )
    _, max_exponent = math.frexp(torch.finfo(dtype).max)
    return bool(bound > max_exponent // 2)


def _products(other: Tensor, anchor: Tensor, out: Tensor | None) -> Tensor:
    """``other @ anchor.T`` in the accumulation dtype, written into ``out`` when one is given."""
    if out is None:
        product = other @ anchor.T
        return product.to(_accumulation_dtype(product))
    if other.dtype == anchor.dtype == out.dtype and not torch.is_autocast_enabled(out.device.type):
        return torch.mm(other, anchor.T, out=out)
    return out.copy_(other @ anchor.T)  # autocast: the product in half precision, then upcast


def _directed_distance(
    anchor: PreparedSequences, other: PreparedSequences, workspace: Tensor | None, shift: bool
) -> Tensor:
    """mean_i d_a^i for every (other b, anchor a) pair -> (Nb, Na).

    d_a^i = ||ref_a^i - sum_n P_in x_b^n||, P = softmax_n(q_a^i . x_b^n). The products are laid
    out (Nb, Sb, Na*Sa): each is one large GEMM, the softmax and the row sums run down axis 1
    with the anchor rows as the long contiguous axis (vectorised, no horizontal reductions), and
    the Gram term is one batched product fused with the cross term. With a ``workspace`` (no
    autograd) everything happens in place in its two buffers. ``shift`` subtracts each softmax
    row's max first, needed only where the logits may overflow exp2.
    """
    assert anchor.scaled_query is not None and anchor.reference is not None
    assert anchor.reference_sqnorm is not None and other.gram is not None
    num_a, len_a, dim = anchor.x.shape
    num_b, len_b = other.x.shape[:2]
    rows = num_a * len_a
    if workspace is None:
        buffers: tuple[Tensor | None, Tensor | None] = (None, None)
    else:
        size = num_b * len_b * rows
        buffers = (workspace[0, :size].view(-1, rows), workspace[1, :size].view(-1, rows))
    other_x = other.x.reshape(-1, dim)
    logits = _products(other_x, anchor.scaled_query.reshape(-1, dim), buffers[0])
    cross = _products(other_x, anchor.reference.reshape(-1, dim), buffers[1])
    if other.lengths is not None:
        # Padded keys of b get logit -inf, so exp2 gives them weight exactly 0 (their x rows and
        # Gram rows are zero, so their cross and Gram terms are 0 already).
        padded_keys = (~_valid_mask(other.lengths, len_b)).flatten().nonzero().squeeze(1)
        fill = logits.index_fill_ if workspace is not None else logits.index_fill
        logits = fill(0, padded_keys, -math.inf)
    logits, cross = logits.view(num_b, len_b, rows), cross.view(num_b, len_b, rows)
    if workspace is not None:
        if shift:
            logits.sub_(logits.amax(1, keepdim=True))
        weights = logits.exp2_()
        weights = weights.div_(weights.sum(1, keepdim=True))
        terms = cross.baddbmm_(other.gram, weights, beta=-2).mul_(weights)
    else:
        if shift:
            logits = logits - logits.amax(1, keepdim=True).detach()
        weights = logits.exp2()
        weights = weights / weights.sum(1, keepdim=True)
        terms = torch.baddbmm(cross, other.gram, weights, beta=-2) * weights
    squared = terms.sum(1) + anchor.reference_sqnorm.reshape(1, rows)
    distances = _safe_sqrt(squared).view(num_b, num_a, len_a)
    if anchor.lengths is None:
        return distances.mean(-1)
    # Eq. 5's mean over the anchor's own elements: padded rows (finite, from zero filters and
    # references) are weighted 0.
    valid = _valid_mask(anchor.lengths, len_a).to(distances.dtype)
    return (distances * valid).sum(-1) / anchor.lengths.to(distances.dtype)
