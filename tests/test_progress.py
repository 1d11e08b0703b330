"""Progress display: live bars on a terminal only; logs get one line per set, never redraws."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from duatm.cli import main
from duatm.data.synthped import write_synthped
from duatm.engine.progress import Progress, is_terminal


class Terminal(io.StringIO):
    """A text stream that says it is a terminal, as a console's stderr does."""

    def isatty(self) -> bool:
        if self.closed:
            raise ValueError("I/O operation on closed file.")  # as io streams do
        return True


def test_is_terminal_asks_the_stream() -> None:
    assert is_terminal(Terminal())
    assert not is_terminal(io.StringIO())
    closed = Terminal()
    closed.close()
    assert not is_terminal(closed)  # isatty() on a closed stream raises; that is not a terminal


def test_off_a_terminal_one_summary_line_and_no_redraws() -> None:
    log = io.StringIO()
    with Progress(total=10, desc="query", unit="img", stream=log) as bar:
        for _ in range(5):
            bar.update(2)
            bar.set_postfix(loss="0.5")
    bar.close()  # closing twice prints once
    text = log.getvalue()
    assert "\r" not in text
    assert re.fullmatch(r"query: 10 img in \d+\.\d s \(\d+ img/s\)\n", text), text


def test_on_a_terminal_a_live_bar_and_no_summary() -> None:
    console = Terminal()
    with Progress(total=4, desc="gallery", unit="img", stream=console) as bar:
        for _ in range(4):
            bar.update(1)
    text = console.getvalue()
    assert "\r" in text and "gallery:   0%" in text  # drawn, then redrawn in place
    assert not re.search(r"gallery: 4 img in", text)


@pytest.mark.parametrize("stream", [io.StringIO, Terminal])
def test_iterating_yields_every_item_in_order(stream: type[io.StringIO]) -> None:
    out = stream()
    items = list(Progress(range(7), total=7, desc="epoch 1/2", summary=False, stream=out))
    assert items == list(range(7))
    if not out.isatty():
        assert out.getvalue() == ""  # summary=False: the caller prints its own line


@pytest.mark.parametrize("stream", [io.StringIO, Terminal])
def test_disabled_prints_nothing(stream: type[io.StringIO]) -> None:
    out = stream()
    with Progress(range(3), total=3, desc="query", enabled=False, stream=out) as bar:
        assert list(bar) == [0, 1, 2]
        bar.update(3)
    assert out.getvalue() == ""


def test_update_needs_no_iterable_and_iterating_needs_one() -> None:
    with pytest.raises(TypeError, match="without an iterable"):
        list(Progress(total=3, stream=io.StringIO()))


def test_a_logged_training_run_has_epoch_lines_and_no_redraws(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`duatm train > log 2>&1` with progress on: what a log file receives."""
    root = write_synthped(tmp_path / "data", num_ids=8, num_cameras=2, height=32, width=16)
    tiny = [
        "model.backbone=densenet_tiny",
        "model.pretrained=null",
        "model.dim=8",
        "model.drop_last_pool=true",
        "data.height=32",
        "data.width=16",
        "data.num_identities=2",
        "data.num_instances=2",
        "data.num_workers=0",
        "schedule.epochs=2",
        "schedule.freeze_backbone_epochs=0",
        "schedule.iters_per_epoch=2",
        "eval.every=0",
        "eval.max_rank=5",
        "device=cpu",
        "data.val_identities=0",
    ]
    args = [
        "train",
        "--config",
        "synthped",
        "--data-root",
        str(root),
        "--out",
        str(tmp_path / "run"),
    ]
    assert main([*args, "--set", *tiny]) == 0
    captured = capsys.readouterr()
    log = captured.out + captured.err
    assert "\r" not in log
    assert len(re.findall(r"^epoch [12]/2: total \d", log, re.M)) == 2, log
    assert len(re.findall(r"^query: \d+ img in ", log, re.M)) == 1, log
    assert len(re.findall(r"^gallery: \d+ img in ", log, re.M)) == 1, log
