"""A trained model as two ONNX graphs, checked against PyTorch with onnxruntime.

* the **extractor**: uint8 RGB images (N, 3, H, W) at the model's input size -> float32
  sequences (N, S, D); the normalisation (and flip averaging when the config evaluates with it)
  is inside the graph, so a deployment feeds raw pixels as the loaders hand them over;
* the **matcher**: the distance of aligned pairs (N, Sa, D), (N, Sb, D) -> (N,), the
  :meth:`DualAttentionMatcher.forward <duatm.models.matching.DualAttentionMatcher.forward>`
  reference computation (all pairs of two sets are its inputs repeated; the tiled
  ``pairwise`` stays a PyTorch-side optimisation).

N (and Sa, Sb) are dynamic axes. Why the TorchScript-based exporter (``dynamo=False``): it
exports these graphs in seconds, where the torch.export-based one needed about a minute for the
tiny test model on two loaded cores (and the extra package onnxscript); it is deprecated since
PyTorch 2.9 but present in every version the package pins allow.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from duatm import __version__
from duatm.api import TrainedModel
from duatm.atomic import atomic_open
from duatm.data.transforms import normalise
from duatm.extras import require
from duatm.models.duatm import DuATM
from duatm.models.matching import DualAttentionMatcher

#: ONNX operator set of the exported graphs (onnxruntime >= 1.14 runs it).
OPSET = 17
EXTRACTOR_INPUTS, EXTRACTOR_OUTPUTS = ["images"], ["sequences"]
MATCHER_INPUTS, MATCHER_OUTPUTS = ["xa", "xb"], ["distance"]


class ImageSequenceGraph(nn.Module):
    """uint8 images (N, 3, H, W) -> sequences (N, S, D): normalisation, then the extractor
    (averaged with the mirror image when ``flip``), exactly as evaluation extracts."""

    def __init__(self, model: DuATM, flip: bool) -> None:
        super().__init__()
        self.extractor = model.extractor
        self.flip = flip

    def forward(self, images: Tensor) -> Tensor:
        pixels = normalise(images)
        return self.extractor.mirror_averaged(pixels) if self.flip else self.extractor(pixels)


class PairDistanceGraph(nn.Module):
    """(N, Sa, D), (N, Sb, D) -> (N,) DuATM distances of aligned pairs."""

    def __init__(self, matcher: DualAttentionMatcher) -> None:
        super().__init__()
        self.matcher = matcher

    def forward(self, xa: Tensor, xb: Tensor) -> Tensor:
        return self.matcher(xa, xb)


@dataclass(frozen=True)
class GraphCheck:
    """onnxruntime against PyTorch on one random batch: the largest absolute difference."""

    graph: str  # "extractor" or "matcher"
    batch: int
    max_abs_diff: float


def matcher_path_for(out: str | Path) -> Path:
    """Default file of the matcher graph beside the extractor's: model.onnx -> model.matcher.onnx."""
    out = Path(out)
    return out.with_name(f"{out.stem}.matcher{out.suffix or '.onnx'}")


def export_onnx(
    model: TrainedModel, out: str | Path, matcher_out: str | Path | None = None
) -> tuple[Path, Path]:
    """Write the extractor graph to ``out`` and the matcher graph to ``matcher_out`` (default
    :func:`matcher_path_for`), atomically, with the model's metadata; return both paths."""
    onnx = require("onnx", "onnx", "ONNX export")
    out = Path(out)
    matcher_out = matcher_path_for(out) if matcher_out is None else Path(matcher_out)
    module = model.module.cpu().eval()
    d = model.config.data
    images = torch.zeros(2, 3, d.height, d.width, dtype=torch.uint8)
    with torch.no_grad():
        sequences = module.extractor(normalise(images))
    metadata = {
        "duatm_version": __version__,
        "fingerprint": model.fingerprint,
        "checkpoint": str(model.checkpoint),
        "input": f"uint8 RGB (N, 3, {d.height}, {d.width})",
        "flip": str(model.config.eval.flip).lower(),
        "mode": model.config.model.mode,
        "sequence": f"S = {sequences.shape[1]}, D = {sequences.shape[2]}",
    }
    graphs = (
        (
            ImageSequenceGraph(module, model.config.eval.flip),
            (images,),
            EXTRACTOR_INPUTS,
            EXTRACTOR_OUTPUTS,
            {"images": {0: "batch"}, "sequences": {0: "batch"}},
            out,
        ),
        (
            PairDistanceGraph(module.matcher),
            (sequences, sequences.flip(0)),
            MATCHER_INPUTS,
            MATCHER_OUTPUTS,
            {"xa": {0: "pairs", 1: "sa"}, "xb": {0: "pairs", 1: "sb"}, "distance": {0: "pairs"}},
            matcher_out,
        ),
    )
    try:
        for graph, args, inputs, outputs, axes, path in graphs:
            buffer = io.BytesIO()
            with warnings.catch_warnings():
                # Shape checks in Python become constants of the trace; the legacy exporter
                # announces its deprecation (see the module docstring).
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                torch.onnx.export(
                    graph.eval(),
                    args,
                    buffer,
                    input_names=inputs,
                    output_names=outputs,
                    dynamic_axes=axes,
                    opset_version=OPSET,
                    dynamo=False,
                )
            proto = onnx.load_from_string(buffer.getvalue())
            for key, value in metadata.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.checker.check_model(proto)
            with atomic_open(path, "wb") as handle:
                handle.write(proto.SerializeToString())
    finally:
        module.to(model.device)
    return out, matcher_out


def check_onnx(
    model: TrainedModel,
    extractor_path: str | Path,
    matcher_path: str | Path,
    batches: tuple[int, ...] = (1, 4),
    seed: int = 0,
) -> list[GraphCheck]:
    """Run both graphs with onnxruntime on random batches of each size in ``batches`` and
    compare with PyTorch on the CPU (float32): random uint8 images for the extractor, and the
    sequences of two such batches, paired item by item, for the matcher (two images, since the
    distance of a sequence to itself, or to a reordering of itself, is 0)."""
    ort = require("onnxruntime", "onnx", "checking the ONNX export")
    module = model.module.cpu().eval()
    d = model.config.data
    extractor = ort.InferenceSession(str(extractor_path), providers=["CPUExecutionProvider"])
    matcher = ort.InferenceSession(str(matcher_path), providers=["CPUExecutionProvider"])
    graph = ImageSequenceGraph(module, model.config.eval.flip).eval()
    generator = torch.Generator().manual_seed(seed)
    checks = []
    try:
        for batch in batches:
            images, second = torch.randint(
                0, 256, (2, batch, 3, d.height, d.width), dtype=torch.uint8, generator=generator
            )
            with torch.no_grad():
                sequences, other = graph(images), graph(second)
                distance = module.matcher(sequences, other)
            got = extractor.run(None, {"images": images.numpy()})[0]
            checks.append(GraphCheck("extractor", batch, _max_diff(got, sequences)))
            got = matcher.run(None, {"xa": sequences.numpy(), "xb": other.numpy()})[0]
            checks.append(GraphCheck("matcher", batch, _max_diff(got, distance)))
    finally:
        module.to(model.device)
    return checks


def _max_diff(got: np.ndarray, expected: Tensor) -> float:
    if got.shape != tuple(expected.shape):
        raise ValueError(f"ONNX output has shape {got.shape}, PyTorch {tuple(expected.shape)}")
    return float(np.abs(got - expected.numpy()).max())
