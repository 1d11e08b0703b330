"""DualAttentionMatcher against an independent pair-by-pair float64 reading of Eq. 1-5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from duatm.models.matching import MATCHER_MODES, DualAttentionMatcher


def unit_sequences(n: int, length: int, dim: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, length, dim, generator=g, dtype=dtype), dim=-1)


def randomised_matcher(dim: int, mode: str, seed: int = 0) -> DualAttentionMatcher:
    """A float64 matcher in eval mode with random weights AND random BatchNorm statistics."""
    torch.manual_seed(seed)
    matcher = DualAttentionMatcher(dim, mode).double().eval()
    if matcher.transform is not None:
        bn = matcher.transform[1]
        with torch.no_grad():
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_(1, 0.5)
            bn.bias.normal_(0, 0.5)
    return matcher


def reference_distance(xa: np.ndarray, xb: np.ndarray, matcher: DualAttentionMatcher) -> float:
    """One pair, element by element, straight from the paper's equations (numpy float64)."""
    if matcher.mode == "avgpool":
        return float(np.linalg.norm(xa.mean(0) - xb.mean(0)))
    linear, bn, _ = matcher.transform
    w = linear.weight.detach().numpy()
    b = linear.bias.detach().numpy()
    mean, var = bn.running_mean.numpy(), bn.running_var.numpy()
    gamma, beta = bn.weight.detach().numpy(), bn.bias.detach().numpy()

    def filt(x):  # Eq. 1
        return np.maximum(0.0, gamma * (w @ x + b - mean) / np.sqrt(var + bn.eps) + beta)

    def attend(q, keys):  # Eq. 2-3
        logits = np.array([q @ k for k in keys])
        p = np.exp(logits - logits.max())
        p /= p.sum()
        return sum(pi * k for pi, k in zip(p, keys, strict=True))

    def directed(xs, ys):
        ds = []
        for i, x in enumerate(xs):
            q = filt(x)
            refined = attend(q, xs)
            if matcher.mode == "intra":
                ds.append(np.linalg.norm(refined - attend(filt(ys[i]), ys)))
            elif matcher.mode == "inter":
                ds.append(np.linalg.norm(x - attend(q, ys)))
            else:  # dual, Eq. 4
                ds.append(np.linalg.norm(refined - attend(q, ys)))
        return np.mean(ds)

    return directed(xa, xb) / 2 + directed(xb, xa) / 2  # Eq. 5


def lengths(mode: str) -> tuple[int, int]:
    return (5, 5) if mode == "intra" else (4, 7)


@pytest.mark.parametrize("mode", MATCHER_MODES)
def test_forward_and_pairwise_match_independent_reference(mode: str) -> None:
    dim = 12
    matcher = randomised_matcher(dim, mode)
    len_q, len_g = lengths(mode)
    xq, xg = unit_sequences(3, len_q, dim, 1), unit_sequences(4, len_g, dim, 2)
    expected = np.array(
        [[reference_distance(a.numpy(), b.numpy(), matcher) for b in xg] for a in xq]
    )
    with torch.no_grad():
        pairwise = matcher.pairwise(xq, xg).numpy()
        forward = matcher(xq.repeat_interleave(len(xg), 0), xg.repeat(len(xq), 1, 1))
    np.testing.assert_allclose(pairwise, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(forward.view(len(xq), len(xg)).numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", MATCHER_MODES)
def test_pairwise_is_independent_of_tile_budget_and_symmetric(mode: str) -> None:
    dim = 16
    matcher = DualAttentionMatcher(dim, mode).eval()
    xq = unit_sequences(7, 6, dim, 3, dtype=torch.float32)
    xg = unit_sequences(9, 6, dim, 4, dtype=torch.float32)
    with torch.no_grad():
        full = matcher.pairwise(xq, xg, max_tile_bytes=2**30)
        for budget in (1, 5_000, 40_000):  # 1 byte forces 1 x 1 tiles
            torch.testing.assert_close(matcher.pairwise(xq, xg, max_tile_bytes=budget), full)
        torch.testing.assert_close(matcher.pairwise(xg, xq), full.T, atol=1e-6, rtol=0)
        forward = matcher(xq.repeat_interleave(9, 0), xg.repeat(7, 1, 1)).view(7, 9)
        torch.testing.assert_close(full, forward, atol=2e-5, rtol=0)
        if mode != "inter":  # inter compares x^i with an average of X: dist(X, X) > 0 there
            # Self-pairs: the Gram expansion cancels to float32 rounding noise before the sqrt.
            assert matcher.pairwise(xq).diagonal().abs().max() < 2e-3


@pytest.mark.parametrize("mode", ["dual", "inter"])
@pytest.mark.parametrize("budget", [1, 5_000, 2**30])
def test_self_comparison_computes_one_direction_and_matches_two(mode: str, budget: int) -> None:
    """pairwise(x) (a batch against itself, one attention direction per ordered pair) gives the
    distances and gradients of the general two-direction path on a copy of x."""
    matcher = randomised_matcher(8, mode, seed=5).double().eval()
    x = unit_sequences(6, 5, 8, 11).requires_grad_()
    copy = x.detach().clone().requires_grad_()
    one = matcher.pairwise(x, max_tile_bytes=budget)
    two = matcher.pairwise(x, copy, max_tile_bytes=budget)
    torch.testing.assert_close(one, two, atol=1e-12, rtol=0)
    assert torch.equal(one, one.T)
    weights = torch.rand(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (grad_one,) = torch.autograd.grad((one * weights).sum(), x)
    grad_x, grad_copy = torch.autograd.grad((two * weights).sum(), (x, copy))
    torch.testing.assert_close(grad_one, grad_x + grad_copy, atol=1e-12, rtol=0)


def test_intra_mode_rejects_unequal_lengths() -> None:
    matcher = DualAttentionMatcher(8, "intra").eval()
    with pytest.raises(ValueError, match="equal sequence lengths"):
        matcher(
            unit_sequences(2, 3, 8, 0, torch.float32), unit_sequences(2, 4, 8, 1, torch.float32)
        )
    with pytest.raises(ValueError, match="equal sequence lengths"):
        matcher.pairwise(
            unit_sequences(2, 3, 8, 0, torch.float32), unit_sequences(2, 4, 8, 1, torch.float32)
        )


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        DualAttentionMatcher(8, "max")
    matcher = DualAttentionMatcher(8)
    with pytest.raises(ValueError, match=r"xa must have shape \(N, S, 8\)"):
        matcher(torch.zeros(2, 3, 5), torch.zeros(2, 3, 8))
    with pytest.raises(ValueError, match="same number of pairs"):
        matcher(torch.zeros(2, 3, 8), torch.zeros(3, 3, 8))


def test_contract_transform_layer() -> None:
    transform = DualAttentionMatcher(8).transform
    assert [type(m) for m in transform] == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU]
    assert DualAttentionMatcher(8, "avgpool").transform is None


@pytest.mark.parametrize("mode", ["dual", "inter", "intra"])
def test_gradients_reach_transform_bn_and_inputs(mode: str) -> None:
    """float64 gradcheck of forward and pairwise w.r.t. the inputs, W, b and BN's gamma, beta.

    gradcheck perturbs its inputs in place, so passing the matcher's own parameters checks them.
    """
    matcher = randomised_matcher(5, mode, seed=4)
    params = tuple(matcher.parameters())
    assert len(params) == 4  # W, b, BN weight, BN bias
    xq = unit_sequences(2, 3, 5, 5).requires_grad_(True)
    xg = unit_sequences(3, 3, 5, 6).requires_grad_(True)

    def pairwise(xq, xg, *_params):
        return matcher.pairwise(xq, xg, max_tile_bytes=500)  # several tiles

    def forward(xa, xb, *_params):
        return matcher(xa, xb)

    assert torch.autograd.gradcheck(pairwise, (xq, xg, *params), eps=1e-6, atol=1e-6)
    xa = xq.detach().repeat_interleave(3, 0).requires_grad_(True)
    xb = xg.detach().repeat(2, 1, 1).requires_grad_(True)
    assert torch.autograd.gradcheck(forward, (xa, xb, *params), eps=1e-6, atol=1e-6)
    grads = torch.autograd.grad(pairwise(xq, xg).sum(), (xq, xg, *params))
    assert all(g.abs().sum() > 0 for g in grads)


def test_training_mode_pairwise_uses_batch_statistics_once() -> None:
    """In training, pairwise(x) filters the whole batch as one BN batch and updates BN once."""
    matcher = DualAttentionMatcher(6).train()
    x = unit_sequences(4, 3, 6, 7, dtype=torch.float32)
    dist = matcher.pairwise(x)
    assert dist.requires_grad and dist.shape == (4, 4)
    assert matcher.transform[1].num_batches_tracked.item() == 1
    expected = x.reshape(-1, 6) @ matcher.transform[0].weight.T + matcher.transform[0].bias
    torch.testing.assert_close(matcher.transform[1].running_mean, 0.1 * expected.mean(0).detach())


@pytest.mark.parametrize("mode", MATCHER_MODES)
def test_bf16_autocast_stays_close_to_float32(mode: str) -> None:
    matcher = DualAttentionMatcher(16, mode).eval()
    xq, xg = unit_sequences(3, 5, 16, 8, torch.float32), unit_sequences(4, 5, 16, 9, torch.float32)
    with torch.no_grad():
        exact = matcher.pairwise(xq, xg)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = matcher.pairwise(xq, xg)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, exact, atol=2e-2, rtol=0)


def test_prepared_gallery_can_be_reused() -> None:
    matcher = DualAttentionMatcher(8).eval()
    xq, xg = unit_sequences(3, 4, 8, 10, torch.float32), unit_sequences(5, 4, 8, 11, torch.float32)
    with torch.no_grad():
        gallery = matcher.prepare(xg)
        torch.testing.assert_close(
            matcher.pairwise_prepared(matcher.prepare(xq), gallery), matcher.pairwise(xq, xg)
        )


@pytest.mark.parametrize("mode", MATCHER_MODES)
def test_empty_query_or_gallery_gives_an_empty_matrix(mode: str) -> None:
    matcher = DualAttentionMatcher(8, mode).eval()
    some = unit_sequences(3, 4, 8, 0, torch.float32)
    none = some[:0]
    with torch.no_grad():
        assert matcher.pairwise(some, none).shape == (3, 0)
        assert matcher.pairwise(none, some).shape == (0, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", MATCHER_MODES)
def test_cuda_pairwise_matches_cpu(mode: str) -> None:
    matcher = randomised_matcher(16, mode, seed=2).float().eval()
    xq = unit_sequences(5, 6, 16, 0, torch.float32)
    xg = unit_sequences(7, 6, 16, 1, torch.float32)
    with torch.no_grad():
        cpu = matcher.pairwise(xq, xg)
        gpu = matcher.cuda().pairwise(xq.cuda(), xg.cuda(), max_tile_bytes=5_000)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


# ----------------------------------------------------------------- variable-length sequences
VARIABLE_MODES = ("dual", "inter", "avgpool")


def padded_batch(
    sequences: list[torch.Tensor], size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded batch in the collate's layout, but with large random garbage in the padding
    (the matcher must ignore it), and the lengths."""
    g = torch.Generator().manual_seed(seed)
    dim, dtype = sequences[0].shape[-1], sequences[0].dtype
    batch = 50 * torch.randn(len(sequences), size, dim, generator=g, dtype=dtype)
    for k, seq in enumerate(sequences):
        batch[k, : len(seq)] = seq
    return batch, torch.tensor([len(seq) for seq in sequences])


def ragged(lengths: list[int], dim: int, seed: int, dtype=torch.float64) -> list[torch.Tensor]:
    return [unit_sequences(1, n, dim, seed * 100 + k, dtype)[0] for k, n in enumerate(lengths)]


@pytest.mark.parametrize("mode", VARIABLE_MODES)
@pytest.mark.parametrize("budget", [None, 1, 3_000])  # 1 byte: one item per tile
def test_variable_length_pairwise_equals_reference_on_unpadded_sequences(
    mode: str, budget: int | None
) -> None:
    dim = 6
    matcher = randomised_matcher(dim, mode, seed=3)
    queries = ragged([4, 1, 6, 3, 6], dim, 1)
    gallery = ragged([2, 7, 5, 7, 1, 3, 4], dim, 2)
    xq, q_lengths = padded_batch(queries, 8, 3)
    xg, g_lengths = padded_batch(gallery, 9, 4)
    expected = np.array(
        [[reference_distance(a.numpy(), b.numpy(), matcher) for b in gallery] for a in queries]
    )
    with torch.no_grad():
        got = matcher.pairwise(
            xq, xg, q_lengths=q_lengths, g_lengths=g_lengths, max_tile_bytes=budget
        )
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", VARIABLE_MODES)
def test_variable_length_self_comparison_and_gradients(mode: str) -> None:
    """A padded batch against itself (training's path) gives the reference distances, and the
    padding receives no gradient."""
    dim = 5
    matcher = randomised_matcher(dim, mode, seed=6)
    items = ragged([3, 5, 2, 5, 4, 1], dim, 7)
    x, lengths = padded_batch(items, 6, 8)
    x.requires_grad_(True)
    expected = np.array(
        [[reference_distance(a.numpy(), b.numpy(), matcher) for b in items] for a in items]
    )
    # Self-pairs: the square root is clamped at 1e-12 (its gradient at 0 is infinite).
    np.fill_diagonal(expected, np.maximum(np.diag(expected), 1e-6))
    for budget in (None, 1):
        dist = matcher.pairwise(x, q_lengths=lengths, max_tile_bytes=budget)
        np.testing.assert_allclose(dist.detach().numpy(), expected, rtol=0, atol=1e-12)
        (grad,) = torch.autograd.grad(dist.sum(), x)
        padding = torch.arange(6)[None, :] >= lengths[:, None]
        assert grad[padding].abs().max() == 0
        assert grad[~padding].abs().sum() > 0


@pytest.mark.parametrize("mode", ["dual", "inter"])
def test_variable_length_gradients_equal_unpadded_gradients(mode: str) -> None:
    """Gradients w.r.t. the real elements and the transform's weights are those of the
    unpadded computation (here: each pair on its own, without padding)."""
    dim = 5
    matcher = randomised_matcher(dim, mode, seed=9)
    queries, gallery = ragged([2, 4, 3], dim, 10), ragged([4, 1], dim, 11)
    xq, q_lengths = padded_batch(queries, 5, 12)
    xg, g_lengths = padded_batch(gallery, 4, 13)
    xq.requires_grad_(True)
    xg.requires_grad_(True)
    weights = torch.rand(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    padded = matcher.pairwise(xq, xg, q_lengths=q_lengths, g_lengths=g_lengths, max_tile_bytes=1)
    grads = torch.autograd.grad((padded * weights).sum(), (xq, xg, *matcher.parameters()))
    leaves = [q.clone().requires_grad_(True) for q in queries]
    g_leaves = [g.clone().requires_grad_(True) for g in gallery]
    total = sum(
        weights[i, j] * matcher.pairwise(leaves[i][None], g_leaves[j][None])[0, 0]
        for i in range(3)
        for j in range(2)
    )
    expected = torch.autograd.grad(total, (*leaves, *g_leaves, *matcher.parameters()))
    for k, n in enumerate(q_lengths.tolist()):
        torch.testing.assert_close(grads[0][k, :n], expected[k], atol=1e-12, rtol=0)
    for k, n in enumerate(g_lengths.tolist()):
        torch.testing.assert_close(grads[1][k, :n], expected[3 + k], atol=1e-12, rtol=0)
    for got, want in zip(grads[2:], expected[5:], strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", MATCHER_MODES)
def test_full_lengths_give_exactly_the_equal_length_results(mode: str) -> None:
    """Lengths that are all S take the equal-length path: the same numbers, bit for bit; equal
    lengths below S are the unpadded batch (intra included)."""
    matcher = randomised_matcher(8, mode, seed=1).float()
    xq = unit_sequences(5, 6, 8, 1, torch.float32)
    xg = unit_sequences(7, 6, 8, 2, torch.float32)
    with torch.no_grad():
        plain = matcher.pairwise(xq, xg)
        full = matcher.pairwise(
            xq, xg, q_lengths=torch.full((5,), 6), g_lengths=torch.full((7,), 6)
        )
        assert torch.equal(plain, full)
        pq, q_lengths = padded_batch(list(xq), 9, 0)
        pg, g_lengths = padded_batch(list(xg), 10, 1)
        assert torch.equal(
            matcher.pairwise(pq, pg, q_lengths=q_lengths, g_lengths=g_lengths), plain
        )


def test_variable_length_training_batch_statistics_use_real_elements_only() -> None:
    matcher = DualAttentionMatcher(6).train()
    items = ragged([2, 5, 3], 6, 4, torch.float32)
    x, lengths = padded_batch(items, 5, 5)
    matcher.pairwise(x, q_lengths=lengths)
    linear = matcher.transform[0]
    real = torch.cat(items) @ linear.weight.T + linear.bias
    torch.testing.assert_close(matcher.transform[1].running_mean, 0.1 * real.mean(0).detach())
    torch.testing.assert_close(
        matcher.transform[1].running_var, 0.9 + 0.1 * real.var(0, unbiased=True).detach()
    )


def test_variable_length_errors_are_clear() -> None:
    x = unit_sequences(3, 4, 8, 0, torch.float32)
    with pytest.raises(ValueError, match=r"intra.*equal sequence lengths.*from 2 to 4"):
        DualAttentionMatcher(8, "intra").pairwise(x, x, q_lengths=torch.tensor([2, 4, 3]))
    matcher = DualAttentionMatcher(8).eval()
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 4\].*from 0 to 3"):
        matcher.pairwise(x, x, q_lengths=torch.tensor([0, 3, 3]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 4\].*from 2 to 5"):
        matcher.pairwise(x, x, g_lengths=torch.tensor([2, 5, 3]))
    with pytest.raises(ValueError, match="one length per item"):
        matcher.pairwise(x, x, q_lengths=torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="must hold integers"):
        matcher.pairwise(x, x, q_lengths=torch.tensor([2.0, 3.0, 1.0]))
    with pytest.raises(ValueError, match="g_lengths given without xg"):
        matcher.pairwise(x, g_lengths=torch.tensor([2, 3, 1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", VARIABLE_MODES)
def test_cuda_variable_length_pairwise_matches_cpu(mode: str) -> None:
    matcher = randomised_matcher(16, mode, seed=2).float().eval()
    xq, q_lengths = padded_batch(ragged([5, 2, 6, 1], 16, 3, torch.float32), 6, 0)
    xg, g_lengths = padded_batch(ragged([3, 6, 4, 6, 2], 16, 4, torch.float32), 7, 1)
    with torch.no_grad():
        cpu = matcher.pairwise(xq, xg, q_lengths=q_lengths, g_lengths=g_lengths)
        gpu = matcher.cuda().pairwise(
            xq.cuda(),
            xg.cuda(),
            q_lengths=q_lengths.cuda(),
            g_lengths=g_lengths,
            max_tile_bytes=5_000,
        )
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
