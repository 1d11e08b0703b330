"""Progress display that suits where the output goes: a live bar on a terminal, lines in a log.

Why: a tqdm bar redraws itself with carriage returns many times a second. On a terminal that is
one line that updates; written to a file (``duatm demo > demo.log``, CI, ``nohup``) every redraw
stays, and a log becomes mostly bars. So a bar is drawn only when its stream is a terminal;
elsewhere nothing is printed while the work runs and, if asked, one summary line when it ends
(``query: 300 images in 2.1 s (143 img/s)``). The trainer prints its own line per epoch either
way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, Generic, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where tqdm draws) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


class Progress(Generic[T]):
    """A tqdm bar on a terminal; elsewhere silent, with an optional summary line at the end.

    Args:
        iterable: what to iterate over (``for item in progress``), or None to count with
            :meth:`update`.
        total: the number of items or units expected (for the bar and the summary).
        desc: what is being done, the summary line's first word (``query``, ``epoch 3/60``).
        unit: the unit counted by :meth:`update` (``img``, ``it``).
        enabled: False shows nothing at all (``--no-progress``).
        summary: off a terminal, print ``desc: N units in S s (R unit/s)`` when closed.
        stream: where to write (default: stderr, as tqdm does).
        leave: keep the finished bar on a terminal.
    """

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        enabled: bool = True,
        summary: bool = True,
        stream: IO[str] | None = None,
        leave: bool = False,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.iterable = iterable
        self.desc = desc
        self.unit = unit
        self.total = total
        self.count = 0
        self.summary = enabled and summary and not is_terminal(self.stream)
        self._start = time.perf_counter()
        self._closed = False
        self._bar: Any = None
        if enabled and is_terminal(self.stream):
            self._bar = tqdm(
                iterable, total=total, desc=desc, unit=unit, leave=leave, file=self.stream
            )

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("Progress was made without an iterable; call update() instead")
        if self._bar is not None:
            yield from self._bar
            return
        for item in self.iterable:
            self.count += 1
            yield item

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.count += n
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the bar (loss, speed); ignored off a terminal."""
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def close(self) -> None:
        """End the bar, or print the summary line; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.summary:
            seconds = time.perf_counter() - self._start
            done = self.count
            rate = done / seconds if seconds > 0 else float("inf")
            print(
                f"{self.desc}: {done} {self.unit} in {seconds:.1f} s ({rate:.0f} {self.unit}/s)",
                file=self.stream,
                flush=True,
            )

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
