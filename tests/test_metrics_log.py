"""duatm.engine.metrics_log: JSONL/CSV records, resume, TensorBoard when present, curve plots."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from duatm.engine.metrics_log import MetricsLogger, epoch_curves, plot_metrics, read_metrics


@pytest.fixture(autouse=True)
def no_tensorboard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behave the same whether or not tensorboard is installed (None in sys.modules = absent)."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)


def jsonl_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def csv_rows(run: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (run / "metrics.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_records_go_to_jsonl_and_csv_with_the_union_of_columns(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        logger.log("train", {"total": 1.5, "triplet": 0.25}, step=10, epoch=0)
        logger.log("train", {"total": 1.0, "triplet": 0.125}, step=20, epoch=0)
        logger.log("eval", {"R1": 0.5, "mAP": 0.375}, step=20, epoch=0)
        logger.log("train", {"total": 0.75, "triplet": 0.0625}, step=30, epoch=1)

    records = jsonl_records(tmp_path)
    assert [(r["kind"], r["step"], r["epoch"]) for r in records] == [
        ("train", 10, 0),
        ("train", 20, 0),
        ("eval", 20, 0),
        ("train", 30, 1),
    ]
    assert records[2]["R1"] == 0.5 and "total" not in records[2]
    assert all(isinstance(r["wall_time"], float) for r in records)

    header, rows = csv_rows(tmp_path)
    assert header == ["kind", "step", "epoch", "wall_time", "total", "triplet", "R1", "mAP"]
    assert len(rows) == 4
    assert [float(row["total"]) if row["total"] else None for row in rows] == [1.5, 1.0, None, 0.75]
    assert rows[0]["R1"] == "" and float(rows[2]["mAP"]) == 0.375  # rows from before R1 existed
    assert [float(row["wall_time"]) for row in rows] == [r["wall_time"] for r in records]


def test_reopening_a_run_appends_instead_of_truncating(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        logger.log("train", {"total": 2.0}, step=1, epoch=0)
    with MetricsLogger(tmp_path) as logger:
        logger.log("train", {"total": 1.0}, step=2, epoch=1)
        logger.log("eval", {"R1": 0.25}, step=2, epoch=1)
    assert [r["step"] for r in jsonl_records(tmp_path)] == [1, 2, 2]
    assert read_metrics(tmp_path / "metrics.jsonl") == jsonl_records(tmp_path)
    header, rows = csv_rows(tmp_path)
    assert header[-2:] == ["total", "R1"]
    assert [row["total"] for row in rows] == ["2.0", "1.0", ""]


def test_csv_that_lags_after_a_crash_is_rebuilt_on_reopen(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        logger.log("train", {"total": 2.0}, step=1, epoch=0)
        logger.log("train", {"total": 1.0}, step=2, epoch=0)
    lines = (tmp_path / "metrics.csv").read_text().splitlines(keepends=True)
    (tmp_path / "metrics.csv").write_text("".join(lines[:-1]))  # the last row never reached it
    MetricsLogger(tmp_path).close()
    assert [row["step"] for row in csv_rows(tmp_path)[1]] == ["1", "2"]


def test_half_written_last_record_is_dropped_on_reopen(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        logger.log("train", {"total": 2.0}, step=1, epoch=0)
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"kind": "train", "st')  # a crash in the middle of a write
    with MetricsLogger(tmp_path) as logger:
        logger.log("train", {"total": 1.0}, step=2, epoch=0)
    assert [r["step"] for r in jsonl_records(tmp_path)] == [1, 2]


def test_resuming_drops_the_records_logged_after_the_checkpoint_step(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        for step in (1, 2, 3, 4):
            logger.log("train", {"total": float(step)}, step=step, epoch=step // 3)
        logger.log("eval", {"R1": 0.5}, step=2, epoch=0)
    with MetricsLogger(tmp_path, keep_until_step=2) as logger:
        assert [r["step"] for r in jsonl_records(tmp_path)] == [1, 2, 2]
        assert [row["step"] for row in csv_rows(tmp_path)[1]] == ["1", "2", "2"]
        logger.log("train", {"total": 30.0}, step=3, epoch=1)
    assert [(r["step"], r.get("total")) for r in jsonl_records(tmp_path)] == [
        (1, 1.0),
        (2, 2.0),
        (2, None),
        (3, 30.0),
    ]
    assert [row["total"] for row in csv_rows(tmp_path)[1]] == ["1.0", "2.0", "", "30.0"]


def test_tensor_and_numpy_scalars_are_stored_as_numbers(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        record = logger.log(
            "train",
            {
                "total": torch.tensor(0.5),
                "count": np.int64(3),
                "lr": np.float64(0.01),
                "note": "ok",
            },
            step=1,
        )
    assert record["total"] == 0.5 and type(record["total"]) is float
    assert record["count"] == 3 and type(record["count"]) is int
    assert type(record["lr"]) is float
    assert jsonl_records(tmp_path)[0]["note"] == "ok"


def test_bad_metric_values_and_reserved_names_are_rejected(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        with pytest.raises(TypeError, match="'loss'"):
            logger.log("train", {"loss": torch.ones(2)}, step=1)
        with pytest.raises(ValueError, match="reserved"):
            logger.log("train", {"step": 3}, step=1)
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_tensorboard_gets_numeric_scalars_when_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple] = []

    class FakeWriter:
        def __init__(self, log_dir: str, purge_step: int | None) -> None:
            calls.append(("open", log_dir, purge_step))

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            calls.append((tag, value, step))

        def close(self) -> None:
            calls.append(("close",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    with MetricsLogger(tmp_path) as logger:
        logger.log("eval", {"R1": 0.5, "split": "test"}, step=7, epoch=1)
    board = str(tmp_path / "tensorboard")
    assert calls == [("open", board, None), ("eval/R1", 0.5, 7), ("close",)]
    calls.clear()
    # Resuming from step 5: TensorBoard purges the events logged after it.
    MetricsLogger(tmp_path, keep_until_step=5).close()
    assert calls == [("open", board, 6), ("close",)]


def test_without_tensorboard_logging_still_works(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        logger.log("train", {"total": 1.0}, step=1)
    assert not (tmp_path / "tensorboard").exists()
    assert len(jsonl_records(tmp_path)) == 1


def test_epoch_curves_average_each_epoch_and_skip_what_is_asked() -> None:
    records = [
        {"kind": "train", "step": 1, "epoch": 0, "total": 3.0, "lr": 0.1, "note": "x"},
        {"kind": "train", "step": 2, "epoch": 0, "total": 1.0, "lr": 0.1},
        {"kind": "eval", "step": 2, "epoch": 0, "R1": 0.5},
        {"kind": "train", "step": 3, "epoch": 1, "total": 0.5, "lr": 0.01},
        {"kind": "train", "step": 4, "epoch": None, "total": 9.0},  # no epoch: not plottable
    ]
    assert epoch_curves(records, "train", skip={"lr"}) == {"total": ([0, 1], [2.0, 0.5])}
    assert epoch_curves(records, "train", keys=["lr"]) == {"lr": ([0, 1], [0.1, 0.01])}
    assert epoch_curves(records, "eval") == {"R1": ([0], [0.5])}


def test_plot_metrics_writes_a_png(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        for epoch in range(3):
            for it in range(2):
                total = 2.0 - epoch - 0.1 * it
                logger.log("train", {"total": total, "lr": 0.01}, step=epoch * 2 + it, epoch=epoch)
            logger.log("eval", {"R1": 0.3 * epoch, "mAP": 0.2 * epoch}, step=epoch * 2, epoch=epoch)
    out = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots" / "curves.png")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]


def test_plot_metrics_without_records_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no train or eval records"):
        plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "x.png")
