"""duatm.load: the model of a checkpoint, extraction from every input kind, exact distances."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import duatm
from duatm.config import ConfigError
from duatm.data.datasets import Market1501
from duatm.data.transforms import ImageReadError, read_image
from duatm.engine.builders import build_test_loader
from duatm.engine.checkpoint import CheckpointError, save_checkpoint
from duatm.engine.evaluator import extract


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> duatm.TrainedModel:
    return duatm.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def gallery(tiny_synthped: Path) -> list:
    return Market1501(tiny_synthped, verbose=False).gallery[:20]


def test_load_gives_the_model_in_eval_mode_with_config_and_transform(
    model: duatm.TrainedModel, tiny_checkpoint: Path
) -> None:
    assert not model.module.training and not model.module.matcher.training
    assert model.config.model.dim == model.dim == 16
    assert model.epoch == 3 and model.checkpoint == tiny_checkpoint
    assert model.device == torch.device("cpu")
    assert next(model.module.parameters()).device.type == "cpu"
    pixels = model.transform(Image.new("RGB", (40, 90), (10, 200, 30)))
    assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (3, 32, 16)


def test_extract_equals_the_evaluators_extraction_for_every_input_kind(
    model: duatm.TrainedModel, gallery: list
) -> None:
    cfg = model.config
    expected = extract(model.module, build_test_loader(cfg, gallery), model.device, progress=False)
    paths = [r.path for r in gallery]
    pils = [read_image(p) for p in paths]
    pixels = torch.stack([model.transform(img) for img in pils])

    torch.testing.assert_close(model.extract(paths), expected.sequences, rtol=0, atol=0)
    torch.testing.assert_close(
        model.extract([Path(p) for p in paths]), expected.sequences, rtol=0, atol=0
    )
    torch.testing.assert_close(model.extract(pils), expected.sequences, rtol=0, atol=0)
    torch.testing.assert_close(model.extract(pixels), expected.sequences, rtol=0, atol=0)
    # One at a time, mixed kinds in one list, and other batch sizes: the same sequences.
    torch.testing.assert_close(model.extract(paths[3]), expected.sequences[3:4])
    torch.testing.assert_close(model.extract(pils[4]), expected.sequences[4:5])
    torch.testing.assert_close(model.extract(pixels[5]), expected.sequences[5:6])
    mixed = model.extract([paths[0], pils[1], pixels[2], pixels[3:6]], batch_size=2)
    torch.testing.assert_close(mixed, expected.sequences[:6])
    assert mixed.shape == (6, 2, 16)
    assert torch.allclose(mixed.norm(dim=-1), torch.ones(6, 2))


def test_extract_resizes_other_sizes_and_flip_equals_the_evaluators(
    model: duatm.TrainedModel, gallery: list
) -> None:
    paths = [r.path for r in gallery[:6]]
    flipped = extract(
        model.module,
        build_test_loader(model.config, gallery[:6]),
        model.device,
        flip=True,
        progress=False,
    )
    torch.testing.assert_close(model.extract(paths, flip=True), flipped.sequences, rtol=0, atol=0)
    assert not torch.allclose(model.extract(paths), flipped.sequences)
    big = Image.open(paths[0]).convert("RGB").resize((48, 96))
    assert model.extract(big).shape == (1, 2, 16)
    big_pixels = model.transform.prepare(big).as_subclass(torch.Tensor)
    assert tuple(big_pixels.shape) == (3, 32, 16)
    torch.testing.assert_close(model.extract(big), model.extract(big_pixels))


def test_distance_is_the_matcher_on_every_pair(model: duatm.TrainedModel) -> None:
    torch.manual_seed(1)
    xq = torch.nn.functional.normalize(torch.randn(3, 2, 16), dim=-1)
    xg = torch.nn.functional.normalize(torch.randn(5, 2, 16), dim=-1)
    with torch.no_grad():
        pairs = model.module.matcher(xq.repeat_interleave(5, 0), xg.repeat(3, 1, 1)).view(3, 5)
    torch.testing.assert_close(model.distance(xq, xg), pairs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.distance(xq.half(), xg), pairs, rtol=2e-2, atol=2e-3)
    itself = model.distance(xg)
    with torch.no_grad():
        own = model.module.matcher(xg.repeat_interleave(5, 0), xg.repeat(5, 1, 1)).view(5, 5)
    # The diagonal is the square root of rounding noise (about 1e-7) in both computations.
    torch.testing.assert_close(itself, own, rtol=1e-5, atol=1e-3)
    off_diagonal = ~torch.eye(5, dtype=torch.bool)
    torch.testing.assert_close(itself[off_diagonal], own[off_diagonal], rtol=1e-5, atol=1e-6)


def test_fingerprint_tells_models_apart(
    model: duatm.TrainedModel, tiny_checkpoint: Path, other_checkpoint: Path
) -> None:
    assert model.fingerprint == duatm.load(tiny_checkpoint, device="cpu").fingerprint
    assert duatm.load(other_checkpoint, device="cpu").fingerprint != model.fingerprint
    assert len(model.fingerprint) == 64


def test_load_errors_name_the_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nothing\.pt"):
        duatm.load(tmp_path / "nothing.pt")
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, {"weights": torch.zeros(2)})
    with pytest.raises(
        CheckpointError,
        match=r"plain.pt is not a duatm training checkpoint: it has no config, num_classes, model",
    ):
        duatm.load(plain)
    with pytest.raises(ConfigError, match="device"):
        duatm.load(tiny_checkpoint, device="gpu")


def test_bad_inputs_get_one_line_errors_naming_the_item(
    model: duatm.TrainedModel, gallery: list, tmp_path: Path
) -> None:
    good = gallery[0].path
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    cases = [
        (
            [good, tmp_path / "missing.jpg"],
            FileNotFoundError,
            r"images\[1\]: image not found: .*missing.jpg",
        ),
        ([good, broken], ImageReadError, r"cannot read image .*broken.jpg"),
        (tmp_path, ValueError, r"is a folder"),
        (
            [good, torch.rand(3, 32, 16)],
            TypeError,
            r"images\[1\]: expected uint8 RGB pixels.*torch.float32",
        ),
        (
            torch.zeros(2, 1, 32, 16, dtype=torch.uint8),
            ValueError,
            r"images: expected a uint8 tensor.*\(2, 1, 32, 16\)",
        ),
        ([[good, good]], TypeError, r"images\[0\] is a list of frames \(a tracklet\)"),
        ([], ValueError, "no images given"),
        (3, TypeError, "expected an image path.*got int"),
    ]
    for images, error, message in cases:
        with pytest.raises(error, match=message) as caught:
            model.extract(images)
        assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match=r"sequences must have shape \(N, S, 16\); got \(2, 16\)"):
        model.distance(torch.zeros(2, 16))
    with pytest.raises(TypeError, match="must be a float tensor"):
        model.distance(torch.zeros(2, 2, 16, dtype=torch.long))


def test_the_readme_example_runs_as_written(
    tiny_checkpoint: Path, tiny_synthped: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The three-line example of README.md and docs/guide/search.md, verbatim, on a demo-like
    folder (a tiny model in place of the demo's)."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    start = readme.index("```python\nimport duatm, glob\n") + len("```python\n")
    example = readme[start : readme.index("```", start)]
    assert example in (root / "docs" / "guide" / "search.md").read_text()
    (tmp_path / "runs" / "demo" / "dual-seed0").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, tmp_path / "runs" / "demo" / "dual-seed0" / "last.pt")
    shutil.copytree(tiny_synthped, tmp_path / "runs" / "demo" / "synthped")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("tensor([[") and printed.count(",") == 1
