"""Objects a run is made of, built from its config: device, dataset, model and data loaders.

Why one place: training, evaluation, the demo and the benchmarks must build exactly the same
model and pipelines from the same config, or their numbers would not be comparable.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch.func import functional_call
from torch.utils.data import DataLoader

from duatm.config import ConfigError, DuATMConfig
from duatm.data.clips import ClipSampler, evaluation_clip_sampler
from duatm.data.datasets import ReIDDataset, build_dataset
from duatm.data.image_dataset import ImageDataset
from duatm.data.records import ImageRecord, TrackletRecord
from duatm.data.samplers import IdentityBatchSampler
from duatm.data.transforms import PixelPipeline, build_test_transform, build_train_transform
from duatm.data.video_dataset import VideoDataset, collate_clips
from duatm.engine.seed import worker_init_fn
from duatm.models.duatm import DuATM


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; other names must be usable on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: CUDA is not available on this machine; use cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name!r}: MPS is not available on this machine; use cpu")
    return device


def autocast_for(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision on CUDA (bfloat16 where supported, else float16); a no-op elsewhere.

    The matcher upcasts half-precision inputs to float32 itself, so only the CNN runs in half.
    """
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def load_dataset(cfg: DuATMConfig, *, verbose: bool = True) -> ReIDDataset[Any]:
    """The dataset named by ``data.dataset`` at ``data.root``, split ``data.split`` (prints its
    summary table)."""
    return build_dataset(cfg.data.dataset, cfg.data.root, split=cfg.data.split, verbose=verbose)


def build_model(cfg: DuATMConfig, num_classes: int, *, load_pretrained: bool = True) -> DuATM:
    """The model of ``cfg.model``, checked to accept ``data.height`` x ``data.width`` images;
    ``load_pretrained=False`` skips the backbone weights (for a model whose weights come from a
    checkpoint next)."""
    m = cfg.model
    model = DuATM(
        m.backbone,
        m.dim,
        num_classes=num_classes,
        mode=m.mode,
        pretrained=m.pretrained if load_pretrained else None,
        drop_last_pool=m.drop_last_pool,
        kind=m.kind,
        rnn=m.rnn,
        rnn_hidden=m.rnn_hidden,
        frame_chunk=m.frame_chunk,
        ce_head=cfg.loss.ce_head,
        ce_scale=cfg.loss.ce_scale,
        attention_scale=m.attention_scale,
        attention_init=m.attention_init,
    )
    check_input_size(model, cfg)
    return model


def check_input_size(model: DuATM, cfg: DuATMConfig) -> None:
    """Raise a ConfigError naming the keys when the backbone cannot take images of the
    configured size (its pooling would leave an empty feature map), instead of a RuntimeError
    from deep inside the first forward pass.

    Runs the backbone on the meta device: shapes only, no arithmetic and no weights copied.
    The answer depends on the architecture alone, so each one is checked once per process.
    """
    d = cfg.data
    key = (cfg.model.backbone, cfg.model.drop_last_pool, d.height, d.width)
    if key in _ACCEPTED_SIZES:
        return
    backbone = model.backbone
    tensors = itertools.chain(backbone.named_parameters(), backbone.named_buffers())
    meta = {name: torch.empty_like(value, device="meta") for name, value in tensors}
    images = torch.empty(2, 3, d.height, d.width, device="meta")
    try:
        fmap = functional_call(backbone, meta, (images,))
    except RuntimeError as err:
        raise ConfigError(
            f"data.height={d.height}, data.width={d.width}: too small for "
            f"model.backbone={cfg.model.backbone} (drop_last_pool={cfg.model.drop_last_pool}): "
            f"{str(err).splitlines()[0]}"
        ) from err
    if fmap.shape[-2] * fmap.shape[-1] == 0:
        raise ConfigError(
            f"data.height={d.height}, data.width={d.width}: model.backbone="
            f"{cfg.model.backbone} makes an empty feature map of these images"
        )
    _ACCEPTED_SIZES.add(key)


# (backbone, drop_last_pool, height, width) that check_input_size has accepted.
_ACCEPTED_SIZES: set[tuple[str, bool, int, int]] = set()


Records = Sequence[ImageRecord] | Sequence[TrackletRecord]


def _pixel_dataset(
    cfg: DuATMConfig, records: Records, transform: PixelPipeline, clips: ClipSampler
) -> ImageDataset | VideoDataset:
    """An ImageDataset, or for ``model.kind="video"`` a VideoDataset cutting clips with
    ``clips``; both decode, skip and cache as ``data`` says."""
    d = cfg.data
    options = {"skip_broken": d.skip_broken_images, "cache": d.cache_images}
    if cfg.model.kind == "video":
        return VideoDataset(records, transform, clips, **options)  # type: ignore[arg-type]
    return ImageDataset(records, transform, **options)  # type: ignore[arg-type]


def _collate(dataset: ImageDataset | VideoDataset) -> Any:
    """Clips of the ``all`` mode differ in length and are padded; images use the default."""
    return collate_clips if isinstance(dataset, VideoDataset) else None


def build_train_loader(
    cfg: DuATMConfig, records: Records, *, rank: int = 0, world_size: int = 1
) -> tuple[DataLoader[Any], IdentityBatchSampler]:
    """P x V identity batches with the training augmentation, and the sampler that orders them
    (``rank``'s share of each global step when ``world_size`` processes train together).

    Images, or for a video model clips of ``data.clip_len`` frames starting as
    ``data.clip_start`` says (one augmentation per clip); P x V then counts tracklets.

    Call ``sampler.set_epoch(e)`` and ``loader.generator.manual_seed(...)`` before each epoch;
    the trainer does both so that an epoch's batches and augmentations depend only on
    (seed, epoch), which is what makes resuming exact.
    """
    d = cfg.data
    transform = build_train_transform(
        d.height, d.width, pad=d.pad, flip_prob=d.flip_prob, random_erasing=d.random_erasing
    )
    dataset = _pixel_dataset(cfg, records, transform, ClipSampler(d.clip_len, d.clip_start))
    try:
        sampler = IdentityBatchSampler(
            dataset.pids,
            d.num_identities,
            d.num_instances,
            seed=cfg.seed,
            rank=rank,
            world_size=world_size,
            batches_per_epoch=cfg.schedule.iters_per_epoch,
        )
    except ValueError as err:
        raise ConfigError(f"data.num_identities={d.num_identities}: {err}") from err
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=d.num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=functools.partial(worker_init_fn, rank=rank),
        generator=torch.Generator().manual_seed(cfg.seed),
        persistent_workers=False,
        collate_fn=_collate(dataset),
    )
    return loader, sampler


def build_test_loader(cfg: DuATMConfig, records: Records) -> DataLoader[Any]:
    """Query or gallery images (or tracklets' evaluation clips: ``data.test_clip_len`` frames,
    or every frame in the ``all`` mode) in their dataset order, without augmentation."""
    d = cfg.data
    dataset = _pixel_dataset(
        cfg,
        records,
        build_test_transform(d.height, d.width),
        evaluation_clip_sampler(d.test_clip_mode, d.test_clip_len, d.test_clip_start),
    )
    return DataLoader(
        dataset,
        batch_size=d.test_batch_size,
        shuffle=False,
        collate_fn=_collate(dataset),
        num_workers=d.num_workers,
        pin_memory=torch.cuda.is_available(),
        # Its own generator: creating the iterator then draws nothing from the global RNG, so
        # evaluating in the middle of training leaves the training random streams untouched.
        generator=torch.Generator().manual_seed(0),
    )
