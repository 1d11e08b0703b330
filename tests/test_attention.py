"""DualAttentionMatcher.attention: the weights forward() uses, exposed for looking at them."""

from __future__ import annotations

import pytest
import torch

from duatm.models.matching import DualAttentionMatcher


def unit(*shape: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def trained_matcher(mode: str, dim: int = 8) -> DualAttentionMatcher:
    """A matcher with non-trivial BN statistics and affine terms, in eval mode."""
    torch.manual_seed(0)
    matcher = DualAttentionMatcher(dim, mode).double()
    bn = matcher.transform[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 3.0)
        bn.bias.uniform_(-0.5, 0.5)
    return matcher.eval()


def by_hand(matcher: DualAttentionMatcher, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Eq. 1-2 and the softmax of Eq. 3 from the layer's parameters (eval-mode BN)."""
    linear, bn, _ = matcher.transform
    z = x @ linear.weight.T + linear.bias
    q = torch.relu(
        (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    )
    logits = torch.einsum("nid,njd->nij", q, keys)
    return torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)


@pytest.mark.parametrize("mode", ["dual", "inter", "intra"])
def test_weights_equal_eq_1_to_3_by_hand(mode: str) -> None:
    matcher = trained_matcher(mode)
    sa = 5
    sb = 5 if mode == "intra" else 7
    xa, xb = unit(3, sa, 8), unit(3, sb, 8)
    with torch.no_grad():
        att = matcher.attention(xa, xb)
    refines, aligns = mode in ("dual", "intra"), mode in ("dual", "inter")
    expected = {
        "intra_a": by_hand(matcher, xa, xa) if refines else None,
        "intra_b": by_hand(matcher, xb, xb) if refines else None,
        "inter_ab": by_hand(matcher, xa, xb) if aligns else None,
        "inter_ba": by_hand(matcher, xb, xa) if aligns else None,
    }
    for name, want in expected.items():
        got = getattr(att, name)
        if want is None:
            assert got is None, name
        else:
            torch.testing.assert_close(got, want, msg=name)
            torch.testing.assert_close(got.sum(-1), torch.ones(got.shape[:2], dtype=got.dtype))


@pytest.mark.parametrize("mode", ["dual", "inter", "intra"])
@pytest.mark.parametrize("training", [False, True])
def test_distances_rebuilt_from_the_weights_equal_forward(mode: str, training: bool) -> None:
    """Eq. 3-5 applied to the returned weights give forward()'s distances, in both BN modes
    (training: both sides form one BatchNorm batch, as in forward)."""
    matcher = trained_matcher(mode).train(training)
    sb = 6 if mode == "intra" else 9
    xa, xb = unit(4, 6, 8), unit(4, sb, 8)
    with torch.no_grad():
        att = matcher.attention(xa, xb)
        distance = matcher(xa, xb)
    if mode == "intra":
        assert att.intra_a is not None and att.intra_b is not None
        d = torch.linalg.vector_norm(att.intra_a @ xa - att.intra_b @ xb, dim=-1).mean(-1)
    else:
        assert att.inter_ab is not None and att.inter_ba is not None
        ref_a = xa if mode == "inter" else att.intra_a @ xa
        ref_b = xb if mode == "inter" else att.intra_b @ xb
        d_a = torch.linalg.vector_norm(ref_a - att.inter_ab @ xb, dim=-1).mean(-1)
        d_b = torch.linalg.vector_norm(ref_b - att.inter_ba @ xa, dim=-1).mean(-1)
        d = d_a / 2 + d_b / 2
    torch.testing.assert_close(d, distance)


def test_avgpool_has_no_attention_and_bad_pairs_are_named() -> None:
    with pytest.raises(ValueError, match="avgpool"):
        DualAttentionMatcher(8, "avgpool").attention(unit(1, 4, 8), unit(1, 4, 8))
    matcher = trained_matcher("dual")
    with pytest.raises(ValueError, match="same number of pairs"):
        matcher.attention(unit(2, 4, 8), unit(3, 4, 8))
    with pytest.raises(ValueError, match=r"xb must have shape \(N, S, 8\)"):
        matcher.attention(unit(2, 4, 8), unit(2, 4, 5))
