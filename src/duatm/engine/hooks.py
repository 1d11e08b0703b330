"""The trainer's hooks: each concern of a training run as one small object with a fixed place.

Why: `Trainer.fit` is only the loop (epochs, batches, optimiser steps). Everything a run does
around it (freezing the backbone, the learning-rate schedule, the non-finite guard, metric
logging, evaluation, checkpoints, the final results) is a hook, so new behaviour (distributed
training, EMA, a validation split, other schedules) is one more object in the list instead of
another branch in the loop. Hooks run in list order at every event; `default_hooks` gives the
order and says why it matters.

A hook that owns state which must survive a restart names a top-level checkpoint key in
``state_key`` and implements ``state_dict`` / ``load_state_dict``; the trainer puts that state
into every checkpoint and gives it back on resume. A hook with ``main_process_only`` runs on
rank 0 alone in a distributed run (it writes into the run folder).

Epoch numbers: during an epoch ``trainer.epoch`` is the 0-based index of the running epoch; in
``after_epoch`` it already counts the finished epochs (so it is the finished epoch's 1-based
number, as the console and the metric records show it).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from tqdm.auto import tqdm

from duatm.config import config_to_dict
from duatm.engine.checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from duatm.engine.diagnostics import REPORTED_DIAGNOSTICS, format_diagnostics
from duatm.engine.evaluator import RESULTS_JSON, write_results
from duatm.engine.metrics_log import METRICS_JSONL, plot_metrics
from duatm.metrics import RankMetrics
from duatm.metrics.report import format_rank_report, rank_metrics_to_dict

if TYPE_CHECKING:
    from duatm.engine.trainer import Trainer

_LOG = logging.getLogger(__name__)
CURVES_PNG = "curves.png"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped before saving the broken weights."""


class Hook:
    """One concern of a training run. Every method is a no-op here; override what you need."""

    #: Top-level checkpoint key of the state this hook owns (None: it owns none).
    state_key: str | None = None
    #: Run only on rank 0 of a distributed run (hooks that write into the run folder).
    main_process_only: bool = False

    def before_train(self, trainer: Trainer) -> None:
        """Once per `fit` call, before the first epoch it runs (also after a resume)."""

    def before_epoch(self, trainer: Trainer) -> None:
        """After the epoch's random streams are reseeded, before its first batch."""

    def after_loss(self, trainer: Trainer, terms: Mapping[str, float]) -> None:
        """The step's loss terms are known and nothing has changed yet (no backward, no step)."""

    def after_step(
        self, trainer: Trainer, batch: Mapping[str, Any], terms: Mapping[str, float]
    ) -> None:
        """After the optimiser step (``trainer.step`` counts it)."""

    def after_epoch(self, trainer: Trainer) -> None:
        """After the epoch's last step; ``trainer.epoch`` counts the finished epoch."""

    def after_train(self, trainer: Trainer) -> None:
        """After the last epoch of a `fit` call that ended normally (not after an exception)."""

    def state_dict(self) -> Any:
        """The state named by ``state_key``: plain values only (see `check_plain`)."""
        return None

    def load_state_dict(self, state: Any) -> None:
        """Put back what `state_dict` returned (from a checkpoint)."""


class BackboneFreeze(Hook):
    """The paper's first stage: the backbone stays frozen for the first ``epochs`` epochs."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def before_epoch(self, trainer: Trainer) -> None:
        if trainer.epoch < self.epochs:
            trainer.model.freeze_backbone()
        else:
            trainer.model.unfreeze_backbone()


class LRSchedule(Hook):
    """Sets every parameter group's learning rate to ``lr_at(epoch)`` when an epoch starts."""

    def __init__(self, lr_at: Callable[[int], float]) -> None:
        self.lr_at = lr_at

    def before_epoch(self, trainer: Trainer) -> None:
        for group in trainer.optimizer.param_groups:
            group["lr"] = self.lr_at(trainer.epoch)


class NonFiniteGuard(Hook):
    """Stops the run (TrainingDiverged) when the loss or, after an epoch, the weights are not
    finite, before anything broken is evaluated or saved; says where the last good checkpoint is.

    Place it before the evaluation and checkpoint hooks: its ``after_epoch`` must run first.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def after_loss(self, trainer: Trainer, terms: Mapping[str, float]) -> None:
        if not math.isfinite(terms["total"]):
            where = ""
            if len(trainer.rank_losses) > 1:  # the terms are means over the ranks
                ranks = [
                    r
                    for r, own in enumerate(trainer.rank_losses)
                    if not math.isfinite(own["total"])
                ]
                where = f" on rank {', '.join(map(str, ranks))} of {len(trainer.rank_losses)}"
            raise TrainingDiverged(
                f"loss became {terms['total']}{where} at epoch {trainer.epoch + 1}, "
                f"iteration {trainer.iteration + 1} (terms: {dict(terms)}); stopping without "
                f"saving, {self._last_good(trainer.epoch)}. Try a lower optim.lr."
            )

    def after_epoch(self, trainer: Trainer) -> None:
        # A finite loss can still leave NaN/inf weights behind (the step it took).
        bad = [
            name
            for name, param in trainer.model.named_parameters()
            if not bool(torch.isfinite(param).all())
        ]
        if bad:
            raise TrainingDiverged(
                f"weights became non-finite during epoch {trainer.epoch} ({len(bad)} tensors, "
                f"e.g. {bad[0]}); stopping without saving, "
                f"{self._last_good(trainer.epoch - 1)}. Try a lower optim.lr."
            )

    def _last_good(self, epochs_done: int) -> str:
        saved = self.run_dir / LAST_CHECKPOINT
        if saved.is_file():
            return f"the last good checkpoint is {saved} (after epoch {epochs_done})"
        return "no checkpoint was written yet"


class MetricLogging(Hook):
    """Training records (``train`` every ``log_every`` steps, ``epoch`` per epoch), the progress
    bar's figures and the console line of each epoch."""

    main_process_only = True

    def __init__(self, log_every: int, epochs: int) -> None:
        self.log_every = log_every
        self.epochs = epochs

    def before_epoch(self, trainer: Trainer) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.images = 0
        self.start = time.perf_counter()
        self.window_images, self.window_start = 0, self.start

    def after_step(
        self, trainer: Trainer, batch: Mapping[str, Any], terms: Mapping[str, float]
    ) -> None:
        for name, value in terms.items():
            self.sums[name] += value
        size = len(batch["pid"]) * trainer.dist.world_size  # every rank's batch is as large
        self.steps += 1
        self.images += size
        self.window_images += size
        if trainer.step % self.log_every == 0:
            now = time.perf_counter()
            speed = self.window_images / max(now - self.window_start, 1e-9)
            self.window_images, self.window_start = 0, now
            trainer.log(
                "train",
                {**terms, "lr": trainer.optimizer.param_groups[0]["lr"], "images_per_s": speed},
                epoch=trainer.epoch + 1,  # 1-based in logs, as on the console and in eval records
            )
        if trainer.progress_bar is not None:
            trainer.progress_bar.set_postfix(
                loss=f"{terms['total']:.3f}",
                tri=f"{terms['triplet']:.3f}",
                dec=f"{terms['decorrelation']:.3f}",
                ce=f"{terms['cross_entropy']:.3f}",
                img_s=f"{self.images / max(time.perf_counter() - self.start, 1e-9):.0f}",
            )

    def after_epoch(self, trainer: Trainer) -> None:
        seconds = time.perf_counter() - self.start
        means = {name: total / self.steps for name, total in self.sums.items()}
        speed = self.images / max(seconds, 1e-9)
        trainer.log("epoch", {**means, "seconds": seconds, "images_per_s": speed})
        tqdm.write(
            f"epoch {trainer.epoch}/{self.epochs}: "
            + "  ".join(f"{name} {value:.4f}" for name, value in means.items())
            + f"  ({seconds:.1f} s, {speed:.0f} img/s)"
        )


class EvalOutcome(NamedTuple):
    """One evaluation: the metrics, the record logged for it, and the epoch it followed."""

    metrics: RankMetrics
    record: dict[str, Any]  # R1.., mAP, mINP, num_valid_queries, timings (what was logged)
    epoch: int


class Evaluation(Hook):
    """Evaluates the model on one query/gallery split every ``every`` epochs and after epoch
    ``last_epoch``; logs a record of kind ``kind`` and prints the table.

    ``evaluate(trainer)`` returns the metrics and the extra values of the record (timings,
    diagnostics). ``latest`` holds the outcome of the epoch that just ended, or None when this
    epoch was not evaluated; the checkpoint and results hooks read it, so which split selects
    ``best.pt`` and which one the results come from is a matter of wiring, not of the loop.
    """

    def __init__(
        self,
        evaluate: Callable[[Trainer], tuple[RankMetrics, Mapping[str, Any]]],
        *,
        every: int,
        last_epoch: int,
        kind: str = "eval",
        title: str = "evaluation",
    ) -> None:
        self.evaluate = evaluate
        self.every = every
        self.last_epoch = last_epoch
        self.kind = kind
        self.title = title
        self.latest: EvalOutcome | None = None

    def due(self, epochs_done: int) -> bool:
        """Whether to evaluate after ``epochs_done`` epochs."""
        every = self.every
        return epochs_done == self.last_epoch or (every > 0 and epochs_done % every == 0)

    def before_epoch(self, trainer: Trainer) -> None:
        self.latest = None

    def after_epoch(self, trainer: Trainer) -> None:
        if not self.due(trainer.epoch):
            return
        metrics, extra = self.evaluate(trainer)
        summary = rank_metrics_to_dict(metrics)
        del summary["cmc"]
        record = {**summary, **extra}
        trainer.log(self.kind, record)
        if trainer.is_main:
            diagnostics = format_diagnostics(record)
            tqdm.write(
                f"epoch {trainer.epoch}: {self.title}\n{format_rank_report(metrics)}"
                + (f"\n{diagnostics}" if diagnostics else "")
            )
        self.latest = EvalOutcome(metrics, record, trainer.epoch)


class WallClock(Hook):
    """Adds each epoch's wall time (training and evaluation) to ``trainer.seconds``.

    Place it after the evaluation hooks and before the checkpoint hook, so the time saved with
    a checkpoint covers the epoch's evaluation but not the save itself.
    """

    def before_epoch(self, trainer: Trainer) -> None:
        self.start = time.perf_counter()

    def after_epoch(self, trainer: Trainer) -> None:
        trainer.seconds += time.perf_counter() - self.start


class Checkpointing(Hook):
    """Writes ``last.pt`` after every epoch and ``best.pt`` when ``selection``'s latest value of
    ``metric`` (higher is better) beats the best so far; owns that best (checkpoint key
    ``best``: ``{metric: value, "epoch": n}`` or None)."""

    state_key = "best"
    main_process_only = True

    def __init__(self, run_dir: Path, selection: Evaluation | None, metric: str = "mAP") -> None:
        self.run_dir = run_dir
        self.selection = selection
        self.metric = metric
        self.best: dict[str, float | int] | None = None

    def after_epoch(self, trainer: Trainer) -> None:
        outcome = self.selection.latest if self.selection is not None else None
        if outcome is not None:
            value = float(outcome.record[self.metric])
            if self.best is None or value > self.best[self.metric]:
                self.best = {self.metric: value, "epoch": trainer.epoch}
                save_checkpoint(self.run_dir / BEST_CHECKPOINT, trainer.state_dict())
        save_checkpoint(self.run_dir / LAST_CHECKPOINT, trainer.state_dict())

    def state_dict(self) -> dict[str, float | int] | None:
        return self.best

    def load_state_dict(self, state: dict[str, float | int] | None) -> None:
        self.best = state


class FinalResults(Hook):
    """When the run reaches its last epoch: ``results.json`` and the training curves
    (``curves.png``).

    The top-level metrics of ``results.json`` are ``evaluation``'s (the test split) after the
    last epoch, with that evaluation's diagnostics. With a ``validation`` evaluation the file also
    holds the last validation record, and under ``selected`` the test metrics of ``best.pt``
    (the epoch the validation split selected), so a report can give both the fixed-schedule and
    the validation-selected number and say which is which.
    """

    main_process_only = True

    def __init__(
        self,
        run_dir: Path,
        evaluation: Evaluation,
        last_epoch: int,
        *,
        validation: Evaluation | None = None,
        checkpointing: Checkpointing | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.evaluation = evaluation
        self.last_epoch = last_epoch
        self.validation = validation
        self.checkpointing = checkpointing

    def after_train(self, trainer: Trainer) -> None:
        outcome = self.evaluation.latest
        if outcome is None or outcome.epoch != self.last_epoch:
            return
        extra: dict[str, Any] = {"selected_on": None}
        if self.validation is not None and self.validation.latest is not None:
            extra["validation"] = self.validation.latest.record
            extra["selected_on"] = "validation mAP"
            extra["selected"] = self._selected(trainer, outcome)
        write_results(
            self.run_dir / RESULTS_JSON,
            outcome.metrics,
            epoch=trainer.epoch,
            train_seconds=trainer.seconds,
            checkpoint=str(self.run_dir / LAST_CHECKPOINT),
            config=config_to_dict(trainer.cfg),
            diagnostics=_diagnostics_of(outcome.record),
            **extra,
        )
        try:
            plot_metrics(self.run_dir / METRICS_JSONL, self.run_dir / CURVES_PNG)
        except ValueError as err:  # nothing plottable (e.g. a single-step run)
            _LOG.warning("no training curves drawn: %s", err)

    def _selected(self, trainer: Trainer, last: EvalOutcome) -> dict[str, Any] | None:
        """Test metrics of the validation-selected ``best.pt`` (evaluated here unless it is the
        last epoch's model, whose test metrics are already known)."""
        best = self.checkpointing.best if self.checkpointing is not None else None
        if best is None:
            return None
        if best["epoch"] == last.epoch:
            metrics = last.metrics
        else:
            path = self.run_dir / BEST_CHECKPOINT
            state = load_checkpoint(path)
            model = copy.deepcopy(trainer.model)
            load_model_state(model, state["model"], str(path))
            metrics, _ = trainer.evaluate_test(model, alone=True)  # rank 0 only
        summary = rank_metrics_to_dict(metrics)
        del summary["cmc"]
        return {"checkpoint": str(self.run_dir / BEST_CHECKPOINT), **best, "test": summary}


def _diagnostics_of(record: Mapping[str, Any]) -> dict[str, float]:
    return {name: record[name] for name in REPORTED_DIAGNOSTICS if name in record}
