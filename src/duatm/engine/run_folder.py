"""A run folder has one writer at a time, and a run never silently replaces another's files.

Why: two trainings into one ``--out`` used to mix their files (``config.yaml`` of one, the
checkpoints of the other, an interleaved ``metrics.jsonl``), and a new run over a finished one
replaced a better ``best.pt`` without a word. So:

* :class:`RunFolderLock` holds an OS file lock (``flock``) on ``.duatm.lock`` in the folder
  while a run writes there. The kernel releases it when the process exits or is killed, so a
  stale lock never blocks; a second writer stops at once, naming the folder and the holder's pid.
* :func:`check_run_folder` refuses a folder that holds files unless the run continues the
  folder's own ``last.pt``: starting afresh there needs ``overwrite`` (which deletes the run's
  own files, :data:`RUN_FILES`, and nothing else), and so does continuing from another
  checkpoint (``best.pt``, a copy) when that would replace a ``last.pt`` already there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from duatm.engine.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked there
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".duatm.lock"
#: What a run writes into its folder (``duatm evaluate`` adds ``<checkpoint>.results.json``
#: files beside the checkpoints): what ``--overwrite`` deletes.
RUN_FILES = (
    "config.yaml",
    LAST_CHECKPOINT,
    BEST_CHECKPOINT,
    "metrics.jsonl",
    "metrics.csv",
    "curves.png",
    "results.json",
    "tensorboard",
)
_RESULTS_SUFFIXES = (".results.json", ".flip.results.json")


class RunFolderError(RuntimeError):
    """A run folder that this run must not write: in use by another process, or holding a run
    that would be replaced without ``--resume`` / ``--overwrite``."""


class RunFolderLock:
    """Exclusive right to write ``run_dir`` while held (a context manager; re-entrant use of one
    object is not supported). Creates the folder."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._handle: object | None = None

    def acquire(self, *, record_pid: bool = True) -> None:
        """Take the lock, or raise :class:`RunFolderError` naming the process that holds it;
        the holder writes its pid into the lock file for that message."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return
        handle = open(self.run_dir / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderError(
                f"{self.run_dir} is being written by another duatm process (pid {holder}); "
                "wait for it to finish, or give this run another --out"
            ) from None
        except BaseException:
            handle.close()
            raise
        if record_pid:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Give the lock back (closing the file releases it); the lock file stays, empty of
        meaning: only the kernel's lock counts."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()  # type: ignore[attr-defined]

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def probe_lock(run_dir: str | Path) -> None:
    """Raise :class:`RunFolderError` now if another process writes ``run_dir`` (checked before
    the slow start-up of a run; the run takes the lock for real when it starts writing)."""
    if (Path(run_dir) / LOCK_FILE).is_file():
        lock = RunFolderLock(run_dir)
        lock.acquire(record_pid=False)
        lock.release()


def check_run_folder(
    run_dir: str | Path, *, resume_from: str | Path | None, overwrite: bool
) -> None:
    """Refuse to start a run that would replace what ``run_dir`` holds without being asked.

    Accepted: a missing or empty folder; continuing the folder's own ``last.pt``; and, with
    ``overwrite``, anything else. Continuing from another checkpoint into a folder that has a
    ``last.pt`` would replace it (e.g. ``--resume RUN/best.pt``): refused without ``overwrite``.
    """
    run_dir = Path(run_dir)
    if overwrite or not run_dir.is_dir():
        return
    entries = sorted(e for e in os.listdir(run_dir) if e != LOCK_FILE)
    if not entries:
        return
    last = run_dir / LAST_CHECKPOINT
    if resume_from is not None:
        if not last.is_file() or _same_file(last, Path(resume_from)):
            return
        raise RunFolderError(
            f"{run_dir} has its own {LAST_CHECKPOINT}; continuing from {resume_from} would "
            f"replace it: resume {last} instead, pass --overwrite to replace it, or give the "
            "continued run another --out"
        )
    listed = ", ".join(entries[:4]) + (
        f", ... ({len(entries) - 4} more)" if len(entries) > 4 else ""
    )
    offer = "--resume to continue it, " if last.is_file() else ""
    raise RunFolderError(
        f"{run_dir} is not empty ({listed}); pass {offer}--overwrite to delete its run files "
        "and start again, or give this run another --out"
    )


def clear_run_files(run_dir: str | Path) -> list[str]:
    """Delete what a run wrote in ``run_dir`` (:data:`RUN_FILES`, evaluation results beside the
    checkpoints, temporary files of interrupted atomic writes); keep everything else. Returns
    the names deleted."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    deleted = []
    for name in sorted(os.listdir(run_dir)):
        if not _written_by_a_run(name):
            continue
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        deleted.append(name)
    return deleted


def _written_by_a_run(name: str) -> bool:
    if name in RUN_FILES:
        return True
    stems = [Path(LAST_CHECKPOINT).stem, Path(BEST_CHECKPOINT).stem]
    if any(name == stem + suffix for stem in stems for suffix in _RESULTS_SUFFIXES):
        return True
    # atomic_open's temporary files: ".<name>.<random>.tmp"
    return name.endswith(".tmp") and any(name.startswith(f".{run}.") for run in RUN_FILES)


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        return a.samefile(b)
    return False


@contextlib.contextmanager
def locked_run_folder(
    run_dir: str | Path, *, resume_from: str | Path | None, overwrite: bool, check: bool = True
) -> Iterator[None]:
    """Hold the run folder's lock; first (``check``) refuse what :func:`check_run_folder`
    refuses and, with ``overwrite`` and a fresh start, clear the old run's files."""
    with RunFolderLock(run_dir):
        if check:
            check_run_folder(run_dir, resume_from=resume_from, overwrite=overwrite)
            if overwrite and resume_from is None:
                clear_run_files(run_dir)
        yield
