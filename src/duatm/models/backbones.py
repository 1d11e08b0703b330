"""CNN backbones that turn an image batch into its last feature map (B, C, h, w).

One entry point, [`build_backbone`][duatm.models.backbones.build_backbone], backed by a small
registry. Every backbone keeps
torchvision's own module names, so its ``state_dict`` keys are exactly the feature keys of the
torchvision classification model it came from; that is what lets a torchvision-format weights
file (ImageNet or a local path) loads directly; only the legacy DenseNet key names of
torchvision's published files ("norm.1") are rewritten, as torchvision itself does.

``pretrained`` is explicit and never hidden:

* ``None``: random initialisation (torchvision's own init);
* ``"imagenet"``: torchvision's published ImageNet-1K file, read from
  ``torch.hub.get_dir()/checkpoints/`` or downloaded there; offline and not cached raises
  [`PretrainedWeightsError`][duatm.models.backbones.PretrainedWeightsError] saying which file to
  put where;
* any other string or path: a local torchvision-format state dict (a file literally named
  ``imagenet`` is passed as ``./imagenet``).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models as tvm
from torchvision.models import WeightsEnum

__all__ = [
    "BACKBONE_NAMES",
    "DENSENET_TINY_CONFIG",
    "DenseNetBackbone",
    "PretrainedWeightsError",
    "ResNetBackbone",
    "build_backbone",
]

IMAGENET = "imagenet"

# A DenseNet small enough for CPU tests and demos; also what a local "densenet_tiny" weights file
# must have been saved from: torchvision.models.DenseNet(**DENSENET_TINY_CONFIG).state_dict().
DENSENET_TINY_CONFIG: Mapping[str, object] = {
    "growth_rate": 8,
    "block_config": (2, 2, 2, 2),
    "num_init_features": 16,
    "bn_size": 2,
}

# Keys of the classification head; we keep only the features, so a file's head is ignored.
_HEAD_PREFIXES = ("fc.", "classifier.")

# torchvision's published DenseNet files predate the ban on "." in module names and store
# "...denselayer3.norm.1.weight" where the module is now called "norm1".
_LEGACY_DENSE_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")

# How many offending keys an error message lists per kind.
_KEYS_SHOWN = 5


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be obtained, read, or do not fit the backbone."""


class DenseNetBackbone(nn.Module):
    """Block-4 map of a torchvision DenseNet: ``features`` up to and including ``norm5``.

    ReLU choice: a ReLU is applied after ``norm5``, as torchvision's classification forward does
    before pooling, so the map we read is the one the ImageNet classifier was trained on (the
    paper reads the Block-4 map; without the ReLU half of it would be negative BN output that no
    pretrained layer ever consumed). Output: ``F.relu(densenet.features(x))``.

    ``drop_last_pool`` replaces the average pooling of the last transition layer by the identity,
    so the output stride is 16 instead of 32 (e.g. 16 x 8 positions for a 256 x 128 input).
    """

    def __init__(self, densenet: tvm.DenseNet, *, drop_last_pool: bool = False) -> None:
        super().__init__()
        self.features = densenet.features
        self.out_channels: int = densenet.classifier.in_features
        if drop_last_pool:
            transitions = [name for name in self.features._modules if name.startswith("transition")]
            getattr(self.features, transitions[-1]).pool = nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        return F.relu(self.features(images))


class ResNetBackbone(nn.Module):
    """A torchvision ResNet up to ``layer4`` (its output already ends in a ReLU).

    ``drop_last_pool`` sets the stride of ``layer4`` to 1 (the "last stride 1" trick of re-id
    work), so the output stride is 16 instead of 32.
    """

    def __init__(self, resnet: tvm.ResNet, *, drop_last_pool: bool = False) -> None:
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.out_channels: int = resnet.fc.in_features
        if drop_last_pool:
            # The first block of layer4 downsamples in its strided conv and in its shortcut.
            for module in self.layer4[0].modules():
                if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
                    module.stride = (1, 1)

    def forward(self, images: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@dataclass(frozen=True)
class _BackboneSpec:
    classifier_model: Callable[[], nn.Module]  # the full torchvision model, randomly initialised
    backbone: Callable[..., nn.Module]  # (classifier_model, *, drop_last_pool) -> feature backbone
    imagenet_weights: WeightsEnum | None


_REGISTRY: dict[str, _BackboneSpec] = {
    "densenet121": _BackboneSpec(
        partial(tvm.densenet121, weights=None),
        DenseNetBackbone,
        tvm.DenseNet121_Weights.IMAGENET1K_V1,
    ),
    "resnet50": _BackboneSpec(
        partial(tvm.resnet50, weights=None),
        ResNetBackbone,
        tvm.ResNet50_Weights.IMAGENET1K_V1,
    ),
    "densenet_tiny": _BackboneSpec(
        partial(tvm.DenseNet, **DENSENET_TINY_CONFIG),
        DenseNetBackbone,
        None,
    ),
}

BACKBONE_NAMES: tuple[str, ...] = tuple(_REGISTRY)
"""Names [`build_backbone`][duatm.models.backbones.build_backbone] accepts (``model.backbone``)."""


def build_backbone(
    name: str, pretrained: str | os.PathLike[str] | None = None, *, drop_last_pool: bool = False
) -> nn.Module:
    """Build backbone ``name`` returning its last feature map (B, C, h, w); see module docstring.

    The returned module has ``.out_channels`` (C). Raises ``ValueError`` for an unknown name,
    ``FileNotFoundError`` for a missing weights file and
    [`PretrainedWeightsError`][duatm.models.backbones.PretrainedWeightsError] when
    weights cannot be fetched, read, or do not match the architecture.
    """
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONE_NAMES)}")
    # Weights are read first so that a bad path or a failed download fails before the build.
    source = None if pretrained is None else _weights_source(name, spec, pretrained)
    state_dict = None if source is None else _read_state_dict(source)
    backbone = spec.backbone(spec.classifier_model(), drop_last_pool=drop_last_pool)
    if source is not None and state_dict is not None:
        _load_features(backbone, state_dict, name=name, source=source)
    return backbone


def _weights_source(name: str, spec: _BackboneSpec, pretrained: str | os.PathLike[str]) -> str:
    """The file to read for ``pretrained``: the ImageNet cache file or the given path."""
    if str(pretrained) != IMAGENET:
        return os.fspath(pretrained)
    if spec.imagenet_weights is None:
        raise PretrainedWeightsError(
            f"backbone {name!r} has no published ImageNet weights; use pretrained=None or a "
            "path to a state dict saved from the same architecture"
        )
    return _imagenet_file(spec.imagenet_weights)


def _imagenet_file(weights: WeightsEnum) -> str:
    """Path of the cached ImageNet file of ``weights``, downloading it there when absent."""
    url = weights.url
    filename = os.path.basename(urlparse(url).path)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    cached = folder / filename
    if not cached.exists():
        # torchvision names its files <arch>-<sha256 prefix>.pth; the download checks the prefix.
        hash_match = re.search(r"-([a-f0-9]+)\.", filename)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                url, str(cached), hash_match.group(1) if hash_match else None, progress=True
            )
        except OSError as exc:  # URLError, HTTPError, socket errors, read-only cache folder
            raise PretrainedWeightsError(
                f"could not download ImageNet weights {filename!r} from {url} ({exc}). "
                f"Offline? Download that file elsewhere and place it as {cached} "
                f"(folder: {folder}, i.e. torch.hub.get_dir()/checkpoints/)."
            ) from exc
    return str(cached)


def _read_state_dict(path: str) -> dict[str, Tensor]:
    """Read a torchvision-format state dict, with errors that name the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "pretrained weights file not found", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load has no single error type for damaged/foreign files
        text = str(exc).strip()
        detail = text.splitlines()[0].rstrip(".") if text else type(exc).__name__
        raise PretrainedWeightsError(
            f"could not read weights file {path}: {detail}. Is it truncated or not a file "
            "written by torch.save?"
        ) from exc
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise PretrainedWeightsError(
            f"weights file {path} holds a {type(obj).__name__} that is not a state dict; expected "
            "a mapping of parameter names to tensors, as torchvision's model.state_dict() gives"
        )
    return {_LEGACY_DENSE_KEY.sub(r"\1\2.", key): value for key, value in obj.items()}


def _load_features(
    backbone: nn.Module, state_dict: Mapping[str, Tensor], *, name: str, source: str
) -> None:
    """Load the feature keys of ``state_dict`` into ``backbone``, refusing any mismatch."""
    given = {k: v for k, v in state_dict.items() if not k.startswith(_HEAD_PREFIXES)}
    expected = backbone.state_dict()
    # BatchNorm's step counter is absent from torchvision's older files; BN fills it in itself.
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    mismatched = [
        f"{k} (file {tuple(given[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in given and given[k].shape != expected[k].shape
    ]
    problems = [
        f"{len(keys)} {kind}: {', '.join(keys[:_KEYS_SHOWN])}{', ...' if len(keys) > _KEYS_SHOWN else ''}"
        for kind, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        raise PretrainedWeightsError(
            f"weights file {source} does not fit backbone {name!r} (is it a torchvision "
            f"{name} state dict?): " + "; ".join(problems)
        )
    backbone.load_state_dict(given, strict=True)
