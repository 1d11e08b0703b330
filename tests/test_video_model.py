"""The video extractor (frame CNN + bidirectional recurrent layer) and DuATM on clips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from duatm.data.transforms import normalise
from duatm.models.duatm import DuATM
from duatm.models.extractor import VideoSequenceExtractor


class PixelMap(nn.Module):
    """A stand-in backbone: a 1x1 convolution with known weights and a ReLU, so the map (and
    its global average) is computable by hand; records the batch sizes it is called with."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 1)
        self.out_channels = channels
        self.calls: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append(len(x))
        return F.relu(self.conv(x))


def manual_gru(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """The GRU equations (Cho et al. 2014, as PyTorch states them), step by step: (T, C) -> (T, H)."""
    hidden = w_hh.shape[1]
    w_ir, w_iz, w_in = w_ih.split(hidden)
    w_hr, w_hz, w_hn = w_hh.split(hidden)
    b_ir, b_iz, b_in = b_ih.split(hidden)
    b_hr, b_hz, b_hn = b_hh.split(hidden)
    h = torch.zeros(hidden, dtype=x.dtype)
    out = []
    for x_t in x:
        r = torch.sigmoid(w_ir @ x_t + b_ir + w_hr @ h + b_hr)
        z = torch.sigmoid(w_iz @ x_t + b_iz + w_hz @ h + b_hz)
        n = torch.tanh(w_in @ x_t + b_in + r * (w_hn @ h + b_hn))
        h = (1 - z) * n + z * h
        out.append(h)
    return torch.stack(out)


def extractor(rnn: str = "gru", chunk: int = 64, channels: int = 5, dim: int = 4):
    torch.manual_seed(0)
    return VideoSequenceExtractor(
        PixelMap(channels), dim, rnn=rnn, hidden=3, frame_chunk=chunk
    ).double()


def clips(batch: int, frames: int, seed: int, dtype=torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 3, 4, 2, generator=g, dtype=dtype)


def test_sequence_is_projected_bidirectional_gru_states_of_pooled_frames():
    model = extractor().eval()
    x = clips(2, 5, 1)
    with torch.no_grad():
        got = model(x)
    assert got.shape == (2, 5, 4)
    conv, gru, embed = model.backbone.conv, model.recurrent, model.embed
    for b in range(2):
        # Frame vectors: the 1x1 conv map, ReLU, averaged over the 4 x 2 positions.
        maps = torch.einsum("ck,tkhw->tchw", conv.weight[:, :, 0, 0], x[b])
        frames = F.relu(maps + conv.bias[None, :, None, None]).mean((2, 3))
        forward = manual_gru(
            frames, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0
        )
        backward = manual_gru(
            frames.flip(0),
            gru.weight_ih_l0_reverse,
            gru.weight_hh_l0_reverse,
            gru.bias_ih_l0_reverse,
            gru.bias_hh_l0_reverse,
        ).flip(0)
        projected = torch.cat([forward, backward], 1) @ embed.weight.T + embed.bias
        expected = projected / projected.norm(dim=1, keepdim=True)
        torch.testing.assert_close(got[b], expected.detach(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_padded_batch_equals_each_clip_alone_and_padding_is_zero(rnn: str):
    model = extractor(rnn).eval()
    lengths = torch.tensor([3, 6, 1, 4])
    batch = 1e3 * clips(4, 6, 2)  # garbage everywhere; the real frames are written below
    alone = [clips(1, int(n), 10 + k) for k, n in enumerate(lengths)]
    for k, clip in enumerate(alone):
        batch[k, : clip.shape[1]] = clip[0]
    with torch.no_grad():
        padded = model(batch, lengths)
        for k, clip in enumerate(alone):
            n = clip.shape[1]
            torch.testing.assert_close(padded[k, :n], model(clip)[0], atol=1e-12, rtol=0)
            assert torch.all(padded[k, n:] == 0)
        flipped = model.mirror_averaged(batch, lengths)
        for k, clip in enumerate(alone):
            n = clip.shape[1]
            torch.testing.assert_close(
                flipped[k, :n], model.mirror_averaged(clip)[0], atol=1e-12, rtol=0
            )
            assert torch.all(flipped[k, n:] == 0)


def test_eval_runs_the_backbone_in_chunks_with_the_same_result_and_train_in_one_call():
    model = extractor(chunk=4).eval()
    x = clips(3, 5, 3)
    with torch.no_grad():
        chunked = model(x)
        assert max(model.backbone.calls) <= 4 and sum(model.backbone.calls) == 15
        model.frame_chunk = 1000
        torch.testing.assert_close(model(x), chunked, atol=1e-12, rtol=0)
    model.backbone.calls.clear()
    model.frame_chunk = 4
    model.train()
    model(x, torch.tensor([5, 2, 4]))
    assert model.backbone.calls == [11]  # the real frames only, in one BatchNorm batch


def test_uint8_clips_are_normalised_chunk_by_chunk():
    model = extractor(chunk=2).float().eval()
    pixels = torch.randint(0, 256, (2, 3, 3, 4, 2), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), model(normalise(pixels)))


def test_any_length_from_one_frame():
    model = extractor().eval()
    with torch.no_grad():
        for frames in (1, 2, 9):
            seqs = model(clips(2, frames, frames))
            assert seqs.shape == (2, frames, 4)
            torch.testing.assert_close(seqs.norm(dim=-1), torch.ones(2, frames, dtype=seqs.dtype))


def test_mirror_average_flips_every_frame_and_renormalises():
    model = extractor().eval()
    x = clips(2, 4, 5)
    with torch.no_grad():
        expected = F.normalize(model(x) + model(x.flip(-1)), dim=-1)
        torch.testing.assert_close(model.mirror_averaged(x), expected)
        symmetric = torch.cat([x[..., :1], x[..., :1]], -1)  # width 2, both columns equal
        torch.testing.assert_close(model.mirror_averaged(symmetric), model(symmetric))


def test_bad_inputs_are_named():
    model = extractor()
    with pytest.raises(ValueError, match=r"clips of shape \(B, T, 3, H, W\)"):
        model(torch.zeros(2, 3, 4, 2))
    with pytest.raises(ValueError, match="no frames"):
        model(torch.zeros(2, 0, 3, 4, 2))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 3\]"):
        model(torch.zeros(2, 3, 3, 4, 2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="one entry per clip"):
        model(torch.zeros(2, 3, 3, 4, 2), torch.tensor([3]))
    with pytest.raises(ValueError, match="rnn must be one of gru, lstm"):
        VideoSequenceExtractor(PixelMap(3), 4, rnn="rnn")


def test_video_duatm_trains_and_extracts_through_the_same_contract():
    torch.manual_seed(0)
    model = DuATM(
        "densenet_tiny", dim=8, num_classes=3, kind="video", rnn="lstm", drop_last_pool=True
    )
    assert isinstance(model.extractor, VideoSequenceExtractor)
    pixels = torch.randint(0, 256, (4, 3, 3, 32, 16), dtype=torch.uint8)
    seqs = model(normalise(pixels))
    assert seqs.shape == (4, 3, 8)
    model.pairwise_distances(seqs).sum().backward()
    assert all(p.grad is not None for p in model.backbone_parameters())
    head = {id(p) for p in model.head_parameters()}
    assert all(id(p) in head for p in model.extractor.recurrent.parameters())
    model.freeze_backbone()
    model.eval()
    lengths = torch.tensor([3, 1, 2, 3])
    extracted = model.extract_sequences(pixels, lengths=lengths, flip=True)
    assert extracted.shape == (4, 3, 8) and torch.all(extracted[1, 1:] == 0)
    with torch.no_grad():
        torch.testing.assert_close(
            extracted[0], model.extractor.mirror_averaged(normalise(pixels[:1]))[0]
        )
    with pytest.raises(ValueError, match="kind must be one of image, video"):
        DuATM("densenet_tiny", dim=8, num_classes=3, kind="audio")
    image_model = DuATM("densenet_tiny", dim=8, num_classes=3)
    with pytest.raises(ValueError, match="lengths are for video clips"):
        image_model.extract_sequences(pixels[:, 0], lengths=lengths)
