"""Backbones: output maps, drop_last_pool, and every way of getting (or failing to get) weights.

Weights files are written here from randomly initialised torchvision models; nothing is
downloaded (the ImageNet download is replaced by a failing stub).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from duatm.models.backbones import (
    BACKBONE_NAMES,
    DENSENET_TINY_CONFIG,
    PretrainedWeightsError,
    build_backbone,
)

SMALL_INPUT = (2, 3, 64, 32)


def _legacy_densenet_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key style of torchvision's published DenseNet files ("norm.1"), without BN counters."""
    return {
        re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key): value
        for key, value in state_dict.items()
        if not key.endswith("num_batches_tracked")
    }


def _tiny_densenet(**kwargs: object) -> tvm.DenseNet:
    return tvm.DenseNet(**{**DENSENET_TINY_CONFIG, **kwargs}).eval()


@pytest.fixture(scope="module")
def densenet121_files(tmp_path_factory: pytest.TempPathFactory):
    """A random torchvision DenseNet-121 and its weights saved in current and legacy key style."""
    torch.manual_seed(0)
    model = tvm.densenet121().eval()
    folder = tmp_path_factory.mktemp("densenet121")
    current, legacy = folder / "current.pth", folder / "legacy.pth"
    torch.save(model.state_dict(), current)
    legacy_state = _legacy_densenet_keys(model.state_dict())
    assert any(".norm.1." in key for key in legacy_state)  # the conversion really renamed keys
    torch.save(legacy_state, legacy)
    return model, current, legacy


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(1)
    model = tvm.resnet50().eval()
    path = tmp_path_factory.mktemp("resnet50") / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub folder, and a download function that fails as it would offline."""

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path


@pytest.mark.parametrize("key_style", ["current", "legacy"])
def test_densenet121_file_reproduces_torchvision_block4_map(densenet121_files, key_style):
    reference, current, legacy = densenet121_files
    backbone = build_backbone("densenet121", current if key_style == "current" else legacy).eval()
    x = torch.randn(*SMALL_INPUT)
    with torch.no_grad():
        ours, expected = backbone(x), F.relu(reference.features(x))
    assert backbone.out_channels == 1024
    assert ours.shape == (2, 1024, 2, 1)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(ours, expected)


def test_resnet50_file_reproduces_torchvision_layer4_map(resnet50_file):
    reference, path = resnet50_file
    backbone = build_backbone("resnet50", str(path)).eval()
    trunk = nn.Sequential(*list(reference.children())[:-2])  # everything before avgpool and fc
    x = torch.randn(*SMALL_INPUT)
    with torch.no_grad():
        ours, expected = backbone(x), trunk(x)
    assert backbone.out_channels == 2048
    assert expected.abs().sum() > 0
    torch.testing.assert_close(ours, expected)


def test_weights_file_without_or_with_other_head_loads(tmp_path):
    """Only feature keys matter: a different classifier size or no classifier at all is fine."""
    reference = _tiny_densenet(num_classes=7)
    with_head, features_only = tmp_path / "head.pth", tmp_path / "features.pth"
    state = reference.state_dict()
    torch.save(state, with_head)
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, features_only)
    x = torch.randn(*SMALL_INPUT)
    expected = F.relu(reference.features(x))
    for path in (with_head, features_only):
        backbone = build_backbone("densenet_tiny", path).eval()
        torch.testing.assert_close(backbone(x), expected)


def test_imagenet_uses_file_placed_in_hub_checkpoints(densenet121_files, offline_hub):
    """What the offline error message tells the user to do really works (no download)."""
    reference, _, legacy = densenet121_files
    weights_name = Path(tvm.DenseNet121_Weights.IMAGENET1K_V1.url).name
    (offline_hub / "checkpoints").mkdir()
    shutil.copy(legacy, offline_hub / "checkpoints" / weights_name)
    backbone = build_backbone("densenet121", "imagenet").eval()
    x = torch.randn(*SMALL_INPUT)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), F.relu(reference.features(x)))


@pytest.mark.parametrize(
    ("name", "weights"),
    [
        ("densenet121", tvm.DenseNet121_Weights.IMAGENET1K_V1),
        ("resnet50", tvm.ResNet50_Weights.IMAGENET1K_V1),
    ],
)
def test_imagenet_offline_error_names_file_and_folder(name, weights, offline_hub):
    with pytest.raises(PretrainedWeightsError) as info:
        build_backbone(name, "imagenet")
    message = str(info.value)
    assert Path(weights.url).name in message  # e.g. densenet121-a639ec97.pth
    assert str(offline_hub / "checkpoints") in message
    assert weights.url in message
    assert isinstance(info.value.__cause__, URLError)


def test_imagenet_for_tiny_densenet_is_a_clear_error(offline_hub):
    with pytest.raises(PretrainedWeightsError, match=r"densenet_tiny.*no published ImageNet"):
        build_backbone("densenet_tiny", "imagenet")


def test_missing_weights_file_names_path(tmp_path):
    path = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        build_backbone("densenet_tiny", str(path))


def test_resnet_weights_for_densenet_list_offending_keys(resnet50_file):
    _, path = resnet50_file
    with pytest.raises(PretrainedWeightsError) as info:
        build_backbone("densenet121", str(path))
    message = str(info.value)
    assert str(path) in message
    assert "missing keys: features.conv0.weight" in message
    assert "unexpected keys: conv1.weight" in message
    assert "fc.weight" not in message  # classifier keys are ignored, not reported


def test_other_densenet_size_lists_shape_mismatches(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(_tiny_densenet().state_dict(), path)
    with pytest.raises(PretrainedWeightsError) as info:
        build_backbone("densenet121", path)
    message = str(info.value)
    assert str(path) in message
    assert "features.conv0.weight (file (16, 3, 7, 7), model (64, 3, 7, 7))" in message
    # densenet121 has 6 layers in block 1, the tiny one 2: layer 3 onwards is missing.
    assert "features.denseblock1.denselayer3" in message


def test_truncated_weights_file_is_a_clear_error(tmp_path):
    full, truncated = tmp_path / "full.pth", tmp_path / "truncated.pth"
    torch.save(_tiny_densenet().state_dict(), full)
    data = full.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(PretrainedWeightsError, match=re.escape(f"weights file {truncated}")):
        build_backbone("densenet_tiny", truncated)


def test_file_that_is_not_a_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(PretrainedWeightsError, match="not a state dict"):
        build_backbone("densenet_tiny", path)


def test_unknown_backbone_lists_available_names():
    with pytest.raises(ValueError, match="available: densenet121, resnet50, densenet_tiny"):
        build_backbone("vgg16")
    assert BACKBONE_NAMES == ("densenet121", "resnet50", "densenet_tiny")


@pytest.mark.parametrize(("name", "channels"), [("densenet_tiny", 32), ("resnet50", 2048)])
def test_drop_last_pool_doubles_map_height_and_width(name, channels):
    x = torch.randn(1, 3, 128, 64)
    with torch.no_grad():
        plain = build_backbone(name).eval()(x)
        dropped = build_backbone(name, drop_last_pool=True).eval()(x)
    assert plain.shape == (1, channels, 4, 2)
    assert dropped.shape == (1, channels, 8, 4)


def test_densenet121_paper_map_size_with_and_without_last_pool():
    """Block-4 map is 1024 x 8 x 4 for 256 x 128 (S = 32); 16 x 8 without the last pool."""
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        assert build_backbone("densenet121").eval()(x).shape == (1, 1024, 8, 4)
        assert build_backbone("densenet121", drop_last_pool=True).eval()(x).shape == (
            1,
            1024,
            16,
            8,
        )


def test_drop_last_pool_keeps_weights_loadable(tmp_path):
    reference = _tiny_densenet()
    path = tmp_path / "tiny.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone("densenet_tiny", path, drop_last_pool=True)
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key])
