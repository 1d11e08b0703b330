"""Training DuATM with the paper's recipe: the loop, and the hooks that make a run of it.

`Trainer.fit` runs epochs of optimiser steps; everything else a run does (backbone freezing, the
learning-rate schedule, the non-finite guard, metric logging, periodic evaluation, checkpoints,
final results) is a hook from `duatm.engine.hooks`, in the order `default_hooks` gives.

An epoch is a pure function of (config, seed, epoch number, state at its start): the sampler
order, the loader's worker seeds and the global random generators are all reseeded from
(seed, epoch) when it begins. A checkpoint written at the end of epoch k therefore resumes into
exactly the run that would have continued, which `tests/test_engine.py` checks weight for weight.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from duatm import __version__
from duatm.config import ConfigError, DuATMConfig, config_from_dict, config_to_dict, save_config
from duatm.data.batches import batch_pixels
from duatm.data.datasets import ReIDDataset
from duatm.data.records import RecordT, count_pids
from duatm.data.transforms import normalise
from duatm.data.validation import ValidationSplit, carve_validation, validation_identity_count
from duatm.engine.builders import (
    autocast_for,
    build_model,
    build_test_loader,
    build_train_loader,
    load_dataset,
)
from duatm.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng_state,
    check_run_state,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
)
from duatm.engine.distributed import (
    SINGLE,
    DistContext,
    barrier,
    broadcast_buffers,
    current,
    mean_over_ranks,
    rank_device,
)
from duatm.engine.evaluator import OwnImages, check_protocol, evaluate, evaluation_options
from duatm.engine.hooks import (
    CURVES_PNG,
    BackboneFreeze,
    Checkpointing,
    Evaluation,
    FinalResults,
    Hook,
    LRSchedule,
    MetricLogging,
    NonFiniteGuard,
    TrainingDiverged,
    WallClock,
)
from duatm.engine.metrics_log import MetricsLogger
from duatm.engine.progress import Progress
from duatm.engine.run_folder import check_run_folder, locked_run_folder, probe_lock
from duatm.engine.seed import pin_cpu_threads, seed_epoch, seed_everything
from duatm.losses import DuATMLoss, LossOutput
from duatm.metrics import RankMetrics
from duatm.models.duatm import DuATM

__all__ = [
    "CHECKPOINT_FORMAT",
    "CONFIG_YAML",
    "CURVES_PNG",
    "Trainer",
    "TrainingDiverged",
    "backbone_frozen",
    "default_hooks",
    "learning_rate",
]

_LOG = logging.getLogger(__name__)
CONFIG_YAML = "config.yaml"
# Checkpoint keys the trainer itself owns; a hook's state_key must be none of them.
_CORE_KEYS = frozenset(
    {
        "format",
        "duatm_version",
        "config",
        "num_classes",
        "epoch",
        "step",
        "seconds",
        "model",
        "optimizer",
        "scaler",
        "sampler",
        "rng",
        "world_size",
    }
)


def learning_rate(cfg: DuATMConfig, epoch: int) -> float:
    """The paper's step schedule: ``optim.lr``, times ``lr_decay_factor`` from ``lr_decay_epoch``."""
    decayed = epoch >= cfg.schedule.lr_decay_epoch
    return cfg.optim.lr * (cfg.schedule.lr_decay_factor if decayed else 1.0)


def backbone_frozen(cfg: DuATMConfig, epoch: int) -> bool:
    """Whether the backbone is frozen in ``epoch`` (the paper's first stage)."""
    return epoch < cfg.schedule.freeze_backbone_epochs


def default_hooks(trainer: Trainer) -> list[Hook]:
    """The hooks of a run, in the order they run at every event. The order matters where one
    hook reads what another did: the guard checks the weights before anything evaluates or
    saves them; the clock stops after the evaluation and before the checkpoint that records it;
    the checkpoint selects ``best.pt`` on the evaluation that ran just before it."""
    cfg, run_dir = trainer.cfg, trainer.run_dir
    validation = trainer.validation_evaluation
    evaluations = [trainer.evaluation] if validation is None else [validation, trainer.evaluation]
    return [
        BackboneFreeze(cfg.schedule.freeze_backbone_epochs),
        LRSchedule(functools.partial(learning_rate, cfg)),
        NonFiniteGuard(run_dir),
        MetricLogging(cfg.log_every, cfg.schedule.epochs),
        *evaluations,
        WallClock(),
        # best.pt only ever comes from the validation split: never selected on the test set.
        checkpointing := Checkpointing(run_dir, selection=validation, metric="mAP"),
        FinalResults(
            run_dir,
            trainer.evaluation,
            cfg.schedule.epochs,
            validation=validation,
            checkpointing=checkpointing,
        ),
    ]


def split_validation(
    cfg: DuATMConfig, train: Sequence[RecordT]
) -> tuple[list[RecordT], ValidationSplit[RecordT] | None]:
    """The records to train on, and the validation split carved from them when
    ``data.val_identities`` asks for one (always the same identities for a given dataset)."""
    count = validation_identity_count(cfg.data.val_identities, count_pids(train))
    if count == 0:
        return list(train), None
    try:
        split = carve_validation(train, count)
    except ValueError as err:
        raise ConfigError(f"data.val_identities={cfg.data.val_identities}: {err}") from err
    return split.train, split


class _EvalSplit(NamedTuple):
    """A query/gallery pair the trainer evaluates on, with what its protocol needs."""

    query: DataLoader[Any]
    gallery: DataLoader[Any]
    distractor_pids: tuple[int, ...]
    own_images: OwnImages


class Trainer:
    """Trains one model of ``cfg`` in ``cfg.out_dir`` and evaluates it on the query/gallery split.

    ``hooks`` (built by `default_hooks`) is a plain list: insert or replace hooks before `fit`
    to change what a run does around the loop. ``evaluation`` is the test-split evaluation hook
    whose final outcome `fit` returns.

    The run folder is written by one process at a time (a lock held during `fit`), and a run
    never replaces another's files unasked: a folder that holds files is refused unless the
    run continues its own ``last.pt`` or ``overwrite`` is given (`duatm.engine.run_folder`).
    Whether the protocol can evaluate the query/gallery split is checked here, before any
    training.

    Args:
        cfg: a checked run config.
        dataset: the dataset to use instead of loading ``cfg.data`` (tests, the demo).
        resume_from: a checkpoint written by a Trainer; training continues after its epoch.
        overwrite: start afresh in a run folder that holds a run (its run files are deleted
            when `fit` starts), or continue from a checkpoint that replaces the folder's
            ``last.pt``.
        progress: show progress bars.
    """

    def __init__(
        self,
        cfg: DuATMConfig,
        *,
        dataset: ReIDDataset[Any] | None = None,
        resume_from: str | Path | None = None,
        overwrite: bool = False,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.progress = progress
        # Set by torchrun (`duatm.engine.distributed.process_group`); one process otherwise.
        self.dist = current()
        self.run_dir = Path(cfg.out_dir)
        self.overwrite = overwrite
        self._resume_path = None if resume_from is None else Path(resume_from)
        self._folder_checked = False  # the first `fit` checks the folder under its lock
        if self.is_main:  # fail before the slow start-up; `fit` checks again, locked
            probe_lock(self.run_dir)
            check_run_folder(self.run_dir, resume_from=resume_from, overwrite=overwrite)
        self.device = rank_device(cfg.device, self.dist)
        pin_cpu_threads(cfg.cpu_threads)
        seed_everything(cfg.seed, cfg.deterministic)
        self.dataset = (
            dataset if dataset is not None else load_dataset(cfg, verbose=self.dist.is_main)
        )
        self.train_records, self.validation = split_validation(cfg, self.dataset.train)
        self.num_classes = count_pids(self.train_records)
        checkpoint = load_checkpoint(resume_from) if resume_from is not None else None
        self.model = build_model(cfg, self.num_classes, load_pretrained=checkpoint is None).to(
            self.device
        )
        if cfg.distributed.sync_batchnorm and self.dist.enabled:
            if self.device.type != "cuda":
                raise ConfigError(
                    "distributed.sync_batchnorm=true needs CUDA devices (PyTorch's "
                    "SyncBatchNorm runs on GPUs only); set it to false on the CPU"
                )
            nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.criterion = DuATMLoss(
            cfg.loss.margin,
            cfg.loss.lambda1,
            cfg.loss.lambda2,
            cfg.loss.drop_prob,
            soft_margin=cfg.loss.soft_margin,
        )
        o = cfg.optim
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=o.lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            nesterov=o.nesterov,
        )
        self.train_loader, self.sampler = build_train_loader(
            cfg, self.train_records, rank=self.dist.rank, world_size=self.dist.world_size
        )
        self.query_loader = build_test_loader(cfg, self.dataset.query)
        self.gallery_loader = build_test_loader(cfg, self.dataset.gallery)
        self.test_split = self._eval_split(
            self.query_loader, self.gallery_loader, self.dataset.distractor_pids
        )
        # The validation identities are training identities: none is a distractor.
        self.validation_split = (
            None
            if self.validation is None
            else self._eval_split(
                build_test_loader(cfg, self.validation.query),
                build_test_loader(cfg, self.validation.gallery),
                (),
            )
        )
        self.amp = cfg.amp and self.device.type == "cuda"
        # float16 autocast needs loss scaling; bfloat16 (chosen where supported) does not.
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp and not torch.cuda.is_bf16_supported()
        )
        self._loss = _TrainingLoss(self.model, self.criterion, self.device, self.amp)
        self._ddp: DistributedDataParallel | None = None
        self._ddp_backbone_frozen = False
        self.rank_losses: list[dict[str, float]] = []  # every rank's loss terms of the last step
        self.epoch = 0  # the next epoch to run
        self.step = 0  # optimiser steps taken
        self.iteration = 0  # within the current epoch, for messages
        self.seconds = 0.0  # wall time spent in training and evaluation, over all sessions
        self.logger: MetricsLogger | None = None  # open during `fit`, on the main process
        self.progress_bar: Progress[Any] | None = None  # the current epoch's bar
        # With a validation split the test set is evaluated once, at the end: it is reported,
        # never watched. Without one, periodic test evaluations are the only progress report.
        self.validation_evaluation: Evaluation | None = None
        if self.validation_split is not None:
            self.validation_evaluation = Evaluation(
                functools.partial(self._evaluate_on, self.validation_split),
                every=cfg.eval.every,
                last_epoch=cfg.schedule.epochs,
                kind="val",
                title="validation",
            )
        self.evaluation = Evaluation(
            functools.partial(self._evaluate_on, self.test_split),
            every=0 if self.validation is not None else cfg.eval.every,
            last_epoch=cfg.schedule.epochs,
        )
        self.hooks: list[Hook] = default_hooks(self)
        self._resumed_hook_states: dict[str, Any] = {}
        self._resumed_from = ""
        if checkpoint is not None:
            self._restore(checkpoint, str(resume_from))

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder, logs and prints (rank 0)."""
        return self.dist.is_main

    @property
    def iterations_per_epoch(self) -> int:
        return len(self.sampler)

    def fit(self, stop_after: int | None = None) -> RankMetrics | None:
        """Train until ``schedule.epochs`` (or until ``stop_after`` epochs are done) and return
        the final evaluation, or None when stopped early or already complete."""
        last = self.cfg.schedule.epochs
        if stop_after is not None:
            last = min(stop_after, last)
        self.evaluation.latest = None
        self._restore_hook_states()
        with self._run_folder():
            self._call("before_train")
            while self.epoch < last:
                self._train_epoch()
                self._call("after_epoch")
            self._call("after_train")
        barrier(self.dist)  # every rank returns once rank 0 has written the run folder
        final = self.evaluation.latest
        return (
            final.metrics if final is not None and final.epoch == self.cfg.schedule.epochs else None
        )

    def log(self, kind: str, metrics: Mapping[str, Any], *, epoch: int | None = None) -> None:
        """A metric record at the current step (``epoch`` defaults to the epochs done); only the
        main process writes."""
        if self.logger is not None:
            self.logger.log(
                kind, metrics, step=self.step, epoch=self.epoch if epoch is None else epoch
            )

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds: the trainer's own state and each hook's."""
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "duatm_version": __version__,
            "config": config_to_dict(self.cfg),
            "num_classes": self.num_classes,
            "epoch": self.epoch,
            "step": self.step,
            "seconds": self.seconds,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": capture_rng_state(),
            "world_size": self.dist.world_size,
        }
        for hook in self._stateful_hooks():
            state[hook.state_key] = hook.state_dict()
        return state

    def _stateful_hooks(self) -> list[Any]:
        """Hooks that own checkpoint state; a key of the trainer's own would be overwritten."""
        hooks = [hook for hook in self.hooks if hook.state_key is not None]
        for hook in hooks:
            if hook.state_key in _CORE_KEYS:
                raise ValueError(
                    f"{type(hook).__name__}.state_key {hook.state_key!r} is the trainer's own"
                )
        return hooks

    def _restore_hook_states(self) -> None:
        """Give each stateful hook its state from the checkpoint resumed from (once)."""
        states, self._resumed_hook_states = self._resumed_hook_states, {}
        for hook in self._stateful_hooks():
            if hook.state_key in states:
                hook.load_state_dict(states[hook.state_key])
            elif self._resumed_from:
                _LOG.warning(
                    "%s holds no %r state for %s; it starts afresh",
                    self._resumed_from,
                    hook.state_key,
                    type(hook).__name__,
                )
        self._resumed_from = ""

    def _call(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            if self.is_main or not hook.main_process_only:
                getattr(hook, event)(self, *args)

    @contextlib.contextmanager
    def _run_folder(self) -> Iterator[None]:
        """The run folder, locked and open for writing during `fit` (main process only):
        config.yaml and the metric logs. Records logged after this run's step are dropped: they
        describe work lost with a crash, about to be redone."""
        if not self.is_main:
            yield
            return
        with locked_run_folder(
            self.run_dir,
            resume_from=self._resume_path,
            overwrite=self.overwrite,
            check=not self._folder_checked,
        ):
            self._folder_checked = True
            save_config(self.cfg, self.run_dir / CONFIG_YAML)
            with MetricsLogger(self.run_dir, keep_until_step=self.step) as logger:
                self.logger = logger
                try:
                    yield
                finally:
                    self.logger = None

    def _train_epoch(self) -> None:
        epoch, cfg = self.epoch, self.cfg
        torch_seed = seed_epoch(cfg.seed, epoch, self.dist.rank)
        self.sampler.set_epoch(epoch)
        generator = self.train_loader.generator
        assert generator is not None  # build_train_loader always gives one
        generator.manual_seed(torch_seed)
        self._call("before_epoch")
        self.model.train()
        # A live bar on a terminal only; logs get the epoch line the logging hook prints.
        self.progress_bar = Progress(
            self.train_loader,
            total=self.iterations_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}",
            unit="it",
            enabled=self.progress and self.is_main,
            summary=False,
        )
        try:
            for iteration, batch in enumerate(self.progress_bar):
                self.iteration = iteration
                terms = self.train_step(batch)
                self._call("after_step", batch, terms)
        finally:
            self.progress_bar.close()
            self.progress_bar = None
        with torch.no_grad():
            broadcast_buffers(self.model, self.dist)
        self.epoch += 1

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimiser step on a batch (``image`` or ``clip``, and ``pid``); returns the loss
        terms as floats (with several processes, their means over the ranks: the same numbers
        on every rank).

        The ``after_loss`` hooks see the terms before the weights change (the non-finite guard
        stops the run there, on every rank at once).
        """
        pixels, lengths = batch_pixels(batch)
        if lengths is not None:
            # The losses' per-sequence terms assume S elements; training clips are cut to
            # data.clip_len frames (circularly when shorter), so this means a misbuilt loader.
            raise ValueError(
                f"training clips must all have {pixels.shape[1]} frames; got lengths "
                f"{lengths.tolist()}"
            )
        inputs = normalise(pixels.to(self.device, non_blocking=True))
        pids = batch["pid"].to(self.device, non_blocking=True)
        losses = self._training_loss()(inputs, pids)
        terms, self.rank_losses = mean_over_ranks(losses.as_floats(), self.dist)
        self._call("after_loss", terms)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return terms

    def _training_loss(self) -> nn.Module:
        """The loss module, wrapped in DistributedDataParallel when there are several ranks.

        DDP leaves out parameters that do not require gradients when it is built, so it is
        rebuilt when the backbone is frozen or unfrozen (once in the paper's schedule); the
        old wrapper is collected first, so that its gradient hooks are gone.
        """
        if not self.dist.enabled:
            return self._loss
        frozen = self.model.backbone_frozen
        if self._ddp is None or self._ddp_backbone_frozen != frozen:
            self._ddp = None
            gc.collect()
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self._loss, device_ids=device_ids)
            self._ddp_backbone_frozen = frozen
        return self._ddp

    def evaluate_test(
        self, model: DuATM | None = None, *, alone: bool = False
    ) -> tuple[RankMetrics, dict[str, float]]:
        """Rank metrics of the current model (or ``model``) on the test query/gallery split;
        ``alone``: in this process only, even under torchrun (no collective, so one rank may
        call it while the others do not)."""
        return self._evaluate_on(self.test_split, self, model, dist=SINGLE if alone else None)

    def _eval_split(
        self,
        query_loader: DataLoader[Any],
        gallery_loader: DataLoader[Any],
        distractor_pids: Collection[int],
    ) -> _EvalSplit:
        """A query/gallery pair to evaluate on. Data the protocol cannot evaluate (one camera,
        disjoint identities) fails now, not after the first epochs; the query images found in
        the gallery are looked up once, here."""
        own_images = check_protocol(
            query_loader.dataset,
            gallery_loader.dataset,
            keep_same_camera=self.cfg.eval.keep_same_camera,
            distractor_pids=distractor_pids,
        )
        return _EvalSplit(query_loader, gallery_loader, tuple(distractor_pids), own_images)

    def _evaluate_on(
        self,
        split: _EvalSplit,
        trainer: Trainer,
        model: DuATM | None = None,
        dist: DistContext | None = None,
    ) -> tuple[RankMetrics, dict[str, float]]:
        """Rank metrics of the current model (or ``model``) on a query/gallery split, with the
        stage timings and the matcher diagnostics; shared over the ranks unless ``dist``."""
        e = self.cfg.eval
        return evaluate(
            self.model if model is None else model,
            split.query,
            split.gallery,
            self.device,
            **evaluation_options(e, amp=self.amp),
            distractor_pids=split.distractor_pids,
            own_images=split.own_images,
            progress=self.progress and self.is_main,
            dist=self.dist if dist is None else dist,
            stream_to=e.stream_to,
            block_mb=e.block_mb,
        )

    def _restore(self, state: dict[str, Any], source: str) -> None:
        # Checkpoints from before distributed training have no world_size: one process.
        check_run_state(state, source, keys=tuple(sorted(_CORE_KEYS - {"world_size"})))
        if state["num_classes"] != self.num_classes:
            raise CheckpointError(
                f"{source} was trained on {state['num_classes']} identities; the dataset at "
                f"{self.cfg.data.root} gives {self.num_classes} (data.val_identities="
                f"{self.cfg.data.val_identities} held out of training)"
            )
        if self.is_main:
            _warn_config_changes(config_from_dict(state["config"], source), self.cfg, source)
            _warn_world_size_change(state.get("world_size", 1), self.dist.world_size, source)
        load_model_state(self.model, state["model"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        restore_rng_state(state["rng"])
        self.epoch, self.step, self.seconds = state["epoch"], state["step"], state["seconds"]
        # Hook states are given back when `fit` starts, so hooks added after construction
        # get theirs too.
        self._resumed_hook_states = {
            key: value for key, value in state.items() if key not in _CORE_KEYS
        }
        self._resumed_from = source
        _LOG.info("resumed from %s after epoch %d", source, self.epoch)


class _TrainingLoss(nn.Module):
    """The whole training computation of a batch (sequences, the batch's B x B matcher
    distances, the three losses) as one module, so that DistributedDataParallel sees every
    parameter that gets a gradient: the matcher and the classifier run outside the model's own
    forward."""

    def __init__(
        self, model: nn.Module, criterion: DuATMLoss, device: torch.device, amp: bool
    ) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.device = device
        self.amp = amp

    def forward(self, inputs: Tensor, pids: Tensor) -> LossOutput:
        """``inputs``: normalised images (B, 3, H, W) or clips (B, T, 3, H, W)."""
        with autocast_for(self.device, self.amp):
            sequences = self.model(inputs)
        # The matcher and losses run in float32: attention logits and distances are sensitive.
        sequences = sequences.float()
        return self.criterion(
            self.model.pairwise_distances(sequences), sequences, pids, self.model.classifier
        )


def _warn_world_size_change(saved: int, current_size: int, source: str) -> None:
    """Resuming with another number of processes keeps the state but not the batches."""
    if saved != current_size:
        tqdm.write(
            f"resuming from {source}, trained on {saved} process(es), on {current_size}: "
            "weights, optimiser, step and epoch counters, best and metric logs carry on; from "
            f"here each step takes P x V x {current_size} images and epochs have "
            "correspondingly fewer steps (docs/design.md#distributed)"
        )


def _warn_config_changes(saved: DuATMConfig, current: DuATMConfig, source: str) -> None:
    """Resuming with a different config is allowed (e.g. more epochs) but never silent."""
    before, after = _flatten(config_to_dict(saved)), _flatten(config_to_dict(current))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        listed = ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed)
        tqdm.write(f"resuming from {source} with a changed config: {listed}")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
