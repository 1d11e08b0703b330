"""The Python API: a trained checkpoint in three lines.

    model = duatm.load("runs/synthped/best.pt")
    seqs = model.extract(["a.jpg", "b.jpg", "c.jpg"])
    print(model.distance(seqs[:1], seqs[1:]))

Why one object: every tool that uses a checkpoint (``duatm evaluate``, ``index``, ``search``,
and what is built on them) must rebuild the same model with the same preprocessing, extract
with the same code and compare with the same exact matcher, or their numbers would disagree.
:func:`load` is that single path; :class:`TrainedModel` holds the ``nn.Module``, its config and
its test transform together.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from duatm.config import DuATMConfig, config_from_dict
from duatm.data.transforms import PixelPipeline, build_test_transform, read_image
from duatm.engine.builders import build_model, resolve_device
from duatm.engine.checkpoint import (
    check_finite_weights,
    check_run_state,
    load_checkpoint,
    load_model_state,
)
from duatm.engine.evaluator import extract_batch
from duatm.engine.progress import Progress
from duatm.models.duatm import DuATM
from duatm.models.matching import PreparedSequences

__all__ = ["ImageInput", "Images", "TrainedModel", "load"]

#: One image: a file path, a PIL image, or a uint8 tensor (3, H, W) of RGB pixels.
ImageInput: TypeAlias = "str | os.PathLike[str] | Image.Image | Tensor"
#: What :meth:`TrainedModel.extract` takes: one image, a uint8 batch (N, 3, H, W), or a
#: sequence of images (which may mix the kinds).
Images: TypeAlias = "ImageInput | Sequence[ImageInput]"


def load(
    checkpoint: str | os.PathLike[str],
    device: str | torch.device | None = "auto",
    *,
    overrides: Sequence[str] = (),
) -> TrainedModel:
    """The model of a training checkpoint (``last.pt`` / ``best.pt``), in eval mode on ``device``.

    ``device``: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda[:N]"``, ``"mps"``, or
    ``None`` for the device the checkpoint's config names. ``overrides`` are ``key=value``
    config overrides applied to the checkpoint's config (e.g. ``eval.tile_mb=64``); model
    keys must keep their trained values, or the weights will not fit.
    Raises :class:`~duatm.engine.checkpoint.CheckpointError` (or ``FileNotFoundError``) naming
    the file (also for a checkpoint of another format version, or with NaN weights), and
    :class:`~duatm.config.ConfigError` naming a bad override.
    """
    path = Path(checkpoint)
    state = load_checkpoint(path)
    check_run_state(state, str(path))
    check_finite_weights(state["model"], str(path))
    extra = [] if device is None else [f"device={device}"]
    cfg = config_from_dict(state["config"], str(path), [*overrides, *extra])
    module = build_model(cfg, state["num_classes"], load_pretrained=False)
    load_model_state(module, state["model"], str(path))
    return TrainedModel(
        module, cfg, resolve_device(cfg.device), checkpoint=path, epoch=state.get("epoch")
    )


class TrainedModel:
    """A trained DuATM model ready to extract and compare, as :func:`load` returns it.

    Attributes:
        module: the :class:`~duatm.models.duatm.DuATM` ``nn.Module``, in eval mode on ``device``.
        config: its :class:`~duatm.config.DuATMConfig` (the checkpoint's, with any overrides).
        transform: the test pixel pipeline (resize to ``data.height`` x ``data.width``, uint8).
        device: where the model runs and where :meth:`extract` returns sequences.
        checkpoint: the file it was loaded from (``None`` when built in memory).
        epoch: epochs trained when the checkpoint was written (``None`` when unknown).
    """

    def __init__(
        self,
        module: DuATM,
        config: DuATMConfig,
        device: torch.device,
        *,
        checkpoint: Path | None = None,
        epoch: int | None = None,
    ) -> None:
        self.module = module.to(device).eval()
        self.config = config
        self.device = device
        self.transform: PixelPipeline = build_test_transform(config.data.height, config.data.width)
        self.checkpoint = checkpoint
        self.epoch = epoch
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        m = self.config.model
        return (
            f"TrainedModel({self.checkpoint}, backbone={m.backbone}, mode={m.mode}, "
            f"dim={m.dim}, input={self.config.data.height}x{self.config.data.width}, "
            f"device={self.device})"
        )

    @property
    def dim(self) -> int:
        """D, the length of each sequence element."""
        return self.module.matcher.dim

    @property
    def amp(self) -> bool:
        """Whether the CNN runs in mixed precision (the config's ``amp``, on CUDA only)."""
        return self.config.amp and self.device.type == "cuda"

    @property
    def fingerprint(self) -> str:
        """SHA-256 of everything that decides sequences and distances: the input size, the
        architecture, and every tensor of the extractor and the matcher (the training-only
        classifier is left out). Saved indexes carry it, so that a gallery extracted by one
        model is never compared with queries extracted by another."""
        if self._fingerprint is None:
            m, d = self.config.model, self.config.data
            digest = hashlib.sha256()
            digest.update(
                f"{m.backbone}|{m.dim}|{m.mode}|{m.drop_last_pool}|{d.height}x{d.width}".encode()
            )
            for part in (self.module.extractor, self.module.matcher):
                for name, tensor in part.state_dict().items():
                    flat = tensor.detach().cpu().contiguous().reshape(-1)
                    digest.update(f"|{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
                    digest.update(flat.view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    # ----------------------------------------------------------------- extraction
    def extract(
        self,
        images: Images,
        *,
        flip: bool | None = None,
        batch_size: int | None = None,
        num_workers: int = 0,
        progress: bool = False,
    ) -> Tensor:
        """float32 sequences (N, S, D) on :attr:`device`, one per image, in input order.

        ``images``: a path, a PIL image, a uint8 tensor (3, H, W), a uint8 batch (N, 3, H, W),
        or a list of these. Paths and PIL images go through :attr:`transform` exactly as
        evaluation's loaders do; tensors of another size than the model's input are resized by
        the same transform (torchvision's tensor resize, which differs slightly from PIL's).
        ``flip`` (default: the config's ``eval.flip``) averages each image with its mirror.
        Images are run ``batch_size`` at a time (default ``data.test_batch_size``), read by
        ``num_workers`` loader processes (0: in this process).
        Raises ``TypeError`` / ``ValueError`` naming the bad item, ``FileNotFoundError`` or
        :class:`~duatm.data.transforms.ImageReadError` naming the file.
        """
        items = _image_items(images)
        flip = self.config.eval.flip if flip is None else flip
        loader = DataLoader(
            _PixelInputs(items, self.transform),
            batch_size=batch_size or self.config.data.test_batch_size,
            shuffle=False,
            num_workers=num_workers,
        )
        chunks = []
        with Progress(total=len(items), desc="extract", unit="img", enabled=progress) as bar:
            for batch in loader:
                chunks.append(
                    extract_batch(self.module, batch, self.device, flip=flip, amp=self.amp)
                )
                bar.update(len(batch))
        return torch.cat(chunks)

    # ----------------------------------------------------------------- matching
    def prepare(self, sequences: Tensor) -> PreparedSequences:
        """The per-item tensors the matcher reuses for every pair, on :attr:`device`
        (docs/design.md#per-item-work)."""
        with torch.inference_mode():
            return self.module.matcher.prepare(self._as_sequences("sequences", sequences))

    def distance(
        self, xq: Tensor, xg: Tensor | None = None, *, tile_mb: int | None = None
    ) -> Tensor:
        """The exact (Q, G) DuATM distance matrix of sequences ``xq`` against ``xg`` (default:
        ``xq`` against itself), on the CPU: :meth:`DualAttentionMatcher.pairwise
        <duatm.models.matching.DualAttentionMatcher.pairwise>`, in tiles of at most
        ``tile_mb`` MiB (default: the config's ``eval.tile_mb``)."""
        query = self.prepare(xq)
        gallery = query if xg is None else self.prepare(xg)
        return self.distance_prepared(query, gallery, tile_mb=tile_mb)

    def distance_prepared(
        self, query: PreparedSequences, gallery: PreparedSequences, *, tile_mb: int | None = None
    ) -> Tensor:
        """:meth:`distance` on tensors from :meth:`prepare` (e.g. a saved gallery index)."""
        tile_bytes = (tile_mb or self.config.eval.tile_mb) << 20
        with torch.inference_mode():
            return self.module.matcher.pairwise_prepared(
                query, gallery, max_tile_bytes=tile_bytes
            ).cpu()

    def _as_sequences(self, name: str, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            kind = f"a {x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"{name} must be a float tensor (N, S, {self.dim}); got {kind}")
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape (N, S, {self.dim}); got {tuple(x.shape)}")
        return x.to(self.device, torch.float32)


class _PixelInputs(Dataset[Tensor]):
    """Items of :meth:`TrainedModel.extract` as uint8 tensors (3, H, W) through the transform."""

    def __init__(self, items: list[Path | Image.Image | Tensor], transform: PixelPipeline) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tensor:
        item = self.items[index]
        if isinstance(item, Path):
            item = read_image(item)
        elif isinstance(item, Image.Image):
            item = item.convert("RGB")
        return self.transform(item).as_subclass(Tensor)


def _image_items(images: Any) -> list[Path | Image.Image | Tensor]:
    """Flatten :data:`Images` into one item per image, checking each (errors name the item)."""
    if isinstance(images, Tensor) and images.dim() == 4:
        items = list(_checked_pixels("images", images).unbind(0))
    elif isinstance(images, (str, os.PathLike, Image.Image, Tensor)):
        items = [_image_item("images", images)]
    elif isinstance(images, Sequence):
        items = []
        for i, item in enumerate(images):
            if isinstance(item, Tensor) and item.dim() == 4:
                items.extend(_checked_pixels(f"images[{i}]", item).unbind(0))
            else:
                items.append(_image_item(f"images[{i}]", item))
    else:
        raise TypeError(f"images: {_ACCEPTED}; got {type(images).__name__}")
    if not items:
        raise ValueError("images: no images given")
    return items


_ACCEPTED = (
    "expected an image path, a PIL image, a uint8 tensor (3, H, W) or (N, 3, H, W), "
    "or a list of these"
)


def _image_item(name: str, item: Any) -> Path | Image.Image | Tensor:
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if path.is_dir():
            raise ValueError(f"{name}: {path} is a folder; pass image files")
        if not path.is_file():
            raise FileNotFoundError(f"{name}: image not found: {path}")
        return path
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, Tensor):
        return _checked_pixels(name, item)
    if isinstance(item, Sequence):
        raise TypeError(
            f"{name} is a {type(item).__name__} of frames (a tracklet); this checkpoint is an "
            "image model, which takes one image per item"
        )
    raise TypeError(f"{name}: {_ACCEPTED}; got {type(item).__name__}")


def _checked_pixels(name: str, pixels: Tensor) -> Tensor:
    if pixels.dtype != torch.uint8:
        raise TypeError(
            f"{name}: expected uint8 RGB pixels (0..255), got a {pixels.dtype} tensor; "
            "pass the raw pixels, the model normalises them itself"
        )
    if pixels.dim() not in (3, 4) or pixels.shape[-3] != 3:
        raise ValueError(
            f"{name}: expected a uint8 tensor (3, H, W) or (N, 3, H, W) of RGB pixels, got "
            f"shape {tuple(pixels.shape)}"
        )
    return pixels.cpu()
