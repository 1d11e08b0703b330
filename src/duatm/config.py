"""The run configuration: one typed schema, YAML files that inherit through `base:`, dotted overrides.

Why: a run is described by one object that is checked once, before any work starts, with errors
that name the key (and the file it came from); checkpoints and run folders keep it as plain
containers so a run can be reproduced or resumed from what it wrote.

    cfg = load_config("configs/market1501.yaml", ["optim.lr=0.001", "model.pretrained=null"])

Epochs are counted from 0. The backbone is frozen while `epoch < schedule.freeze_backbone_epochs`;
the learning rate is `optim.lr * schedule.lr_decay_factor` once `epoch >= schedule.lr_decay_epoch`.
The defaults are the paper's image recipe (docs/design.md#recipe). The lines between the
``--8<--`` markers are included verbatim in docs/guide/configs.md.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from duatm.atomic import atomic_write_text
from duatm.data.clips import CLIP_STARTS, TEST_CLIP_MODES
from duatm.data.datasets.registry import DATASETS
from duatm.models.backbones import BACKBONE_NAMES
from duatm.models.duatm import MODEL_KINDS
from duatm.models.extractor import RNN_KINDS
from duatm.models.heads import CE_HEADS
from duatm.models.matching import ATTENTION_INITS, MATCHER_MODES

# The configs shipped with the package (`configs/` in a clone links here); `load_config("synthped")`.
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
# The YAML key that names the file a config inherits from (relative to the file that names it).
BASE_KEY = "base"
# First-stage neighbour search of `duatm search` and storage types of a gallery index.
SEARCH_BACKENDS = ("auto", "faiss", "torch")
INDEX_DTYPES = ("float32", "float16")
_DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class ConfigError(ValueError):
    """A configuration that cannot be used: unknown key, wrong type or value, unreadable file."""


# --8<-- [start:schema]
@dataclass
class ModelConfig:
    """``model``: the network (backbone, sequence length D, matcher mode)."""

    backbone: str = "densenet121"  # CNN trunk: "densenet121", "resnet50" or "densenet_tiny"
    pretrained: str | None = "imagenet"  # "imagenet", a path to trunk weights, or null (random)
    dim: int = 256  # D: length of each sequence element after the FC layer (paper: 256)
    mode: str = "dual"  # matcher variant, one of MATCHER_MODES (paper Table 2)
    attention_scale: float = 1.0  # factor on every attention logit (1 = the paper's Eq. 2)
    attention_init: str = "random"  # filter layer W of Eq. 1 at the start: "random" or "identity"
    drop_last_pool: bool = (
        False  # keep a larger last feature map (longer sequences) for small images
    )
    # "image" (S = feature-map positions) or "video" (S = frames, through a bidirectional
    # recurrent layer; docs/design.md#recurrent-layer); must fit the dataset's records.
    kind: str = "image"
    rnn: str = "gru"  # video: the bidirectional recurrent layer, "gru" or "lstm"
    rnn_hidden: int | None = None  # video: units per direction of the recurrent layer; null = dim
    frame_chunk: int = (
        64  # video: frames per backbone call at evaluation (bounds memory; same results)
    )


@dataclass
class DataConfig:
    """``data``: the dataset, image size, P x V batches, augmentation and loading."""

    dataset: str = "market1501"  # dataset parser, one of DATASETS (data/datasets/registry.py)
    root: str = "data/market1501"  # folder holding the dataset's split folders
    height: int = 256  # input image height in pixels
    width: int = 128  # input image width in pixels
    # P: identities per training batch, per process (W processes: P * W per optimiser step)
    num_identities: int = 10
    num_instances: int = 4  # V: images per identity in a training batch (batch = P * V)
    num_workers: int = 4  # DataLoader worker processes (0 = load in the main process)
    pad: int = 10  # random-crop padding in pixels (training augmentation)
    flip_prob: float = 0.5  # probability of a horizontal flip (training augmentation)
    random_erasing: float = 0.0  # probability of random erasing (0 = off, as in the paper)
    test_batch_size: int = 64  # images per batch when extracting query/gallery sequences
    skip_broken_images: bool = False  # drop unreadable images with a warning instead of failing
    cache_images: bool = False  # decode + resize every image once and keep it in memory (uint8)
    # Training identities held out as a validation query/gallery split that selects best.pt:
    # a count (>= 1) or a fraction (< 1) of the training identities; 0 = none (no best.pt).
    val_identities: float = 0.0
    # Video datasets only (docs/design.md#video-clips); image datasets ignore these.
    split: int = 0  # which of the standard train/test splits (0-based): ilidsvid, prid2011 have 10
    clip_len: int = 16  # T: consecutive frames per training clip (paper: 16)
    clip_start: str = "random"  # where a training clip starts: "random" (paper), "first", "middle"
    test_clip_mode: str = "clip"  # evaluation: "clip" (test_clip_len frames) or "all" (every frame)
    test_clip_len: int = 64  # frames per evaluation clip in "clip" mode (paper: 64)
    test_clip_start: str = "first"  # where an evaluation clip starts: "first" or "middle"


@dataclass
class LossConfig:
    """``loss``: the weights of l = l0 + lambda1 l1 + lambda2 l2 (docs/design.md#losses)."""

    margin: float = 0.2  # gamma: batch-hard triplet margin on the matching distance
    soft_margin: bool = False  # softplus(d_ap - d_an) in place of the margin (margin unused)
    lambda1: float = 0.1  # weight of the de-correlation loss l1
    lambda2: float = 0.5  # weight of the random-pooling cross-entropy l2
    drop_prob: float = 0.2  # p: probability of zeroing each random pooling weight in l2
    ce_head: str = (
        "paper"  # l2 classifier: "paper" (FC), "bnneck" (BN + FC) or "cosine" (scaled cos)
    )
    ce_scale: float = 16.0  # logit scale of the cosine head


@dataclass
class OptimConfig:
    """``optim``: SGD."""

    lr: float = 0.01  # SGD base learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # L2 penalty (not stated in the paper; a common re-id choice)
    nesterov: bool = False  # Nesterov momentum (needs momentum > 0)


@dataclass
class ScheduleConfig:
    """``schedule``: epochs, backbone freezing, lr step (docs/design.md#recipe)."""

    epochs: int = 300  # total training epochs
    freeze_backbone_epochs: int = 100  # epochs at the start that train everything but the backbone
    lr_decay_epoch: int = 250  # first epoch at the decayed rate (= epochs: never decay)
    lr_decay_factor: float = 0.1  # lr multiplier from lr_decay_epoch on (0.01 -> 0.001)
    iters_per_epoch: int | None = None  # batches per epoch; null = one pass of the identity sampler


@dataclass
class EvalConfig:
    """``eval``: when and how the query/gallery split is evaluated (docs/design.md#protocol)."""

    every: int = 10  # evaluate every this many epochs (0 = only after the last epoch)
    flip: bool = False  # test-time augmentation: average sequences of the image and its mirror
    max_rank: int = 50  # length of the CMC curve
    keep_same_camera: bool = False  # keep same-id same-camera gallery items (off in the protocol)
    tile_mb: int = 256  # memory bound, in MiB, for one tile of the query x gallery matching
    # Sharded (several processes) and streamed evaluation compute the distances in blocks of
    # all queries x some gallery items; a block takes at most this many MiB.
    block_mb: int = 512
    # A folder: distance blocks go to files there and the metrics are computed block by block,
    # for galleries whose query x gallery matrix does not fit in memory (null = in memory).
    stream_to: str | None = None
    rerank: bool = False  # `duatm evaluate` also reports k-reciprocal re-ranked metrics
    rerank_k1: int = 20  # re-ranking k1: size of the k-reciprocal neighbourhoods (paper: 20)
    rerank_k2: int = 6  # re-ranking k2: neighbours averaged by query expansion (paper: 6; 1 = off)
    rerank_lambda: float = 0.3  # re-ranking lambda: weight of the original distance (paper: 0.3)


@dataclass
class SearchConfig:
    top: int = 10  # gallery items listed per query by `duatm search`
    shortlist: int = 1000  # first-stage candidates per query scored exactly (0 = whole gallery)
    backend: str = (
        "auto"  # first-stage neighbour search: "auto" (faiss if installed), "faiss", "torch"
    )
    index_dtype: str = (
        "float32"  # sequences in a saved index: "float32" or "float16" (half the size)
    )


@dataclass
class DistributedConfig:
    # SyncBatchNorm across ranks (CUDA only). Off: each rank's BatchNorm sees its own P x V
    # batch, the batch that batch-hard mining works on (docs/design.md#distributed).
    sync_batchnorm: bool = False
    timeout_s: float = 600.0  # seconds a collective waits for the other processes before failing


@dataclass
class DuATMConfig:
    """A whole run: one section per concern, checked by
    [`validate_config`][duatm.config.validate_config]; each key's meaning is its comment in the
    source (docs/guide/configs.md shows them)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    out_dir: str = "runs/default"  # run folder: config, checkpoints, metrics
    seed: int = 0  # seeds python, numpy and torch (and the identity sampler)
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:N" or "mps"
    amp: bool = True  # mixed precision on CUDA; ignored on other devices
    log_every: int = 20  # training iterations between metric records
    deterministic: bool = False  # deterministic algorithms (slower), for bit-wise reproducibility
    # torch's intra-op threads on the CPU (null: torch's default, one per core). Float sums are
    # split across threads, so a CPU run's numbers depend on it; pin it to repeat them elsewhere.
    cpu_threads: int | None = None


# --8<-- [end:schema]


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> DuATMConfig:
    """Build a checked config: schema defaults <- YAML file (and its `base:` chain) <- overrides.

    `path` is a YAML file, or the name of a shipped config ("market1501", "synthped", ...).
    `overrides` are "dotted.key=value" strings; values are parsed as YAML ("null", "true", "1e-3").
    Raises ConfigError naming the key, and the file or override it came from.
    """
    layers: list[tuple[str, DictConfig]] = []
    if path is not None:
        layers.extend(_read_chain(resolve_config_path(path), ()))
    layers.extend((f"override {item!r}", _parse_override(item)) for item in overrides)
    return _build(layers)


def resolve_config_path(path: str | Path) -> Path:
    """A config file path as given, or else the shipped config of that name."""
    given = Path(path)
    shipped = SHIPPED_CONFIGS / f"{given.name}.yaml"
    if given.is_file() or given.suffix or given.parent != Path() or not shipped.is_file():
        return given
    return shipped


def shipped_config_names() -> list[str]:
    """Names that `load_config` accepts in place of a path."""
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def config_to_dict(cfg: DuATMConfig) -> dict[str, Any]:
    """The config as plain nested dicts (for checkpoints, JSON and YAML)."""
    if not isinstance(cfg, DuATMConfig):
        raise TypeError(f"expected a DuATMConfig, got {type(cfg).__name__}")
    return dataclasses.asdict(cfg)


def config_from_dict(
    data: Mapping[str, Any], source: str = "config dict", overrides: Sequence[str] = ()
) -> DuATMConfig:
    """Rebuild a checked config from `config_to_dict` output (missing keys take the defaults),
    with optional "dotted.key=value" overrides on top (e.g. a checkpoint's config + CLI flags)."""
    layers = [(source, OmegaConf.create(dict(data)))]
    layers.extend((f"override {item!r}", _parse_override(item)) for item in overrides)
    return _build(layers)


def save_config(cfg: DuATMConfig, path: str | Path) -> None:
    """Write the config as YAML, atomically; `load_config(path)` gives it back."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def validate_config(cfg: DuATMConfig) -> None:
    """Check value ranges and choices that types cannot express; raise ConfigError naming the key."""
    m, d, lo, o, s, e = cfg.model, cfg.data, cfg.loss, cfg.optim, cfg.schedule, cfg.eval
    se = cfg.search
    _check("model.backbone", m.backbone, m.backbone in BACKBONE_NAMES, _one_of(BACKBONE_NAMES))
    _check("model.pretrained", m.pretrained, m.pretrained != "", '"imagenet", a path or null')
    _check("model.dim", m.dim, m.dim >= 1, "a positive integer")
    _check("model.mode", m.mode, m.mode in MATCHER_MODES, _one_of(MATCHER_MODES))
    _check("model.kind", m.kind, m.kind in MODEL_KINDS, _one_of(MODEL_KINDS))
    _check("model.rnn", m.rnn, m.rnn in RNN_KINDS, _one_of(RNN_KINDS))
    _check(
        "model.rnn_hidden",
        m.rnn_hidden,
        m.rnn_hidden is None or m.rnn_hidden >= 1,
        "a positive integer or null (= model.dim)",
    )
    _check("model.frame_chunk", m.frame_chunk, m.frame_chunk >= 1, "a positive integer")
    _check("model.attention_scale", m.attention_scale, m.attention_scale > 0, "a number > 0")
    _check(
        "model.attention_init",
        m.attention_init,
        m.attention_init in ATTENTION_INITS,
        _one_of(ATTENTION_INITS),
    )
    _check("data.dataset", d.dataset, d.dataset in DATASETS, _one_of(DATASETS))
    _check("data.root", d.root, bool(d.root), "a folder path")
    _check("data.height", d.height, d.height >= 1, "a positive integer")
    _check("data.width", d.width, d.width >= 1, "a positive integer")
    # Batch-hard mining needs a negative (P >= 2) and a positive (V >= 2) for every anchor.
    _check("data.num_identities", d.num_identities, d.num_identities >= 2, "an integer >= 2")
    _check("data.num_instances", d.num_instances, d.num_instances >= 2, "an integer >= 2")
    _check("data.num_workers", d.num_workers, d.num_workers >= 0, "an integer >= 0")
    _check("data.pad", d.pad, d.pad >= 0, "an integer >= 0")
    _check("data.flip_prob", d.flip_prob, 0.0 <= d.flip_prob <= 1.0, "a probability in [0, 1]")
    _check("data.random_erasing", d.random_erasing, 0.0 <= d.random_erasing <= 1.0, "in [0, 1]")
    _check(
        "data.val_identities",
        d.val_identities,
        d.val_identities >= 0 and (d.val_identities < 1 or float(d.val_identities).is_integer()),
        "0 (none), a fraction in (0, 1) or a whole number of identities",
    )
    _check("data.test_batch_size", d.test_batch_size, d.test_batch_size >= 1, "a positive integer")
    # A video model reads tracklets, an image model images: the dataset decides which it gets.
    needed = "video" if DATASETS[d.dataset].unit == "tracklets" else "image"
    _check(
        "model.kind",
        m.kind,
        m.kind == needed,
        f'"{needed}" for dataset {d.dataset} (it holds {DATASETS[d.dataset].unit})',
    )
    _check(
        "model.mode",
        m.mode,
        m.kind == "image" or m.mode != "intra" or d.test_clip_mode != "all",
        'dual, inter or avgpool with data.test_clip_mode "all" (intra needs equal lengths)',
    )
    num_splits = DATASETS[d.dataset].num_splits
    _check(
        "data.split",
        d.split,
        0 <= d.split < num_splits,
        f"0 (dataset {d.dataset} has one split)"
        if num_splits == 1
        else f"an integer in 0..{num_splits - 1} (dataset {d.dataset} has {num_splits} splits)",
    )
    _check("data.clip_len", d.clip_len, d.clip_len >= 1, "a positive integer")
    _check("data.clip_start", d.clip_start, d.clip_start in CLIP_STARTS, _one_of(CLIP_STARTS))
    _check(
        "data.test_clip_mode",
        d.test_clip_mode,
        d.test_clip_mode in TEST_CLIP_MODES,
        _one_of(TEST_CLIP_MODES),
    )
    _check("data.test_clip_len", d.test_clip_len, d.test_clip_len >= 1, "a positive integer")
    # Evaluation must give the same numbers every time: no random start.
    test_starts = [s for s in CLIP_STARTS if s != "random"]
    _check(
        "data.test_clip_start",
        d.test_clip_start,
        d.test_clip_start in test_starts,
        _one_of(test_starts),
    )
    _check("loss.margin", lo.margin, lo.margin >= 0.0, "a number >= 0")
    _check("loss.lambda1", lo.lambda1, lo.lambda1 >= 0.0, "a number >= 0")
    _check("loss.lambda2", lo.lambda2, lo.lambda2 >= 0.0, "a number >= 0")
    # Dropping every weight always would leave only the uniform fallback: p = 1 is refused.
    _check("loss.drop_prob", lo.drop_prob, 0.0 <= lo.drop_prob < 1.0, "a probability in [0, 1)")
    _check("loss.ce_head", lo.ce_head, lo.ce_head in CE_HEADS, _one_of(CE_HEADS))
    _check("loss.ce_scale", lo.ce_scale, lo.ce_scale > 0.0, "a number > 0")
    _check("optim.lr", o.lr, o.lr > 0.0, "a number > 0")
    _check("optim.momentum", o.momentum, 0.0 <= o.momentum < 1.0, "a number in [0, 1)")
    _check("optim.weight_decay", o.weight_decay, o.weight_decay >= 0.0, "a number >= 0")
    _check("optim.nesterov", o.nesterov, not o.nesterov or o.momentum > 0, "false when momentum=0")
    _check("schedule.epochs", s.epochs, s.epochs >= 1, "a positive integer")
    _check(
        "schedule.freeze_backbone_epochs",
        s.freeze_backbone_epochs,
        s.freeze_backbone_epochs >= 0,
        "an integer >= 0 (>= schedule.epochs: frozen for the whole run)",
    )
    _check(
        "schedule.lr_decay_epoch",
        s.lr_decay_epoch,
        s.lr_decay_epoch >= 0,
        "an integer >= 0 (>= schedule.epochs: never decayed)",
    )
    _check("schedule.lr_decay_factor", s.lr_decay_factor, 0 < s.lr_decay_factor <= 1, "in (0, 1]")
    _check(
        "schedule.iters_per_epoch",
        s.iters_per_epoch,
        s.iters_per_epoch is None or s.iters_per_epoch >= 1,
        "a positive integer or null",
    )
    _check("eval.every", e.every, e.every >= 0, "an integer >= 0")
    _check("eval.max_rank", e.max_rank, e.max_rank >= 1, "a positive integer")
    _check("eval.tile_mb", e.tile_mb, e.tile_mb >= 1, "a positive integer")
    _check("eval.block_mb", e.block_mb, e.block_mb >= 1, "a positive integer")
    _check("eval.stream_to", e.stream_to, e.stream_to != "", "a folder path or null")
    t = cfg.distributed.timeout_s
    _check("distributed.timeout_s", t, 0 < t < float("inf"), "a number of seconds > 0")
    _check("eval.rerank_k1", e.rerank_k1, e.rerank_k1 >= 1, "a positive integer")
    _check("eval.rerank_k2", e.rerank_k2, e.rerank_k2 >= 1, "a positive integer")
    _check("eval.rerank_lambda", e.rerank_lambda, 0 <= e.rerank_lambda <= 1, "a number in [0, 1]")
    _check("search.top", se.top, se.top >= 1, "a positive integer")
    _check("search.shortlist", se.shortlist, se.shortlist >= 0, "an integer >= 0 (0 = exact)")
    _check("search.backend", se.backend, se.backend in SEARCH_BACKENDS, _one_of(SEARCH_BACKENDS))
    _check(
        "search.index_dtype", se.index_dtype, se.index_dtype in INDEX_DTYPES, _one_of(INDEX_DTYPES)
    )
    _check("out_dir", cfg.out_dir, bool(cfg.out_dir), "a folder path")
    _check("seed", cfg.seed, 0 <= cfg.seed < 2**32, "an integer in [0, 2**32)")
    _check(
        "device",
        cfg.device,
        _DEVICE_PATTERN.fullmatch(cfg.device) is not None,
        '"auto", "cpu", "cuda", "cuda:N" or "mps"',
    )
    _check("log_every", cfg.log_every, cfg.log_every >= 1, "a positive integer")
    _check(
        "cpu_threads",
        cfg.cpu_threads,
        cfg.cpu_threads is None or cfg.cpu_threads >= 1,
        "a positive integer or null",
    )


def _one_of(names: Sequence[str] | Mapping[str, object]) -> str:
    return "one of " + ", ".join(names)


def _check(key: str, value: object, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def _read_chain(path: Path, stack: tuple[Path, ...]) -> list[tuple[str, DictConfig]]:
    """The YAML file and the files it inherits from, most basic first."""
    resolved = path.resolve()
    if resolved in stack:
        cycle = " -> ".join(str(p) for p in (*stack, resolved))
        raise ConfigError(f"config inheritance cycle: {cycle}")
    if not path.is_file():
        names = ", ".join(shipped_config_names())
        raise ConfigError(f"config file not found: {path} (shipped configs by name: {names})")
    try:
        node = OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    layers: list[tuple[str, DictConfig]] = []
    if BASE_KEY in node:
        base = node.pop(BASE_KEY)
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: {BASE_KEY} must name a YAML file, got {base!r}")
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"{path}: {BASE_KEY} file not found: {base_path}")
        layers.extend(_read_chain(base_path, (*stack, resolved)))
    layers.append((str(path), node))
    return layers


def _parse_override(item: str) -> DictConfig:
    key, sep, _ = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key=value, e.g. optim.lr=0.001")
    try:
        return OmegaConf.from_dotlist([item])
    except OmegaConfBaseException as err:
        raise ConfigError(f"override {item!r}: {_first_line(err)}") from err


def _build(layers: Sequence[tuple[str, DictConfig]]) -> DuATMConfig:
    merged = OmegaConf.structured(DuATMConfig)
    for source, node in layers:
        _check_sections(merged, OmegaConf.to_container(node, resolve=False), "", source)
        try:
            merged = OmegaConf.merge(merged, node)
        except OmegaConfBaseException as err:
            raise _wrap(err, source) from err
    try:
        cfg = cast(DuATMConfig, OmegaConf.to_object(merged))
    except OmegaConfBaseException as err:
        raise _wrap(err, "config") from err
    validate_config(cfg)
    return cfg


def _check_sections(schema: DictConfig, node: Any, prefix: str, source: str) -> None:
    """Name the key when a section (model, data, ...) is given a plain value instead of a mapping."""
    for key, value in node.items():
        section = schema.get(key) if key in schema else None
        if not isinstance(section, DictConfig):
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {prefix}{key} must be a mapping of keys, got {value!r}")
        _check_sections(section, value, f"{prefix}{key}.", source)


def _wrap(err: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(err, "full_key", None)
    message = _first_line(err)
    if isinstance(err, ConfigKeyError) and key:
        hint = message.partition("Did you mean: ")[2]
        suffix = f" (did you mean {hint.rstrip('?')}?)" if hint else ""
        return ConfigError(f"{source}: unknown key {key!r}{suffix}")
    return ConfigError(f"{source}: {key}: {message}" if key else f"{source}: {message}")


def _first_line(err: Exception) -> str:
    text = getattr(err, "msg", None) or str(err)
    return str(text).splitlines()[0]
