"""Training DuATM with the paper's recipe: checkpoints every epoch, exact resume, periodic evaluation.

An epoch is a pure function of (config, seed, epoch number, state at its start): the sampler
order, the loader's worker seeds and the global random generators are all reseeded from
(seed, epoch) when it begins. A checkpoint written at the end of epoch k therefore resumes into
exactly the run that would have continued, which `tests/test_engine.py` checks weight for weight.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from duatm import __version__
from duatm.config import DuATMConfig, config_from_dict, config_to_dict, save_config
from duatm.data.datasets import ReIDDataset
from duatm.data.transforms import normalise
from duatm.engine.builders import (
    autocast_for,
    build_model,
    build_test_loader,
    build_train_loader,
    load_dataset,
    resolve_device,
)
from duatm.engine.checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    save_checkpoint,
)
from duatm.engine.evaluator import RESULTS_JSON, evaluate, write_results
from duatm.engine.metrics_log import METRICS_JSONL, MetricsLogger, plot_metrics
from duatm.engine.seed import seed_epoch, seed_everything
from duatm.losses import DuATMLoss
from duatm.metrics import RankMetrics
from duatm.metrics.report import format_rank_table, rank_metrics_to_dict

_LOG = logging.getLogger(__name__)
CONFIG_YAML = "config.yaml"
CURVES_PNG = "curves.png"
# Bumped when the checkpoint layout changes, so old files get a clear error, not a KeyError.
CHECKPOINT_FORMAT = 1


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped before saving the broken weights."""


def learning_rate(cfg: DuATMConfig, epoch: int) -> float:
    """The paper's step schedule: ``optim.lr``, times ``lr_decay_factor`` from ``lr_decay_epoch``."""
    decayed = epoch >= cfg.schedule.lr_decay_epoch
    return cfg.optim.lr * (cfg.schedule.lr_decay_factor if decayed else 1.0)


def backbone_frozen(cfg: DuATMConfig, epoch: int) -> bool:
    """Whether the backbone is frozen in ``epoch`` (the paper's first stage)."""
    return epoch < cfg.schedule.freeze_backbone_epochs


class Trainer:
    """Trains one model of ``cfg`` in ``cfg.out_dir`` and evaluates it on the query/gallery split.

    Args:
        cfg: a checked run config.
        dataset: the dataset to use instead of loading ``cfg.data`` (tests, the demo).
        resume_from: a checkpoint written by a Trainer; training continues after its epoch.
        progress: show progress bars.
    """

    def __init__(
        self,
        cfg: DuATMConfig,
        *,
        dataset: ReIDDataset[Any] | None = None,
        resume_from: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.progress = progress
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed, cfg.deterministic)
        self.run_dir = Path(cfg.out_dir)
        self.dataset = dataset if dataset is not None else load_dataset(cfg)
        checkpoint = load_checkpoint(resume_from) if resume_from is not None else None
        self.model = build_model(
            cfg, self.dataset.num_train_pids, load_pretrained=checkpoint is None
        ).to(self.device)
        self.criterion = DuATMLoss(
            cfg.loss.margin, cfg.loss.lambda1, cfg.loss.lambda2, cfg.loss.drop_prob
        )
        o = cfg.optim
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=o.lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            nesterov=o.nesterov,
        )
        self.train_loader, self.sampler = build_train_loader(cfg, self.dataset.train)
        self.query_loader = build_test_loader(cfg, self.dataset.query)
        self.gallery_loader = build_test_loader(cfg, self.dataset.gallery)
        self.amp = cfg.amp and self.device.type == "cuda"
        # float16 autocast needs loss scaling; bfloat16 (chosen where supported) does not.
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp and not torch.cuda.is_bf16_supported()
        )
        self.epoch = 0  # the next epoch to run
        self.step = 0  # optimiser steps taken
        self.iteration = 0  # within the current epoch, for messages
        self.seconds = 0.0  # wall time spent in training and evaluation, over all sessions
        self.best: dict[str, float | int] | None = None  # {"mAP": ..., "epoch": ...}
        if checkpoint is not None:
            self._restore(checkpoint, str(resume_from))

    @property
    def iterations_per_epoch(self) -> int:
        return len(self.sampler)

    def fit(self, stop_after: int | None = None) -> RankMetrics | None:
        """Train until ``schedule.epochs`` (or until ``stop_after`` epochs are done) and return
        the final evaluation, or None when stopped early or already complete."""
        cfg = self.cfg
        last = cfg.schedule.epochs if stop_after is None else min(stop_after, cfg.schedule.epochs)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / CONFIG_YAML)
        final: RankMetrics | None = None
        with MetricsLogger(self.run_dir, keep_until_step=self.step) as logger:
            while self.epoch < last:
                epoch, started = self.epoch, time.perf_counter()
                self._train_epoch(logger)
                self._check_weights_finite()
                metrics = None
                if self._evaluate_after(epoch):
                    metrics = self.evaluate(logger)
                    if epoch + 1 == cfg.schedule.epochs:
                        final = metrics
                self.seconds += time.perf_counter() - started
                self._save(metrics)
        if final is not None:
            self._finish(final)
        return final

    def evaluate(self, logger: MetricsLogger | None = None) -> RankMetrics:
        """Rank metrics of the current model on the query/gallery split (logged when a logger is
        given)."""
        e = self.cfg.eval
        metrics, timings = evaluate(
            self.model,
            self.query_loader,
            self.gallery_loader,
            self.device,
            flip=e.flip,
            amp=self.amp,
            tile_mb=e.tile_mb,
            max_rank=e.max_rank,
            keep_same_camera=e.keep_same_camera,
            progress=self.progress,
        )
        summary = rank_metrics_to_dict(metrics)
        del summary["cmc"]
        if logger is not None:
            logger.log("eval", {**summary, **timings}, step=self.step, epoch=self.epoch)
        tqdm.write(f"epoch {self.epoch}: evaluation\n{format_rank_table(metrics)}")
        return metrics

    def _evaluate_after(self, epoch: int) -> bool:
        every = self.cfg.eval.every
        return epoch + 1 == self.cfg.schedule.epochs or (every > 0 and (epoch + 1) % every == 0)

    def _start_epoch(self, epoch: int) -> None:
        torch_seed = seed_epoch(self.cfg.seed, epoch)
        self.sampler.set_epoch(epoch)
        generator = self.train_loader.generator
        assert generator is not None  # build_train_loader always gives one
        generator.manual_seed(torch_seed)
        if backbone_frozen(self.cfg, epoch):
            self.model.freeze_backbone()
        else:
            self.model.unfreeze_backbone()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, epoch)
        self.model.train()

    def _train_epoch(self, logger: MetricsLogger) -> None:
        epoch, cfg = self.epoch, self.cfg
        self._start_epoch(epoch)
        sums: dict[str, float] = defaultdict(float)
        images_seen, start = 0, time.perf_counter()
        window_images, window_start = 0, start
        bar = tqdm(
            self.train_loader,
            total=self.iterations_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}",
            unit="it",
            disable=not self.progress,
            leave=False,
        )
        iteration = -1
        for iteration, batch in enumerate(bar):
            self.iteration = iteration
            terms = self.train_step(batch)
            for name, value in terms.items():
                sums[name] += value
            size = len(batch["pid"])
            images_seen += size
            window_images += size
            if self.step % cfg.log_every == 0:
                now = time.perf_counter()
                speed = window_images / max(now - window_start, 1e-9)
                window_images, window_start = 0, now
                logger.log(
                    "train",
                    {**terms, "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": speed},
                    step=self.step,
                    epoch=epoch + 1,  # 1-based in logs, as on the console and in eval records
                )
            bar.set_postfix(
                loss=f"{terms['total']:.3f}",
                tri=f"{terms['triplet']:.3f}",
                dec=f"{terms['decorrelation']:.3f}",
                ce=f"{terms['cross_entropy']:.3f}",
                img_s=f"{images_seen / max(time.perf_counter() - start, 1e-9):.0f}",
            )
        bar.close()
        seconds = time.perf_counter() - start
        means = {name: total / (iteration + 1) for name, total in sums.items()}
        logger.log(
            "epoch",
            {**means, "seconds": seconds, "images_per_s": images_seen / max(seconds, 1e-9)},
            step=self.step,
            epoch=epoch + 1,
        )
        tqdm.write(
            f"epoch {epoch + 1}/{cfg.schedule.epochs}: "
            + "  ".join(f"{name} {value:.4f}" for name, value in means.items())
            + f"  ({seconds:.1f} s, {images_seen / max(seconds, 1e-9):.0f} img/s)"
        )
        self.epoch += 1

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimiser step on a batch (``image``, ``pid``); returns the loss terms as floats.

        Raises TrainingDiverged, before touching the weights, when the loss is not finite.
        """
        images = normalise(batch["image"].to(self.device, non_blocking=True))
        pids = batch["pid"].to(self.device, non_blocking=True)
        with autocast_for(self.device, self.amp):
            sequences = self.model(images)
        # The matcher and losses run in float32: attention logits and distances are sensitive.
        sequences = sequences.float()
        losses = self.criterion(
            self.model.pairwise_distances(sequences), sequences, pids, self.model.classifier
        )
        terms = losses.as_floats()
        if not math.isfinite(terms["total"]):
            raise TrainingDiverged(
                f"loss became {terms['total']} at epoch {self.epoch + 1}, "
                f"iteration {self.iteration + 1} (terms: {terms}); stopping without saving, "
                f"{self._last_good_checkpoint(self.epoch)}. Try a lower optim.lr."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return terms

    def _check_weights_finite(self) -> None:
        """After an epoch: a finite loss can still leave NaN/inf weights behind (the step it
        took); such weights must not be evaluated or saved as the last good checkpoint."""
        bad = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise TrainingDiverged(
                f"weights became non-finite during epoch {self.epoch} ({len(bad)} tensors, "
                f"e.g. {bad[0]}); stopping without saving, "
                f"{self._last_good_checkpoint(self.epoch - 1)}. Try a lower optim.lr."
            )

    def _last_good_checkpoint(self, epochs_done: int) -> str:
        saved = self.run_dir / LAST_CHECKPOINT
        if saved.is_file():
            return f"the last good checkpoint is {saved} (after epoch {epochs_done})"
        return "no checkpoint was written yet"

    def _state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "duatm_version": __version__,
            "config": config_to_dict(self.cfg),
            "num_classes": self.dataset.num_train_pids,
            "epoch": self.epoch,
            "step": self.step,
            "seconds": self.seconds,
            "best": self.best,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": capture_rng_state(),
        }

    def _save(self, metrics: RankMetrics | None) -> None:
        state = self._state()
        improved = metrics is not None and (self.best is None or metrics.mAP > self.best["mAP"])
        if improved:
            assert metrics is not None
            self.best = {"mAP": float(metrics.mAP), "epoch": self.epoch}
            state["best"] = self.best
            save_checkpoint(self.run_dir / BEST_CHECKPOINT, state)
        save_checkpoint(self.run_dir / LAST_CHECKPOINT, state)

    def _restore(self, state: dict[str, Any], source: str) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{source}: checkpoint format {state.get('format')!r}, this duatm reads format "
                f"{CHECKPOINT_FORMAT}"
            )
        if state["num_classes"] != self.dataset.num_train_pids:
            raise CheckpointError(
                f"{source} was trained on {state['num_classes']} identities; the dataset at "
                f"{self.cfg.data.root} has {self.dataset.num_train_pids}"
            )
        _warn_config_changes(config_from_dict(state["config"], source), self.cfg, source)
        load_model_state(self.model, state["model"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        restore_rng_state(state["rng"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        self.seconds = state["seconds"]
        _LOG.info("resumed from %s after epoch %d", source, self.epoch)

    def _finish(self, metrics: RankMetrics) -> None:
        write_results(
            self.run_dir / RESULTS_JSON,
            metrics,
            epoch=self.epoch,
            train_seconds=self.seconds,
            checkpoint=str(self.run_dir / LAST_CHECKPOINT),
            config=config_to_dict(self.cfg),
        )
        try:
            plot_metrics(self.run_dir / METRICS_JSONL, self.run_dir / CURVES_PNG)
        except ValueError as err:  # nothing plottable (e.g. a single-step run)
            _LOG.warning("no training curves drawn: %s", err)


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
