"""A run's scalar history: metrics.jsonl (the record), metrics.csv (a spreadsheet view), TensorBoard.

Why: training curves and evaluation results must survive crashes and resumes and be readable
without TensorBoard. Every `log` call appends one JSON object per line to metrics.jsonl:

    {"kind": "train", "step": 1200, "epoch": 3, "wall_time": 1.7e9, "total": 0.41, ...}

`kind` separates record families ("train" for loss terms, "eval" for R1/mAP, ...); metrics.csv
has one row per record and the union of all keys as columns (blank where a record lacks one).
Non-finite numbers are written as NaN/Infinity, which Python's json module reads back.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from duatm.atomic import atomic_open

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
# Fields every record carries, first in the CSV; the rest are the logged metrics.
RECORD_FIELDS = ("kind", "step", "epoch", "wall_time")

_LOG = logging.getLogger(__name__)
_tensorboard_missing_logged = False


class MetricsLogger:
    """Append scalar records to `run_dir`; reopening a run folder continues its files.

    ``keep_until_step``: the step the run continues from (its checkpoint's). Records logged
    after it describe work that was lost with the crash and is about to be redone, so they are
    dropped (and TensorBoard purges its events past that step); otherwise a resumed run would
    log those steps twice.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = True,
        keep_until_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / METRICS_JSONL
        self.csv_path = self.run_dir / METRICS_CSV
        _drop_partial_last_line(self.jsonl_path)
        records = read_metrics(self.jsonl_path) if self.jsonl_path.exists() else []
        if keep_until_step is not None:
            records = _drop_records_after(self.jsonl_path, records, keep_until_step)
        self._columns = _columns_of(records)
        # The CSV is a view of the JSONL: rebuilt on open, it cannot lag behind after a crash.
        _write_csv(self.csv_path, self._columns, records)
        self._jsonl = self.jsonl_path.open("a", encoding="utf-8")
        self._csv = self.csv_path.open("a", encoding="utf-8", newline="")
        self._tensorboard = (
            _open_tensorboard(
                self.run_dir / TENSORBOARD_DIR,
                purge_step=None if keep_until_step is None else keep_until_step + 1,
            )
            if tensorboard
            else None
        )

    def log(
        self,
        kind: str,
        metrics: Mapping[str, Any],
        *,
        step: int,
        epoch: int | float | None = None,
    ) -> dict[str, Any]:
        """Record `metrics` (name -> number, string, bool or None) at global `step`; returns it."""
        clashes = sorted(set(metrics) & set(RECORD_FIELDS))
        if clashes:
            raise ValueError(f"metric names {clashes} are reserved for the record's own fields")
        record: dict[str, Any] = {
            "kind": kind,
            "step": int(step),
            "epoch": epoch,
            "wall_time": time.time(),
        }
        record.update((name, _scalar(name, value)) for name, value in metrics.items())
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        new_columns = [name for name in record if name not in self._columns]
        if new_columns:
            self._columns += new_columns
            self._csv.close()
            _write_csv(self.csv_path, self._columns, read_metrics(self.jsonl_path))
            self._csv = self.csv_path.open("a", encoding="utf-8", newline="")
        else:
            csv.DictWriter(self._csv, self._columns, restval="").writerow(record)
            self._csv.flush()
        if self._tensorboard is not None:
            for name in metrics:
                if isinstance(record[name], (int, float)):
                    self._tensorboard.add_scalar(f"{kind}/{name}", record[name], record["step"])
        return record

    def close(self) -> None:
        """Flush and close the files (safe to call twice)."""
        self._jsonl.close()
        self._csv.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_metrics(jsonl_path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl, in the order they were logged."""
    path = Path(jsonl_path)
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON record: {err}") from err
    return records


#: Panels of the curves beside the training losses: the rank metrics and the matcher
#: diagnostics (docs/design.md#diagnostics), each for the test ("eval") and validation records.
RANK_CURVES = ("R1", "R5", "mAP", "mINP", "meanvec_mAP")  # the last: mean pooling, same features
DIAGNOSTIC_CURVES = (
    "intra_entropy",
    "inter_entropy",
    "uniform_entropy",
    "element_cosine",
    "rank_corr_meanvec",
)
_EVAL_KINDS = (("eval", "test"), ("val", "val"))


def plot_metrics(
    jsonl_path: str | Path,
    out_png: str | Path,
    *,
    train_keys: Sequence[str] | None = None,
    eval_keys: Sequence[str] | None = None,
) -> Path:
    """Draw training curves to a PNG: the "train" losses (mean per epoch), the rank metrics and
    the matcher diagnostics of the "eval" (test) and "val" records, against the epoch.

    ``train_keys`` defaults to every numeric training metric but the learning rate and speed;
    ``eval_keys`` to the rank metrics. Raises ValueError when the file holds no plottable record.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(jsonl_path)
    evaluated = {}
    diagnosed = {}
    for kind, label in _EVAL_KINDS:
        for name, curve in epoch_curves(records, kind, eval_keys or RANK_CURVES).items():
            evaluated[f"{label} {name}"] = curve
        for name, curve in epoch_curves(records, kind, DIAGNOSTIC_CURVES).items():
            diagnosed[f"{label} {name}"] = curve
    panels = [
        (
            "training losses (mean per epoch)",
            epoch_curves(records, "train", train_keys, {"lr", "images_per_s"}),
        ),
        ("evaluation", evaluated),
        ("is the attention attending? (diagnostics)", diagnosed),
    ]
    panels = [(title, series) for title, series in panels if series]
    if not panels:
        raise ValueError(f"{jsonl_path}: no train or eval records with an epoch to plot")
    figure = Figure(figsize=(6 * len(panels), 4), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, (title, series) in zip(
        figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        for name, (epochs, values) in series.items():
            axes.plot(epochs, values, marker="o" if len(epochs) < 30 else None, label=name)
        axes.set(title=title, xlabel="epoch")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    out_png = Path(out_png)
    with atomic_open(out_png, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    return out_png


def epoch_curves(
    records: Sequence[Mapping[str, Any]],
    kind: str,
    keys: Sequence[str] | None = None,
    skip: Collection[str] = (),
) -> dict[str, tuple[list[float], list[float]]]:
    """name -> (epochs, mean per epoch) for one kind of record, the numbers behind the plots.

    `keys=None` takes every numeric metric of that kind except those in `skip`.
    """
    chosen = [r for r in records if r.get("kind") == kind and r.get("epoch") is not None]
    if keys is None:
        keys = [
            name
            for name in _columns_of(chosen)
            if name not in RECORD_FIELDS and name not in skip and _numeric_in(chosen, name)
        ]
    series = {}
    for name in keys:
        by_epoch: dict[float, list[float]] = defaultdict(list)
        for record in chosen:
            value = record.get(name)
            if _is_number(value):
                by_epoch[record["epoch"]].append(value)
        if by_epoch:
            epochs = sorted(by_epoch)
            series[name] = (epochs, [math.fsum(by_epoch[e]) / len(by_epoch[e]) for e in epochs])
    return series


def _numeric_in(records: Sequence[Mapping[str, Any]], name: str) -> bool:
    return any(_is_number(record.get(name)) for record in records)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalar(name: str, value: Any) -> Any:
    """A JSON-ready scalar; one-element tensors and numpy scalars become Python numbers."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            converted = item()
        except (ValueError, RuntimeError):  # more than one element
            converted = None
        if type(converted) in (bool, int, float, str):
            return converted
    raise TypeError(
        f"metric {name!r} must be a number, string, bool or None, got {type(value).__name__}"
    )


def _columns_of(records: Sequence[Mapping[str, Any]]) -> list[str]:
    columns = list(RECORD_FIELDS)
    for record in records:
        columns.extend(name for name in record if name not in columns)
    return columns


def _write_csv(path: Path, columns: list[str], records: list[dict[str, Any]]) -> None:
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, restval="")
        writer.writeheader()
        writer.writerows(records)


def _drop_partial_last_line(path: Path) -> None:
    """Cut a record left half-written by a crash, so appended records start on their own line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    _LOG.warning("%s: dropping a half-written last record (%d bytes)", path, len(data) - keep)
    with atomic_open(path, "wb") as handle:
        handle.write(data[:keep])


def _drop_records_after(
    path: Path, records: list[dict[str, Any]], step: int
) -> list[dict[str, Any]]:
    """Rewrite ``path`` without the records logged after ``step``; returns those kept."""
    kept = [r for r in records if r["step"] <= step]
    if len(kept) < len(records):
        _LOG.warning(
            "%s: dropping %d record(s) logged after step %d, where the run resumes",
            path,
            len(records) - len(kept),
            step,
        )
        with atomic_open(path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in kept)
    return kept


def _open_tensorboard(log_dir: Path, purge_step: int | None) -> Any:
    """A SummaryWriter when tensorboard is installed, else None (said once, at debug level)."""
    global _tensorboard_missing_logged
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _tensorboard_missing_logged:
            _LOG.debug(
                "tensorboard is not installed; metrics go to %s and %s only",
                METRICS_JSONL,
                METRICS_CSV,
            )
            _tensorboard_missing_logged = True
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
