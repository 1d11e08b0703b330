"""`duatm export`: ONNX graphs equal to PyTorch (checked here by onnxruntime, independently of
the command's own check), dynamic batch, metadata, and the one-line error without the extra."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from duatm.api import load
from duatm.cli import main


def test_missing_packages_give_one_line_naming_the_extra(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "'onnxruntime'" in err and "pip install 'duatm[onnx]'" in err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("flip", [False, True])
def test_exported_graphs_equal_pytorch_on_two_batch_sizes(tiny_checkpoint, tmp_path, capsys, flip):
    onnx = pytest.importorskip(
        "onnx", reason="the onnx extra is not installed (pip install 'duatm[onnx]')"
    )
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    out = tmp_path / "model.onnx"
    args = [
        "export",
        "--checkpoint",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--check-batches",
        "2",
        "3",
    ]
    assert main([*args, "--set", f"eval.flip={str(flip).lower()}"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("onnxruntime vs PyTorch") == 4 and "within --tolerance" in printed
    matcher_file = tmp_path / "model.matcher.onnx"
    assert out.is_file() and matcher_file.is_file()

    model = load(tiny_checkpoint, "cpu")
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["fingerprint"] == model.fingerprint and meta["flip"] == str(flip).lower()
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"

    extractor = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    matcher = ort.InferenceSession(str(matcher_file), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(7)
    for n in (1, 5):  # batch sizes other than those used at export and in the command's check
        images = torch.randint(0, 256, (n, 3, 32, 16), dtype=torch.uint8, generator=gen)
        expected = model.extract(images, flip=flip)  # the API's extraction path
        got = extractor.run(None, {"images": images.numpy()})[0]
        assert got.shape == tuple(expected.shape)
        assert np.abs(got - expected.numpy()).max() < 1e-5
        other = model.extract(
            torch.randint(0, 256, (n, 3, 32, 16), dtype=torch.uint8, generator=gen)
        )
        pairwise = model.distance(expected, other)  # the tiled all-pairs path
        got = matcher.run(None, {"xa": expected.numpy(), "xb": other.numpy()})[0]
        assert np.abs(got - pairwise.diagonal().numpy()).max() < 1e-5
